"""Every user error is one clear line that names the param or file, raised before expensive work,
with nothing half-written left behind (issue: one line for every user error)."""
import copy
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import ROOT
from woof import config
from woof.data import fetch, preprocess
from woof.errors import ParamError, UserError
from woof.io import atomic_path
from woof.models import check_image_size, create_model, data_config
from woof.train import init_distributed

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_change(section, **values):
    params = copy.deepcopy(PARAMS)
    params[section].update(values)
    return params


@pytest.mark.parametrize("section,values,message", [
    ("lora", {"rank": 0}, "lora.rank must be a positive integer, got 0"),
    ("lora", {"rnak": 4}, "unknown key lora.rnak"),
    ("full", {"lr": "fast"}, "full.lr must be a number, got 'fast'"),
    ("full", {"epochs": True}, "full.epochs must be an integer"),
    ("full", {"crop_scale": [0.9, 0.2]}, "full.crop_scale must be [min, max]"),
    ("full", {"warmup_epochs": 9}, "full.warmup_epochs must be <= full.epochs"),
    ("data", {"image_size": 17}, "data.image_size must be an integer >= 32, got 17"),
    ("data", {"image_size": 0}, "data.image_size must be an integer >= 32, got 0"),
    ("data", {"split": "test"}, "data.split must be one of clean_test, official"),
    ("train", {"device": "gpu"}, "train.device must be one of auto, cpu, cuda"),
    ("lora", {"targets": "blocks.(("}, "lora.targets must be a valid regular expression"),
    ("fetch", {"sha256": "abc"}, "fetch.sha256 must be null or 64 hex digits"),
])
def test_config_errors_name_the_param(section, values, message):
    with pytest.raises(config.ConfigError) as e:
        config.parse(with_change(section, **values))
    assert message in str(e.value)


def test_missing_key_and_yaml_float_quirk():
    params = copy.deepcopy(PARAMS)
    del params["cost"]["batch_size"]
    with pytest.raises(config.ConfigError, match="cost.batch_size is missing"):
        config.parse(params)
    # YAML 1.1 reads `1e-3` (no dot) as a string: it is still the number 0.001.
    assert config.parse(with_change("lora", lr="1e-3")).lora.lr == 1e-3


def test_committed_params_parse_and_are_the_only_defaults():
    cfg = config.load(ROOT / "params.yaml")
    assert cfg.lora.rank == PARAMS["lora"]["rank"] and cfg.cost.batch_size == PARAMS["cost"]["batch_size"]
    assert cfg.to_dict()["full"] == {k: tuple(v) if k == "crop_scale" else v for k, v in PARAMS["full"].items()}


def test_image_size_must_fit_the_patch_grid():
    check_image_size("vit_tiny_patch16_224", 160)
    with pytest.raises(ParamError, match="multiple of its patch size 16"):
        check_image_size("vit_tiny_patch16_224", 40)
    check_image_size("resnet18", 40)  # no patches: any size from config's minimum works


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ParamError, match="train.device=cuda, but torch sees no GPU"):
        init_distributed("cuda")
    assert init_distributed("auto")[2] == "cpu"


def test_no_network_names_the_url_and_the_offline_way(tmp_path):
    url = "http://127.0.0.1:9/imagewoof2-160.tgz"  # the discard port: connection refused at once
    with pytest.raises(UserError, match=r"could not download fetch.url http://127.0.0.1:9/.*make offline"):
        fetch(url, tmp_path / "raw")
    assert not (tmp_path / "raw").exists() and not list(tmp_path.glob(".*"))


def test_html_page_saved_as_archive(tmp_path):
    page = tmp_path / "imagewoof2-160.tgz"
    page.write_text("<!DOCTYPE html><html><body>Sign in</body></html>\n" * 20)
    with pytest.raises(UserError, match="not a gzip, bzip2, xz or tar archive: .* an HTML page"):
        fetch(page, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_truncated_and_foreign_weights(tmp_path, random_weights):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(random_weights.read_bytes()[:100_000])
    with pytest.raises(UserError, match=r"model.weights .*truncated.safetensors cannot be read: the file is truncated"):
        create_model("vit_tiny_patch16_224", weights=truncated)
    foreign = tmp_path / "resnet.safetensors"
    resnet = create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(foreign))
    with pytest.raises(UserError, match=r"holds another architecture than model.name=vit_tiny_patch16_224: 0 of its"):
        create_model("vit_tiny_patch16_224", weights=foreign)
    with pytest.raises(UserError, match="does not exist"):
        create_model("vit_tiny_patch16_224", weights=tmp_path / "nope.safetensors")


def test_checks_do_not_draw_from_the_global_rng(random_weights):
    """Checking a weights file or an image size must not change a run's random initialisation
    (LoRA's A matrices come from the global RNG right after the model is built)."""
    from woof.models import check_weights_file
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_weights_file(random_weights, "vit_tiny_patch16_224")
    check_image_size("vit_tiny_patch16_224", 160)
    assert torch.equal(torch.rand(3), expected)


def test_class_folders_that_are_not_imagenet_wnids_are_refused_at_preprocess(tmp_path, archive):
    raw = tmp_path / "raw"
    fetch(archive, raw)
    for split in ("train", "val"):
        (raw / split / "n02086240").rename(raw / split / "my_dog")
    cfg = data_config(create_model("vit_tiny_patch16_224", img_size=32, pretrained=False), 32)
    with pytest.raises(UserError, match=r"class folders \['my_dog'\] are not ImageNet wnids"):
        preprocess(raw, tmp_path / "prepared", cfg)
    assert not (tmp_path / "prepared").exists()


def test_a_killed_write_leaves_nothing_behind(tmp_path):
    stale = tmp_path / ".prepared.abc123"  # what a SIGKILLed preprocess leaves
    stale.mkdir()
    (stale / "train.safetensors").write_bytes(b"half")
    with atomic_path(tmp_path / "prepared", is_dir=True) as staging:
        (staging / "ok").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_stage_prints_one_line_and_exits_1(tmp_path):
    """The fetch stage on an HTML page: status 1, one `error:` line, no traceback; WOOF_DEBUG=1
    brings the traceback back."""
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    page = tmp_path / "page.tgz"
    page.write_text("<html>Access denied</html>\n")
    env = dict(os.environ, WOOF_FETCH_URL=str(page), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "stages.fetch"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "HTML page" in lines[0], run.stderr
    assert not (tmp_path / "data" / "raw").exists()
    env["WOOF_DEBUG"] = "1"
    debug = subprocess.run([sys.executable, "-m", "stages.fetch"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_tar_member_escaping_is_a_user_error(tmp_path):
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 0
        tar.addfile(info)
    with pytest.raises(UserError, match="escapes the output folder"):
        fetch(evil, tmp_path / "raw")
