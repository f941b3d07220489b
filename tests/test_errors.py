"""Every user error is one clear line that names the param or file, raised before expensive work,
with nothing half-written left behind; a legal value that is capped gets a one-line warning
(issues: one line for every user error; no traceback reaches a user)."""
import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import ROOT, make_archive
from woof import config
from woof.data import fetch, preprocess
from woof.errors import ParamError, UserError, run_stage
from woof.io import atomic_path
from woof.models import check_image_size, check_method, create_model, data_config
from woof.step import Method
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
    ("data", {"image_size": 17}, "data.image_size must be an integer in [32, 1024], got 17"),
    ("data", {"image_size": 0}, "data.image_size must be an integer in [32, 1024], got 0"),
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
    check_method("vit_tiny_patch16_224", Method.of(config.load(ROOT / "params.yaml").lora), "lora")
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


# ---------------------------------------------------------------------------------------------
# One table: every kind of wrong param and input file, through the real stage entry points

TINY = ["data.image_size=32", "full.epochs=1", "full.batch_size=8", "lora.epochs=1", "lora.batch_size=8",
        "train.compile=false", "train.precision=fp32", "train.device=cpu", "evaluate.batch_size=16",
        "attention.num_images=4", "cost.batch_size=2"]


def set_params(project, *overrides):
    """params.yaml with `section.key=value` overrides, as `dvc exp run -S` takes them (values in YAML)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for override in overrides:
        key, value = override.split("=", 1)
        section, name = key.split(".")
        params[section][name] = yaml.safe_load(value)
    replace(project, "params.yaml", yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def template(tmp_path_factory, archive, random_weights):
    """A small project: params.yaml (tiny settings, the generated archive and weights), data/raw,
    data/prepared from the real preprocess stage, and models/{full,lora} with random weights."""
    from stages import preprocess as preprocess_stage
    from woof.data import load_classes
    from woof.models import save_model
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    set_params(root, *TINY, f"fetch.url={archive}", f"model.weights={random_weights}")
    fetch(archive, root / "data" / "raw")
    with contextlib.chdir(root):
        preprocess_stage.main()
    wnids = [c["wnid"] for c in load_classes(root / "data/prepared/classes.json")]
    model = create_model("vit_tiny_patch16_224", img_size=32, pretrained=False)
    for method in ("full", "lora"):
        save_model(model, root / "models" / method, {"model": "vit_tiny_patch16_224", "num_classes": 10,
                                                     "image_size": 32, "method": method, "classes": wnids})
    return root


def replace(project, path, data):
    """Write a project file: the row's copy links the template's files, so unlink first."""
    path = project / path
    path.unlink(missing_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def cut(path):
    return lambda p: replace(p, path, (p / path).read_bytes()[:1000])


def write(path, data):
    return lambda p: replace(p, path, data)


def remove(path):
    return lambda p: (p / path).unlink()


def archive_of(make):
    """fetch.url pointing at an archive that make(path) writes."""
    def change(p):
        make(p / "bad.tgz")
        set_params(p, f"fetch.url={p / 'bad.tgz'}")
    return change


def tar_of(members):
    def make(path):
        with tarfile.open(path, "w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return make


def weights_of(make):
    """model.weights pointing at a file that make(path) writes."""
    def change(p):
        make(p / "weights.safetensors")
        set_params(p, f"model.weights={p / 'weights.safetensors'}")
    return change


def without(section):
    def change(p):
        params = yaml.safe_load((p / "params.yaml").read_text())
        del params[section]
        replace(p, "params.yaml", yaml.safe_dump(params))
    return change


def saved_config(path, **values):
    def change(p):
        config = json.loads((p / path).read_text())
        replace(p, path, json.dumps({**config, **values}))
    return change


def rename_class(p):
    for split in ("train", "val"):
        (p / "data/raw" / split / "n02086240").rename(p / "data/raw" / split / "my_dog")


no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

# (stage, what is wrong: a `-S` override or a change to the project, what the one line must say).
# "warning: ..." rows are legal values that are capped: the warning appears and the run goes on.
ROWS = [
    # params.yaml itself
    ("fetch", write("params.yaml", "fetch: {url: [\n"), "params.yaml is not valid YAML at line 2"),
    ("cost", write("params.yaml", ""), "params.yaml must be a mapping of sections"),
    ("train full", remove("params.yaml"), "params.yaml not found"),
    ("train lora", "lora.rnak=4", "unknown key lora.rnak"),
    ("evaluate", without("cost"), "section cost is missing"),
    # fetch and the archive it reads
    ("fetch", "fetch.url=''", "fetch.url must be a URL or a local path"),
    ("fetch", "fetch.url=nowhere/imagewoof2-160.tgz", "fetch.url nowhere/imagewoof2-160.tgz: no such file"),
    ("fetch", "fetch.sha256=abc", "fetch.sha256 must be null or 64 hex digits"),
    ("fetch", f"fetch.sha256='{'0' * 64}'", "set fetch.sha256 to the new value"),
    ("fetch", archive_of(lambda a: a.write_bytes(b"")), "bad.tgz is not a gzip, bzip2, xz or tar archive"),
    ("fetch", archive_of(lambda a: a.write_text("<html>Sign in</html>")), "bad.tgz is not a gzip"),
    ("fetch", archive_of(lambda a: a.write_bytes(make_archive(a.with_suffix(".ok"), (1, 1)).read_bytes()[:900])),
     "archive {project}/bad.tgz is truncated or corrupt"),
    ("fetch", archive_of(tar_of({"images/a.JPEG": b"x"})), "archive {project}/bad.tgz has no folder with train/ and val/"),
    ("fetch", archive_of(tar_of({"../evil.txt": b"x"})), "archive {project}/bad.tgz: unsafe member '../evil.txt'"),
    # model
    ("preprocess", "model.name=vit_does_not_exist", "unknown model.name 'vit_does_not_exist': not a timm model; the closest"),
    ("train full", "model.name=vit_tiny_patch16_244", "the closest are vit_tiny_patch16_224"),
    ("cost", "model.name=vit_tiny_patch16_224.bogus", "model.name='vit_tiny_patch16_224.bogus': Invalid pretrained tag"),
    ("evaluate", "model.name=7", "model.name must be a string, got 7"),
    ("train lora", "model.head_init=zeros", "model.head_init must be one of imagenet, random"),
    ("train full", "model.weights=nowhere.safetensors", "model.weights nowhere.safetensors does not exist"),
    ("train full", "model.weights=data", "model.weights data is a folder"),
    ("train lora", weights_of(lambda w: w.write_bytes(b"\x00" * 100)), "weights.safetensors cannot be read: the file is truncated"),
    ("evaluate", weights_of(lambda w: save_file({"conv1.weight": torch.zeros(1)}, str(w))),
     "holds another architecture than model.name=vit_tiny_patch16_224: 0 of its 1 tensors"),
    ("train full", weights_of(lambda w: save_file({k: torch.zeros(1) for k in create_model(
        "vit_tiny_patch16_224", pretrained=False).state_dict()}, str(w))), "holds another architecture"),
    # data
    ("preprocess", "data.image_size=40", "data.image_size=40 does not fit vit_tiny_patch16_224: use a multiple of its patch size 16"),
    ("cost", "data.image_size=4096", "data.image_size must be an integer in [32, 1024], got 4096"),
    ("preprocess", "data.split=random", "data.split must be one of clean_test, official"),
    ("preprocess", "data.train_fraction=0", "data.train_fraction must be in (0, 1]"),
    ("preprocess", "data.seed=-1", "data.seed must be an integer in [0, 2**64)"),
    ("preprocess", "data.train_fraction=0.05", "warning: data.train_fraction=0.05 keeps no image of the smallest class"),
    # train
    ("train full", "train.device=gpu", "train.device must be one of auto, cpu, cuda"),
    pytest.param("train lora", "train.device=cuda", "train.device=cuda, but torch sees no GPU", marks=no_gpu),
    ("evaluate", "train.precision=fp16", "train.precision must be one of fp32, bf16, auto"),
    ("train full", "train.compile=on_gpu", "train.compile must be true or false, got 'on_gpu'"),
    ("train full", "train.launcher=mpirun", "train.launcher must be"),
    # full
    ("train full", "full.trainable=[nonexistent]", "full.trainable=['nonexistent']: ['nonexistent'] match no parameter"),
    ("train full", "full.trainable=head", "full.trainable must be a list"),
    ("train full", "full.freeze_blocks=13", "full.freeze_blocks=13 but the model has 12 blocks"),
    ("train full", "full.batch_size=41", "full.batch_size=41 is more than the 40 training images"),
    ("train full", "full.lr=.nan", "full.lr must be a finite number"),
    ("train full", "full.epochs=0", "full.epochs must be a positive integer"),
    ("train full", "full.crop_scale=[0.5]", "full.crop_scale must be a list of 2"),
    ("train full", "full.hflip=2", "full.hflip must be a probability in [0, 1]"),
    ("train full", "full.warmup_epochs=2", "full.warmup_epochs must be <= full.epochs"),
    ("train full", "full.pretrained=0", "full.pretrained must be true or false, got 0"),
    # lora
    ("train lora", "lora.trainable=[nonexistent]", "lora.trainable=['nonexistent']: ['nonexistent'] match no parameter"),
    ("train lora", r"lora.targets=blocks\.\d+\.nothing", r"lora.targets='blocks\\.\\d+\\.nothing' matches no module"),
    ("cost", r"lora.targets=blocks\.\d+\.attn", "of type Attention, which LoRA does not support"),
    ("train lora", "lora.targets=blocks.((", "lora.targets must be a valid regular expression"),
    ("train lora", "lora.rank=193", "lora.rank=193 is more than blocks.0.attn.qkv's width 192"),
    ("cost", "lora.rank=0", "lora.rank must be a positive integer, got 0"),
    ("train lora", "lora.alpha=.inf", "lora.alpha must be a finite number"),
    ("train lora", "lora.dropout=1", "lora.dropout must be in [0, 1)"),
    ("train lora", "lora.rslora=1", "lora.rslora must be true or false"),
    ("train lora", "lora.batch_size=64", "lora.batch_size=64 is more than the 40 training images"),
    # evaluate, attention, cost
    ("evaluate", "evaluate.batch_size=0", "evaluate.batch_size must be a positive integer"),
    ("evaluate", "evaluate.batch_size=1000", "warning: evaluate.batch_size=1000 is more than the images of the largest"),
    ("visualize_attention", "attention.num_images=0", "attention.num_images must be a positive integer"),
    ("visualize_attention", "attention.seed=-3", "attention.seed must be an integer in [0, 2**64)"),
    ("cost", "cost.batch_size=0", "cost.batch_size must be a positive integer"),
    ("cost", "cost.freeze_blocks=0", "cost.freeze_blocks must be null or a positive integer"),
    ("cost", "cost.freeze_blocks=20", "warning: cost.freeze_blocks=20 is more than vit_tiny_patch16_224's blocks (12)"),
    ("train full", "full.trainable=[head] full.batch_size=1000",
     "warning: full.batch_size=1000 is more than the training images in data/prepared/train.safetensors (40)"),
    # data/raw, data/prepared
    ("preprocess", lambda p: shutil.rmtree(p / "data/raw"), "data/raw/train not found: run the fetch stage first"),
    ("preprocess", rename_class, "data/raw/train (from archive imagewoof2-test.tgz): the class folders ['my_dog']"),
    ("train full", remove("data/prepared/train.safetensors"), "data/prepared/train.safetensors not found"),
    ("train lora", cut("data/prepared/train.safetensors"), "data/prepared/train.safetensors cannot be read"),
    ("evaluate", write("data/prepared/val.safetensors", "{}"), "data/prepared/val.safetensors cannot be read"),
    ("evaluate", lambda p: save_file({"pixels": torch.zeros(1)}, str(p / "data/prepared/test.safetensors")),
     "data/prepared/test.safetensors cannot be read (KeyError"),
    ("train full", remove("data/prepared/classes.json"), "data/prepared/classes.json not found"),
    ("evaluate", write("data/prepared/classes.json", "[{"), "data/prepared/classes.json cannot be read (JSONDecodeError"),
    ("visualize_attention", write("data/prepared/classes.json", '["n02086240"]'), "data/prepared/classes.json cannot be read"),
    ("evaluate", write("data/prepared/files.json", '{"val": [], "test": []}'), "lists 0 val files for the 20 images"),
    ("train full", "data.image_size=48", "data/prepared/train.safetensors holds 35 px images, but data.image_size=48"),
    # data/logits.safetensors (the evaluate stage's, which calibrate reads)
    ("calibrate", lambda p: None, "data/logits.safetensors not found: run `dvc repro evaluate`"),
    ("calibrate", lambda p: save_file({"val/full": torch.zeros(3, 10), "test/full": torch.zeros(30, 10)},
                                      str(p / "data/logits.safetensors")), "holds 3 val logits for the 20 images"),
    ("calibrate", lambda p: save_file({"val/full": torch.zeros(20, 10)}, str(p / "data/logits.safetensors")),
     "holds ['val/full'], not each model's val and test logits"),
    # models/{full,lora}
    ("evaluate", remove("models/full/model.safetensors"), "models/full/model.safetensors not found"),
    ("evaluate", cut("models/lora/model.safetensors"), "models/lora/model.safetensors cannot be read"),
    ("evaluate", write("models/full/config.json", "{"), "models/full/config.json cannot be read"),
    ("evaluate", saved_config("models/lora/config.json", image_size=64), "models/lora was trained with another data.image_size"),
    ("visualize_attention", saved_config("models/full/config.json", num_classes=5), "models/full/model.safetensors cannot be read"),
]


def real_files(project):
    """Files a stage (or a row's change) wrote: the copy's untouched files are links."""
    return {p for p in project.rglob("*") if p.is_file() and not p.is_symlink()}


class Stepped(Exception):
    """What the spy raises in place of the first training step: the run got that far."""


@pytest.mark.parametrize("stage,change,expect", ROWS)
def test_every_mistake_is_one_line_before_any_work(stage, change, expect, template, tmp_path, monkeypatch, capsys):
    """The real stage entry point (woof.errors.run_stage) on a copy of the small project with one
    thing wrong: status 1, one `error:` line that names the param or file, no traceback, no
    training step and nothing written. A capped value: its warning, and the run goes on."""
    import importlib
    project = tmp_path / "project"
    shutil.copytree(template, project, copy_function=os.symlink)
    if callable(change):
        change(project)
    else:  # -S overrides
        set_params(project, *change.split(" "))
    monkeypatch.chdir(project)
    steps = []

    def spy(*args, **kwargs):
        steps.append(1)
        raise Stepped

    monkeypatch.setattr("woof.step.train_step", spy)
    name, *args = stage.split()
    main = importlib.import_module(f"stages.{name}").main
    before = real_files(project)
    capsys.readouterr()
    expect = expect.format(project=project)
    if expect.startswith("warning: "):
        try:
            run_stage(main, *args)
        except Stepped:
            pass
        err = capsys.readouterr().err
        assert expect in err and "error:" not in err and "Traceback" not in err, err
        assert steps or real_files(project) > before  # it went on: to a training step, or to its outputs
        return
    with pytest.raises(SystemExit) as exit_:
        run_stage(main, *args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_.value.code == 1 and len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err and not steps and real_files(project) == before
