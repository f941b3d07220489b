"""The experiment programme on generated data: every run recorded as it finishes, nothing re-run,
failures kept with their error, selection on val, and the summary built from the record alone."""
import json

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from woof import paper, programme, results
from woof.data import fetch, preprocess
from woof.io import write_json
from woof.models import create_model, data_config

RUNS = [programme.Run("zero-shot", "baseline", "zero_shot"),
        programme.Run("full-lr5e-05", "full-lr", "full", {"full.lr": 5e-5}),
        programme.Run("full-lr0.001", "full-lr", "full", {"full.lr": 1e-3}),
        programme.Run("lora-r8", "lora-rank", "lora", {"lora.rank": 8, "lora.alpha": 16, "lora.lr": 3e-4}),
        programme.Run("lora-r2", "lora-rank", "lora", {"lora.rank": 2, "lora.alpha": 4, "lora.lr": 3e-4}),
        programme.Run("fraction0.5-full", "fraction", "full", {"data.train_fraction": 0.5}),
        programme.Run("broken", "freeze", "full", {"full.freeze_blocks": 13})]  # valid params, fails in its run


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
    monkeypatch.setattr(programme, "programme", lambda: list(RUNS))
    return tmp_path


def test_programme_records_every_run_once_then_summarizes(project, capsys):
    programme.run_programme(threads=1)
    record = programme.read_record()
    # Once both grids were complete, their val-best configurations ran at seeds 1 and 2.
    best = {m: programme.select(record, blocks)["name"] for m, blocks in programme.GRIDS.items()}
    seeds = [f"{best[m]}-seed{s}" for m in ("full", "lora") for s in programme.SEEDS]
    assert list(record.name) == [r.name for r in RUNS] + seeds  # programme order, seeds last
    ok = record[record.status == "ok"]
    assert len(ok) == 10 and ok.test_n.eq(30).all() and ok.val_n.eq(20).all()
    assert (ok.test_top1_lo <= ok.test_top1).all() and (ok.test_top1 <= ok.test_top1_hi).all()
    assert dict(zip(ok.name[:6], ok.train_images[:6])) == {
        "zero-shot": 0, "full-lr5e-05": 40, "full-lr0.001": 40, "lora-r8": 40, "lora-r2": 40,
        "fraction0.5-full": 20}  # the stratified half of the 40 training images
    lora = record.set_index("name").loc[["lora-r8", "lora-r2"], "trainable_params"]
    assert lora["lora-r2"] < lora["lora-r8"]
    # A failed run stays recorded, with the one line that says why.
    broken = record.set_index("name").loc["broken"]
    assert broken.status == "failed" and "full.freeze_blocks=13 but the model has 12 blocks" in broken.error
    details = json.loads((project / "metrics/experiments/full-lr0.001.json").read_text())
    assert len(details["correct"]["test"]) == 30 and len(details["history"]) == 1
    assert not list((project / "metrics/experiments").glob(".*"))  # no temporary result left

    # Nothing recorded runs again; --rerun runs exactly the named run.
    finished = dict(zip(record.name, record.finished))
    assert programme.todo(record) == []
    capsys.readouterr()
    programme.run_programme(rerun=("full-lr0.001",), threads=1)
    again = programme.read_record()
    changed = [n for n, f in zip(again.name, again.finished) if f != finished[n]]
    assert changed == ["full-lr0.001"] and "=== full-lr0.001" in capsys.readouterr().out

    # The summary reads the record alone.
    summary = results.main("metrics/experiments.csv", "metrics/experiments", "plots/programme",
                           "metrics/programme.json", "metrics/programme.md")
    record = programme.read_record()
    full = record[record.block == "full-lr"].sort_values("val_top1", ascending=False).iloc[0]
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
    assert json.loads((project / "metrics/programme.json").read_text())["runs"] == {"ok": 10, "failed": 1, "missing": 0}


def test_selection_is_on_val_and_reports_test(project):
    rows = [dict(name="full-lr5e-05", block="full-lr", method="full", status="ok", val_top1=0.90, test_top1=0.95,
                 trainable_params=100),
            dict(name="full-lr0.001", block="full-lr", method="full", status="ok", val_top1=0.92, test_top1=0.80,
                 trainable_params=100)]
    for row in rows:
        programme.write_row({**row, "overrides": "{}"})
    record = programme.read_record()
    assert programme.select(record, ("full-lr",))["name"] == "full-lr0.001"  # val chooses, not test
    assert programme.select(record, ("lora-rank",)) is None  # its runs are not recorded yet


def test_summary_without_a_record(tmp_path):
    assert results.main(tmp_path / "none.csv", tmp_path / "d", tmp_path / "plots", tmp_path / "p.json",
                        tmp_path / "p.md") is None
    assert "make programme" in (tmp_path / "p.md").read_text() and (tmp_path / "plots").is_dir()
    assert json.loads((tmp_path / "p.json").read_text())["runs"]["ok"] == 0


def test_still_to_run_counts_the_seeds_of_unfinished_grids(monkeypatch):
    monkeypatch.setattr(programme, "programme", lambda: list(RUNS))
    extra = sum(s != 0 for s in programme.SEEDS)  # seeds per method

    def record(names):
        return pd.DataFrame([dict(name=n, status="ok", val_top1=0.9, test_top1=0.9, trainable_params=1)
                             for n in names], columns=["name", "status", "val_top1", "test_top1", "trainable_params"])

    assert programme.still_to_run(record([])) == len(RUNS) + 2 * extra
    # The full grid complete: its seeds are known runs, LoRA's still only a number.
    partial = record(["zero-shot", "full-lr5e-05", "full-lr0.001", "lora-r8"])
    assert len(programme.todo(partial)) == 3 + extra
    assert programme.still_to_run(partial) == 3 + 2 * extra
    assert programme.still_to_run(record([r.name for r in RUNS])) == 2 * extra


def test_every_programme_run_overrides_real_params():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for run in programme.programme():
        run.params(params)  # raises on a key params.yaml does not have
    names = [r.name for r in programme.programme()]
    assert len(names) == len(set(names))
    assert {r.block for r in programme.programme()} | {"seeds"} == set(programme.BLOCKS)
    ranks = {r.overrides["lora.rank"]: r.overrides["lora.alpha"] for r in programme.programme()
             if r.block == "lora-rank"}
    assert ranks == {r: 2 * r for r in (1, 2, 4, 8, 16, 32, 64)}  # the scale alpha/r stays 2
    assert pd.Series(names).str.contains("seed").sum() == 0  # seeds come from the record


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
        pd.DataFrame({"epoch": [1], "val_acc": [top1]}).to_csv(_mkdir(project / "plots") / f"train_{method}.csv", index=False)
    write_json(project / "metrics/evaluate.json", ev)
    programme.adopt()
    record = programme.read_record().set_index("name")
    assert list(record.index) == ["full-lr5e-05", "lora-r8"]
    assert record.loc["full-lr5e-05", "test_top1"] == pytest.approx(27 / 30)
    assert record.loc["lora-r8", "train_images"] == 40 and record.loc["lora-r8", "peak_memory_mb"] == 999.0
    # Under the throughput defaults the same trainings are the precision block's runs: the
    # programme's own runs stay pinned to fp32 eager, so full-lr5e-05 is not the pipeline's any more.
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(precision="auto", compile=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert programme.programme_base()["train"] == {**params["train"], "precision": "fp32", "compile": False}
    fast = [programme.Run("fast-full", "precision", "full", programme.FAST),
            programme.Run("fast-lora", "precision", "lora", programme.FAST)]
    monkeypatch.setattr(programme, "programme", lambda: RUNS + fast)
    programme.adopt()
    record = programme.read_record().set_index("name")
    assert list(record.index) == ["full-lr5e-05", "lora-r8", "fast-full", "fast-lora"]
    details = json.loads((project / "metrics/experiments/lora-r8.json").read_text())
    assert details["correct"]["test"] == "1" * 24 + "0" * 6
    assert "zero-shot" in {r.name for r in programme.todo(programme.read_record())}


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_bad_param_in_any_run_stops_before_the_first(project, monkeypatch):
    monkeypatch.setattr(programme, "programme", lambda: RUNS[:2] + [programme.Run("bad", "freeze", "full", {"full.lr": -1.0})])
    with pytest.raises(SystemExit, match="error: params.yaml: full.lr must be > 0, got -1.0"):
        programme.run_programme(threads=1)
    assert not (project / "metrics" / "experiments.csv").exists()


def test_missing_data_stops_before_any_run(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="data/prepared/files.json not found: run `dvc repro preprocess`"):
        programme.run_programme()
    assert not (tmp_path / "metrics" / "experiments.csv").exists()  # nothing recorded as failed


def test_freezing_and_fractions_are_paired_against_their_reference(tmp_path, monkeypatch):
    """The summary's freezing curve (0 = full fine-tuning at the freeze runs' lr, 12 = the val-best
    probe) and fraction curves (100 % = the default configuration), each point paired with its
    reference on the same images; the paper says where each sits."""
    monkeypatch.chdir(tmp_path)
    n = 40
    right = {"zero-shot": 30, "full-lr5e-05": 36, "freeze-4": 34, "freeze-8": 20, "probe-lr0.0001": 31,
             "probe-lr0.01": 28, "lora-r8": 35, "fraction0.1-full": 33, "fraction0.1-lora": 35,
             "fraction0.1-scratch": 5, "scratch": 12}
    blocks = {"zero-shot": "baseline", "full-lr5e-05": "full-lr", "lora-r8": "lora-rank", "scratch": "scratch",
              "freeze-4": "freeze", "freeze-8": "freeze", "probe-lr0.0001": "probe", "probe-lr0.01": "probe"}
    overrides = {"freeze-4": {"full.freeze_blocks": 4}, "freeze-8": {"full.freeze_blocks": 8},
                 "lora-r8": {"lora.rank": 8, "lora.alpha": 16, "lora.lr": 3e-4},
                 **{f"fraction0.1-{f}": {"data.train_fraction": 0.1} for f in ("full", "lora", "scratch")}}
    for name, k in right.items():
        correct = "1" * k + "0" * (n - k)  # the first k images right: every pair is nested
        write_json(programme.DETAILS / f"{name}.json",
                   {"correct": {"test": correct, "val": correct}, "files_sha": {"test": "t", "val": "v"}})
        programme.write_row({"name": name, "block": blocks.get(name, "fraction"), "method": "full",
                             "overrides": json.dumps(overrides.get(name, {})), "status": "ok",
                             "val_top1": k / n + (0.01 if name == "probe-lr0.0001" else 0), "test_top1": k / n,
                             "test_top1_lo": k / n - 0.05, "test_top1_hi": k / n + 0.05, "trainable_params": 10})
    df, correct = results.load(programme.RECORD, programme.DETAILS)
    s = results.summarize(df, correct)

    freezing = {p["frozen_blocks"]: p for p in s["freezing"]}
    assert {k: p["name"] for k, p in freezing.items()} == {0: "full-lr5e-05", 4: "freeze-4", 8: "freeze-8",
                                                           12: "probe-lr0.0001"}  # the val-best probe
    assert freezing[0]["vs_full"] is None
    t = freezing[8]["vs_full"]["test"]
    assert (t["a_only"], t["b_only"]) == (0, 16) and t["difference"] == pytest.approx(-16 / n)
    assert t["significant"] and not freezing[4]["vs_full"]["test"]["significant"]  # 2 discordant images

    assert [(r["rank"], r["name"]) for r in s["lora_ranks"]] == [(8, "lora-r8")]
    fractions = {(p["family"], p["fraction"]): p for p in s["fractions"]}
    assert set(fractions) == {(f, x) for f in ("full", "lora", "scratch") for x in (0.1, 1.0)}
    assert fractions[("full", 1.0)]["name"] == "full-lr5e-05" and fractions[("full", 1.0)]["vs_all_images"] is None
    assert fractions[("full", 0.1)]["vs_all_images"]["difference"] == pytest.approx(-3 / n)
    assert fractions[("lora", 0.1)]["vs_all_images"]["difference"] == 0

    text = " ".join(b.text for b in paper.freezing_paragraph(s["freezing"]) + paper.fractions_paragraph(s["fractions"]))
    assert "k = 8 50.0 % [45.0, 55.0], -40.0 points (95 % CI" in text and "the linear probe (`probe-lr0.0001`," in text
    assert "full fine-tuning on 10 % of them moves by -7.5 points" in text
    assert "from scratch 12.5 % (10 %), 30.0 % (100 %)" in text
    assert "From scratch on every training image the ViT reaches 30.0 %, against 82.5 % for full" in text
    assert paper.freezing_paragraph([]) == [] and paper.fractions_paragraph(s["fractions"][:0]) == []


def test_the_paper_says_how_far_val_separates_the_ranks():
    ranks = [{"rank": r, "name": f"lora-r{r}", "val_top1": v, "test_top1": t}
             for r, v, t in ((1, 0.934, 0.888), (8, 0.936, 0.904), (32, 0.937, 0.910))]
    text, = paper.selection_limitation({"lora_ranks": ranks})
    assert "LoRA's 3 ranks span 0.3 points of val top-1 and 2.2 of test top-1" in text
    assert paper.selection_limitation({"lora_ranks": ranks[:2]}) == [] and paper.selection_limitation(None) == []
