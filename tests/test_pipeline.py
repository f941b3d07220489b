"""End to end: the real `dvc repro` of every stage in a temporary copy of the repository."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import woof.models
from woof.data import load_split
from woof.evaluate import ranked
from woof.io import read_live
from woof.models import load_models

from conftest import ROOT, SHARED, needs_shared

COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", ".tmp", "data", "models", "metrics", "plots",
                                     "__pycache__", ".pytest_cache", "cache", "tmp", "report.md", "report.pdf",
                                     "checkpoints")


def sh(cmd, cwd, **env_vars):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env_vars)
    result = subprocess.run(cmd, cwd=cwd, env=env, shell=True, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def make_repo(tmp_path, **overrides):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=COPY_IGNORE)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides.items():
        section, name = key.split("__")
        params[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The programme's record, as a fresh project has it: no run yet.
    (repo / "metrics" / "experiments").mkdir(parents=True)
    (repo / "metrics" / "experiments" / ".gitkeep").touch()
    from woof.record import COLUMNS
    (repo / "metrics" / "experiments.csv").write_text(",".join(COLUMNS) + "\n")
    # The committed bench measurement of each method per backbone, which compare reads (woof.bench --json).
    shutil.copy(ROOT / "metrics" / "bench_methods.json", repo / "metrics" / "bench_methods.json")
    sh("git init -q && git add -A && git -c user.name=t -c user.email=t@t commit -qm init", repo)
    return repo


def declared_outputs(repo):
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                yield next(iter(entry)) if isinstance(entry, dict) else entry


def tiny(**kw):
    return {"data__image_size": 32, "full__epochs": 1, "full__batch_size": 8, "lora__epochs": 1,
            "lora__batch_size": 8, "evaluate__batch_size": 64, "attention__num_images": 4, **kw}


def ran(log):
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def test_dvc_repro_end_to_end(archive, random_weights, tmp_path):
    repo = make_repo(tmp_path, **tiny())
    # Local mirrors are locations (environment), not params: the lock never records their paths.
    mirror = {"WOOF_FETCH_URL": str(archive), "WOOF_WEIGHTS": str(random_weights)}
    log = sh("dvc repro", repo, **mirror)
    lock = (repo / "dvc.lock").read_text()
    assert str(archive) not in lock and str(random_weights) not in lock
    assert ran(log) == set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    missing = [p for p in declared_outputs(repo) if not (repo / p).exists()]
    assert not missing, f"declared outputs not written: {missing}"
    data = json.loads((repo / "metrics/data.json").read_text())
    assert (data["split"], data["train_images"], data["val_images"], data["test_images"]) == ("clean_test", 40, 20, 30)
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(evaluation) == {"zero_shot", "full", "lora"}
    for by_split in evaluation.values():
        assert set(by_split) == {"val", "test"} and by_split["test"]["n"] == 30
        lo, hi = by_split["test"]["top1_ci"]
        assert lo <= by_split["test"]["top1"] <= hi
    # calibrate reads evaluate's logits instead of computing them again: the same top-1.
    logits, labels = load_file(str(repo / "data/logits.safetensors")), load_split(repo / "data/prepared/test.safetensors")[1]
    assert set(logits) == {f"{s}/{m}" for s in ("val", "test") for m in ("zero_shot", "full", "lora")}
    for m in ("zero_shot", "full", "lora"):
        top1 = (ranked(logits[f"test/{m}"])[:, 0] == labels).float().mean().item()
        assert top1 == pytest.approx(evaluation[m]["test"]["top1"])
    assert set(json.loads((repo / "metrics/calibration.json").read_text())) == {"zero_shot", "full", "lora"}
    compare = json.loads((repo / "metrics/compare.json").read_text())
    paired = compare["paired"]
    assert set(paired) == {"val", "test"} and paired["test"]["lora_vs_full"]["n"] == 30
    assert compare["programme"] is None  # an empty record: the pipeline alone
    assert compare["provenance"]["pipeline"]["archive_sha256"] == data["archive_sha256"]
    report = (repo / "report.md").read_text()
    assert "clean test" in report and "record (`metrics/experiments.csv`) is absent or has no finished run" in report
    assert (repo / "report.pdf").read_bytes()[:4] == b"%PDF"
    adapter, model = (repo / "models/lora/adapter.safetensors"), (repo / "models/lora/model.safetensors")
    assert adapter.stat().st_size < model.stat().st_size / 10
    assert not (repo / "checkpoints").exists()  # removed once both runs completed, the empty folder too
    # dvclive logged every epoch of both trainings, as declared in dvc.yaml (`dvc exp show` reads it).
    for method in ("full", "lora"):
        live = json.loads((repo / f"dvclive/train_{method}/metrics.json").read_text())
        curve = read_live(repo / f"dvclive/train_{method}")
        assert list(curve.epoch) == [1] and live["step"] == len(curve) - 1 and 0 <= live["val_acc"] <= 1
        assert not (repo / f"plots/train_{method}.csv").exists()  # dvclive is the curves' one writer
    models = load_models(repo / "models")
    for model in models.values():
        assert not model.training and model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)

    from woof.data import sha256_file
    assert data["archive_sha256"] == sha256_file(archive)  # the bytes the numbers come from
    copy = tmp_path / "elsewhere.tgz"
    copy.write_bytes(archive.read_bytes())
    # The same bytes under another path: nothing changed, nothing runs.
    assert ran(sh("dvc repro", repo, **dict(mirror, WOOF_FETCH_URL=str(copy)))) == set()
    sh("git add -A && git -c user.name=t -c user.email=t@t commit -qm run", repo)
    log = sh("dvc exp run -S lora.rank=2", repo, **mirror)
    assert "train_lora" in ran(log) and "train_full" not in ran(log)
    assert {"fetch", "preprocess"}.isdisjoint(ran(log))
    assert json.loads((repo / "metrics/train_lora.json").read_text())["trainable_params"] < \
        json.loads((repo / "metrics/train_full.json").read_text())["trainable_params"]


@needs_shared
def test_dvc_repro_on_real_mini_imagewoof_vit_then_cnn(tmp_path):
    # Eager: the compiled default path runs end to end in test_dvc_repro_end_to_end.
    repo = make_repo(tmp_path, **tiny(fetch__url=str(SHARED / "data/imagewoof2-mini.tgz"),
                                      model__weights=str(SHARED / "weights/vit_tiny_patch16_224.safetensors"),
                                      data__image_size=112, train__compile=False))
    sh("dvc repro", repo)
    data = json.loads((repo / "metrics/data.json").read_text())
    # The mini set has 4 + 3 ILSVRC2012_val_* files per class in train and val: 70 go to test.
    assert (data["split"], data["train_images"], data["val_images"], data["test_images"]) == ("clean_test", 160, 70, 70)
    results = json.loads((repo / "metrics/evaluate.json").read_text())
    assert results["zero_shot"]["test"]["n"] == 70 and results["zero_shot"]["val"]["n"] == 70
    # Pretrained ImageNet features know these breeds: far above the 10% of chance even at 112 px.
    for method in ("zero_shot", "full", "lora"):
        for split in ("val", "test"):
            assert results[method][split]["top1"] > 0.5, (method, split, results[method])
    assert (repo / "report.md").read_text().count("LoRA") > 1
    # The CNN backbone through the same pipeline: MobileOne-S0's fused weights, LoRA on its 1x1
    # convolutions, no attention maps (one line, no failure); fetch and its archive are reused.
    from woof.record import CNN_POINTWISE
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["name"], params["model"]["weights"] = "mobileone_s0", str(SHARED / "weights/mobileone_s0.safetensors")
    params["data"]["image_size"], params["lora"]["targets"] = 96, CNN_POINTWISE
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = sh("dvc repro", repo)
    assert "fetch" not in ran(log) and {"preprocess", "train_full", "train_lora", "evaluate"} <= ran(log)
    assert "visualize_attention skipped: mobileone_s0" in log
    results = json.loads((repo / "metrics/evaluate.json").read_text())
    for method in ("zero_shot", "full", "lora"):
        assert results[method]["test"]["top1"] > 0.5, (method, results[method])
    cost = json.loads((repo / "metrics/cost.json").read_text())
    assert cost["blocks"] == 4 and 0 < cost["lora"]["trainable_params"] < cost["full"]["trainable_params"]


def test_load_models_names_the_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # another working directory: models/ is still the project's
    with pytest.raises(FileNotFoundError, match=r"nowhere/full/model.safetensors not found: run `dvc repro`"):
        load_models(tmp_path / "nowhere")
    assert woof.models.PROJECT == ROOT
    import validate_project1
    assert validate_project1.load_my_models.__module__ == "validate_project1"
