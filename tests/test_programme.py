"""The experiment programme's runner on generated data: every run recorded as it finishes, nothing
re-run, failures kept with their error, the pipeline's runs adopted, and the summary (the compare
stage's) built from the record alone. The grid and the record itself: tests/test_record.py."""
import json

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from test_record import RUNS
from woof import compare, corrupt, figures, programme, record
from woof.data import fetch, preprocess
from woof.io import write_json
from woof.models import create_model, data_config

@pytest.fixture
def project(archive, random_weights, tmp_path, monkeypatch):
    """A working directory as `dvc repro preprocess` leaves it, with tiny params."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["image_size"] = 32
    for method in ("full", "lora"):
        params[method].update(epochs=1, batch_size=8)
    params["train"].update(precision="fp32", compile=False)  # the pipeline as the programme's runs train
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    raw = fetch(archive, tmp_path / "data" / "raw")
    cfg = data_config(create_model("vit_tiny_patch16_224", img_size=32, pretrained=False), 32)
    write_json(tmp_path / "metrics" / "data.json", preprocess(raw, tmp_path / "data" / "prepared", cfg))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WOOF_WEIGHTS", str(random_weights))
    use_programme(monkeypatch, RUNS)
    return tmp_path


def row_corrupted(rec, name):
    return rec.set_index("name").loc[name, "corrupted_top1"]


def use_programme(monkeypatch, runs):
    """Make `runs` the programme: for the record's grid functions (todo, select, write_row's order)
    and for the runner's own use (adopt, list)."""
    monkeypatch.setattr(record, "programme", lambda: list(runs))
    monkeypatch.setattr(programme, "programme", lambda: list(runs))


def test_programme_records_every_run_once_then_summarizes(project, capsys):
    programme.run_programme(threads=1)
    rec = record.read_record()
    # Once both grids were complete, their val-best configurations ran at seeds 1 and 2.
    best = {m: record.select(rec, record.FAMILIES[m])["name"] for m in ("full", "lora")}
    seeds = [f"{best[m]}-seed{s}" for m in ("full", "lora") for s in record.SEEDS]
    assert list(rec.name) == [r.name for r in RUNS] + seeds  # programme order, seeds last
    ok = rec[rec.status == "ok"]
    assert len(ok) == 10 and ok.test_n.eq(30).all() and ok.val_n.eq(20).all()
    assert (ok.test_top1_lo <= ok.test_top1).all() and (ok.test_top1 <= ok.test_top1_hi).all()
    assert dict(zip(ok.name[:6], ok.train_images[:6])) == {
        "zero-shot": 0, "full-lr5e-05": 40, "full-lr0.001": 40, "lora-r8": 40, "lora-r2": 40,
        "fraction0.5-full": 20}  # the stratified half of the 40 training images
    lora = rec.set_index("name").loc[["lora-r8", "lora-r2"], "trainable_params"]
    assert lora["lora-r2"] < lora["lora-r8"]
    # Each run names the bytes it learnt from: the archive (metrics/data.json) and the weights.
    data = json.loads((project / "metrics/data.json").read_text())
    assert set(ok.archive_sha256) == {data["archive_sha256"]} and ok.weights_sha256.str.fullmatch("[0-9a-f]{64}").all()
    # A failed run stays recorded, with the one line that says why.
    broken = rec.set_index("name").loc["broken"]
    assert broken.status == "failed" and "full.freeze_blocks=13 but the model has 12 blocks" in broken.error
    details = json.loads((project / "metrics/experiments/full-lr0.001.json").read_text())
    assert len(details["correct"]["test"]) == 30 and len(details["history"]) == 1
    # Every run is measured on the same corrupted copies of the test images (ImageWoof-C) too.
    copies = 30 * len(corrupt.LEVELS) * len(corrupt.SEVERITIES)
    assert ok.corrupted_n.eq(copies).all() and ok.corrupted_sha.nunique() == 1
    assert len(details["correct"]["corrupted"]) == copies
    assert row_corrupted(rec, "full-lr0.001") == pytest.approx(details["correct"]["corrupted"].count("1") / copies)
    # The row's accuracy is its per-image file's (one source).
    row = rec.set_index("name").loc["full-lr0.001"]
    assert row.test_top1 == pytest.approx(details["correct"]["test"].count("1") / 30)
    assert not list((project / "metrics/experiments").glob(".*"))  # no temporary result left

    # Nothing recorded runs again; --rerun runs exactly the named run.
    finished = dict(zip(rec.name, rec.finished))
    assert record.todo(rec) == []
    capsys.readouterr()
    programme.run_programme(rerun=("full-lr0.001",), threads=1)
    again = record.read_record()
    changed = [n for n, f in zip(again.name, again.finished) if f != finished[n]]
    assert changed == ["full-lr0.001"] and "=== full-lr0.001" in capsys.readouterr().out

    # The summary (the compare stage's) reads the record alone.
    df, correct = record.load()
    summary = compare.summarize(df, correct, yaml.safe_load((project / "params.yaml").read_text()), blocks=12)
    figures.programme_figures(df, summary, "plots/programme")
    (project / "metrics/programme.md").write_text(compare.runs_table(df, summary))
    rec = record.read_record()
    full = rec[rec.block == "full-lr"].sort_values("val_top1", ascending=False).iloc[0]
    assert summary["best"]["full"]["name"] == full["name"]
    assert summary["best"]["full"]["test_top1"] == pytest.approx(full.test_top1)
    assert summary["best"]["lora"]["seeds"]["n"] == 3  # seed 0 and the two reruns
    t = summary["lora_vs_full"]
    assert t["n"] == 30 and 0 <= t["p_value"] <= 1
    assert summary["lora_saturation_rank"] in (2, 8)
    for name in ("frontier", "rank_lr", "fractions", "cost"):  # freeze: its only run failed
        assert (project / "plots/programme" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert not (project / "plots/programme/freeze.png").exists()
    table = (project / "metrics/programme.md").read_text()
    assert f"**{full['name']}** (best full fine-tuning)" in table and "failed: ParamError" in table
    assert "mean ± std over seeds" in table
    assert summary["runs"] == {"ok": 10, "failed": 1, "missing": 0}


def test_adopt_records_the_pipeline_runs(project, monkeypatch):
    """The pipeline's train_full/train_lora are the programme's default-config runs: adopted with
    their numbers and per-image predictions instead of being trained again."""
    from woof.data import load_eval_splits
    splits = load_eval_splits(project / "data" / "prepared")
    classes = json.loads((project / "data/prepared/classes.json").read_text())
    names = [c["name"] for c in classes]
    ev = {}
    for method, top1 in (("full", 0.9), ("lora", 0.8)):
        ev[method] = {}
        for split, (_, labels, files) in splits.items():
            n = len(files)
            right = [i < top1 * n for i in range(n)]
            pd.DataFrame({"file": files, "actual": [names[y] for y in labels.tolist()],
                          "predicted": [names[y] if ok else names[(y + 1) % 10] for y, ok in zip(labels.tolist(), right)]}
                         ).to_csv(_mkdir(project / "plots/predictions") / f"{split}_{method}.csv", index=False)
            ev[method][split] = {"top1": sum(right) / n, "top1_ci": [0.1, 0.99], "top5": 1.0, "n": n}
        write_json(project / f"metrics/train_{method}.json",
                   {"train_minutes": 3.0, "train_images_per_s": 50.0, "trainable_params": 10, "total_params": 100,
                    "peak_memory_mb": 999.0, "precision": "fp32", "hardware": "test CPU", "epochs": 1})
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):  # dvclive's curves
            pd.DataFrame({"step": [0], key: [top1]}).to_csv(
                _mkdir(project / f"dvclive/train_{method}/plots/metrics") / f"{key}.tsv", sep="\t", index=False)
    write_json(project / "metrics/evaluate.json", ev)
    programme.adopt()
    rec = record.read_record().set_index("name")
    assert list(rec.index) == ["full-lr5e-05", "lora-r8"]
    assert rec.loc["full-lr5e-05", "test_top1"] == pytest.approx(27 / 30)
    assert rec.loc["lora-r8", "train_images"] == 40 and rec.loc["lora-r8", "peak_memory_mb"] == 999.0
    data = json.loads((project / "metrics/data.json").read_text())
    assert rec.loc["lora-r8", "archive_sha256"] == data["archive_sha256"]
    # Under the throughput defaults the same trainings are the precision block's runs: the
    # programme's own runs stay pinned to fp32 eager, so full-lr5e-05 is not the pipeline's any more.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(precision="auto", compile=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert programme.programme_base()["train"] == {**params["train"], "precision": "fp32", "compile": False}
    fast = [record.Run("fast-full", "precision", "full", record.FAST),
            record.Run("fast-lora", "precision", "lora", record.FAST)]
    use_programme(monkeypatch, RUNS + fast)
    programme.adopt()
    rec = record.read_record().set_index("name")
    assert list(rec.index) == ["full-lr5e-05", "lora-r8", "fast-full", "fast-lora"]
    details = json.loads((project / "metrics/experiments/lora-r8.json").read_text())
    assert details["correct"]["test"] == "1" * 24 + "0" * 6
    assert "zero-shot" in {r.name for r in record.todo(record.read_record())}


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_bad_param_in_any_run_stops_before_the_first(project, monkeypatch):
    use_programme(monkeypatch, RUNS[:2] + [record.Run("bad", "freeze", "full", {"full.lr": -1.0})])
    with pytest.raises(SystemExit, match="error: params.yaml: full.lr must be > 0, got -1.0"):
        programme.run_programme(threads=1)
    assert not (project / "metrics" / "experiments.csv").exists()


def test_missing_data_stops_before_any_run(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="data/prepared/files.json not found: run `dvc repro preprocess`"):
        programme.run_programme()
    assert not (tmp_path / "metrics" / "experiments.csv").exists()  # nothing recorded as failed


def test_git_rev_is_the_code_not_the_record_commits(tmp_path, monkeypatch):
    """A run records the commit of the code it ran: the record's own commits on top (the runner's
    --commit) do not change it, an uncommitted edit of the code marks it dirty."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(tmp_path)
    git("init", "-q")
    (tmp_path / "woof").mkdir()
    (tmp_path / "woof" / "x.py").write_text("a = 1\n")
    git("add", "-A")
    git("commit", "-qm", "code")
    code = git("rev-parse", "--short", "HEAD")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "experiments.csv").write_text("name\n")
    git("add", "-A")
    git("commit", "-qm", "record")
    assert programme._git_rev() == code != git("rev-parse", "--short", "HEAD")
    (tmp_path / "woof" / "x.py").write_text("a = 2\n")
    assert programme._git_rev() == code + "+dirty"
