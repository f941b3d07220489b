"""The compare stage on small fabricated metrics files: the numbers and deltas in compare.json, a
discussion that follows them, clear errors for missing inputs, figures written; and the
programme's record beside the pipeline only when both come from the same archive and weights."""
import json
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from woof import compare, paper
from woof.io import write_json
from woof.record import accuracy_columns, write_row
from woof.stats import accuracy_ci

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["Shih-Tzu", "beagle", "Samoyed"]


def correctness(full_top1, lora_top1, n, extra_disagree=0):
    """Per-image correctness of zero-shot, full and LoRA on n images: LoRA and full share all
    their right images except `extra_disagree` each way (plus what their accuracies force)."""
    L, F = round(lora_top1 * n), round(full_top1 * n)
    a_only, b_only = extra_disagree + max(0, L - F), extra_disagree + max(0, F - L)
    both = min(L, F) - extra_disagree
    assert both + a_only + b_only <= n, "more disagreements than wrong images"
    idx = np.arange(n)
    lora = idx < both + a_only
    full = (idx < both) | ((idx >= both + a_only) & (idx < both + a_only + b_only))
    return {"zero_shot": idx < round(0.8 * n), "full": full, "lora": lora}


def fabricate(root, full_top1=0.95, lora_top1=0.90, n=1000, extra_disagree=0):
    """Metrics and plots as the earlier stages write them: test accuracies as given (n images,
    per-image predictions in plots/predictions/), val 2 points lower."""
    m, p = root / "metrics", root / "plots"
    m.mkdir(parents=True, exist_ok=True)
    (p / "predictions").mkdir(parents=True, exist_ok=True)
    ev = {}
    for split, shift in (("val", -0.02), ("test", 0.0)):
        right = correctness(full_top1 + shift, lora_top1 + shift, n, extra_disagree)
        for method, ok in right.items():
            acc, lo, hi = accuracy_ci(ok)
            top5 = {"zero_shot": 0.97, "full": 0.995, "lora": 0.99}[method]
            ev.setdefault(method, {})[split] = {
                "top1": acc, "top1_ci": [lo, hi], "top5": top5, "top5_ci": [top5 - 0.01, top5 + 0.005],
                "loss": {"zero_shot": 0.9, "full": 0.2, "lora": 0.3}[method], "n": n, "images_per_s": 200.0}
            actual = [CLASSES[i % 3] for i in range(n)]
            pd.DataFrame({"file": [f"img{i}.JPEG" for i in range(n)], "actual": actual,
                          "predicted": [a if o else CLASSES[(i + 1) % 3] for i, (a, o) in enumerate(zip(actual, ok))]}
                         ).to_csv(p / "predictions" / f"{split}_{method}.csv", index=False)
    common = dict(epochs=2, train_images_per_s=40.0, total_params=5_000_000, final_train_loss=0.5,
                  final_train_acc=0.9, final_val_loss=0.3, final_val_acc=0.9, precision="bf16",
                  hardware="Intel Xeon Platinum 8481C (2 cores)", peak_memory_kind="rss")
    full = dict(common, train_minutes=20.0, trainable_params=5_000_000, trainable_pct=100.0,
                peak_memory_mb=2000.0, model_mb=20.0)
    lora = dict(common, train_minutes=10.0, trainable_params=125_000, trainable_pct=2.5,
                peak_memory_mb=1500.0, model_mb=20.0, adapter_mb=0.5)
    (m / "evaluate.json").write_text(json.dumps(ev))
    (m / "train_full.json").write_text(json.dumps(full))
    (m / "train_lora.json").write_text(json.dumps(lora))
    (m / "data.json").write_text(json.dumps(dict(split="clean_test", train_images=3000, val_images=n, test_images=n,
                                                 skipped_images=1, num_classes=3)))
    for method, top1 in (("full", full_top1), ("lora", lora_top1)):  # dvclive's per-epoch curves
        curves = dict(train_loss=[1.0, 0.5], train_acc=[0.7, 0.9], val_loss=[0.6, 0.3], val_acc=[0.8, top1],
                      lr=[1e-4, 1e-5], images_per_s=[50.0, 50.0])
        live = root / "dvclive" / f"train_{method}" / "plots" / "metrics"
        live.mkdir(parents=True, exist_ok=True)
        for key, values in curves.items():
            pd.DataFrame({"step": [0, 1], key: values}).to_csv(live / f"{key}.tsv", sep="\t", index=False)
    pd.DataFrame([dict(split=split, **{"class": c}, method=meth, accuracy=0.8 + 0.05 * i)
                  for split in ("val", "test") for meth in ("zero_shot", "full", "lora") for i, c in enumerate(CLASSES)]
                 ).to_csv(p / "per_class.csv", index=False)
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"model": {"name": "vit_tiny_patch16_224", "weights": None}, "data": {"image_size": 160, "train_fraction": 1.0},
         "train": {"precision": "fp32", "compile": False},
         "full": {"epochs": 2, "lr": 5e-5}, "lora": {"epochs": 2, "lr": 3e-4, "rank": 8, "alpha": 16, "targets": ["qkv", "proj"]}}))


def results_of(root, record=None, correct=None):
    """compare.json as the compare stage computes it (as JSON, so NaN is null)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    res = compare.build(root / "metrics", root / "plots" / "predictions", params, record, correct)
    return json.loads(json.dumps(res))


def discussion_of(root):
    """The pipeline's three discussion paragraphs (woof.paper.pipeline_discussion), worded from
    the compare stage's numbers and verdicts."""
    res = results_of(root)
    ctx = {"r": {m: res[m] for m in ("zero_shot", "full", "lora")}, "v": res["verdicts"], "split": res["split"],
           "paired": res["paired"][res["split"]]}
    return " ".join(paper.pipeline_discussion(ctx))


# As woof.attention.attention_metrics writes it: entropies normalised to [0, 1], centre masses are
# shares (0.5 = uniform for center_area 0.5), correlations in [-1, 1].
ATTENTION = {"pretrained": {"cls_entropy": 0.912, "center_mass": 0.58, "rollout_entropy": 0.874, "rollout_center_mass": 0.63},
             "full": {"cls_entropy": 0.847, "center_mass": 0.66, "rollout_entropy": 0.802, "rollout_center_mass": 0.71},
             "lora": {"cls_entropy": 0.889, "center_mass": 0.61, "rollout_entropy": 0.851, "rollout_center_mass": 0.67},
             "corr": {"pretrained_full": 0.62, "pretrained_lora": 0.81, "full_lora": 0.66},
             "rollout_corr": {"pretrained_full": 0.48, "pretrained_lora": 0.72, "full_lora": 0.55},
             "center_area": 0.5, "num_images": 8}


def run_stage(root, monkeypatch):
    monkeypatch.chdir(root)
    runpy.run_path(str(REPO / "stages" / "compare.py"), run_name="__main__")


def test_stage_writes_json_and_figures(tmp_path, monkeypatch, capsys):
    fabricate(tmp_path)
    run_stage(tmp_path, monkeypatch)
    assert "full 0.9500" in capsys.readouterr().out  # printed too

    out = json.loads((tmp_path / "metrics" / "compare.json").read_text())
    # per method: test top1, CI, top5, loss, val top1, trainable, total, trainable %, checkpoint MB
    full, lora, zs = out["full"], out["lora"], out["zero_shot"]
    assert [round(100 * full["top1"], 2), f"{100 * full['top1_lo']:.1f}-{100 * full['top1_hi']:.1f}",
            round(100 * full["top5"], 2), full["loss"], round(100 * full["val_top1"], 2)] == [95.0, "93.5-96.2", 99.5, 0.2, 93.0]
    assert lora["top1"] == pytest.approx(0.90) and zs["top1"] == pytest.approx(0.80)
    assert (lora["trainable_params"], lora["total_params"], lora["trainable_pct"]) == (125_000, 5_000_000, 2.5)
    assert (zs["trainable_params"], zs["total_params"], zs["trainable_pct"]) == (0, 5_000_000, 0.0)
    assert (full["train_minutes"], lora["train_minutes"], zs["train_minutes"]) == (20.0, 10.0, 0.0)
    assert (full["peak_memory_mb"], lora["peak_memory_mb"]) == (2000.0, 1500.0)
    assert out["lora_minus_full_top1"] == pytest.approx(-0.05)
    assert out["full_minus_zero_shot_top1"] == pytest.approx(0.15)
    assert out["lora_trainable_pct"] == pytest.approx(2.5)
    assert out["lora_speedup"] == pytest.approx(2.0)
    assert out["lora_checkpoint_ratio"] == pytest.approx(0.025)
    assert out["lora"]["checkpoint_mb"] == 0.5 and out["zero_shot"]["checkpoint_mb"] is None  # adapter vs model
    assert out["full"]["checkpoint_mb"] == 20.0
    assert out["lora"]["top1_lo"] < 0.90 < out["lora"]["top1_hi"] and out["lora"]["val_top1"] == pytest.approx(0.88)
    t = out["paired"]["test"]["lora_vs_full"]
    assert (t["a_only"], t["b_only"], t["n"], t["significant"]) == (0, 50, 1000, True)
    assert t["difference"] == pytest.approx(-0.05) and t["difference_ci"][1] < 0
    assert out["paired"]["val"]["full_vs_zero_shot"]["difference"] == pytest.approx(0.13)
    assert out["split"] == "test" and out["verdicts"]["lora_behind"] and not out["verdicts"]["lora_ahead"]
    for k in ("accuracy", "params", "curves", "per_class"):
        assert (tmp_path / "plots" / f"compare_{k}.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob(".*.png*"))  # no temporary files left behind


def test_stage_without_a_record(tmp_path, monkeypatch):
    """No programme record: an empty summary, not an error (programme.md says how to make one)."""
    fabricate(tmp_path)
    run_stage(tmp_path, monkeypatch)
    assert json.loads((tmp_path / "metrics" / "compare.json").read_text())["programme"] is None
    assert "make programme" in (tmp_path / "metrics" / "programme.md").read_text()
    assert (tmp_path / "plots" / "programme").is_dir()


def test_discussion_sentences(tmp_path):
    fabricate(tmp_path)
    text = discussion_of(tmp_path)
    assert "Full fine-tuning wins by 5.0 points" in text
    # RSS includes the cached dataset: the gap in MB, not a percentage that would understate it.
    assert "Peak process memory (RSS, which includes the cached dataset both runs hold) was 1500 MB " \
           "against 2000 MB, 500 MB less." in text and "% less" not in text


def test_discussion_follows_the_numbers(tmp_path):
    fabricate(tmp_path, full_top1=0.90, lora_top1=0.95)
    text = discussion_of(tmp_path)
    assert "LoRA wins by 5.0 points" in text and "Full fine-tuning wins" not in text
    assert "significant at the 5 % level, LoRA is better" in text
    assert "LoRA is the better choice here on accuracy alone" in text
    assert "2.00x faster" in text and "40x smaller" in text

    fabricate(tmp_path, full_top1=0.95, lora_top1=0.945)  # within the 1-point tie band
    text = discussion_of(tmp_path)
    assert "LoRA matches full fine-tuning within 1 point" in text and "wins by" not in text
    assert "not significant at the 5 % level" in text

    fabricate(tmp_path, full_top1=0.95, lora_top1=0.90)
    text = discussion_of(tmp_path)
    assert "matches" not in text and "Full fine-tuning is the better choice" in text


def test_discussion_flips_with_the_paired_test(tmp_path):
    """The same two accuracies (95 % vs 93 % on 1,000 test images), once with LoRA's right images a
    subset of full fine-tuning's (20 discordant images, all one way: significant), once with 45
    more disagreements each way (45 against 65: not significant)."""
    fabricate(tmp_path, full_top1=0.95, lora_top1=0.93)
    text = discussion_of(tmp_path)
    assert "only LoRA is right on 0, only full fine-tuning on 20" in text
    assert "significant at the 5 % level, full fine-tuning is better" in text
    assert "Full fine-tuning is the better choice" in text

    fabricate(tmp_path, full_top1=0.95, lora_top1=0.93, extra_disagree=45)
    text = discussion_of(tmp_path)
    assert "only LoRA is right on 45, only full fine-tuning on 65" in text
    assert "not significant at the 5 % level, so these images cannot tell the two apart" in text
    assert "Full fine-tuning is the better choice" not in text


def test_cost_columns_when_present(tmp_path):
    fabricate(tmp_path)
    lenet = dict(weights_mb=0.5, grads_mb=0.5, optimizer_mb=1.0, activations_mb=2.0, inference_flops=1e9)
    (tmp_path / "metrics" / "cost.json").write_text(json.dumps(
        {"blocks": 12, "full": dict(lenet, trainable_params=5_000_000, train_flops=3e11),
         "lora": dict(lenet, trainable_params=125_000, train_flops=2e11)}))
    assert list(compare.collect(tmp_path / "metrics").method) == ["zero_shot", "full", "lora"]
    res = results_of(tmp_path)
    assert res["cost"]["full"]["train_flops"] == 3e11 and res["cost"]["blocks"] == 12
    table = next(b for b in paper.cost_results({"cost": res["cost"], "r": res}) if hasattr(b, "rows"))
    assert "train GFLOPs/step" in table.header
    rows = {r[0]: r for r in table.rows}
    assert rows["full fine-tuning"][table.header.index("train GFLOPs/step")] == "300.0"


@pytest.mark.parametrize("missing", ["metrics/evaluate.json", "metrics/train_full.json",
                                     "metrics/train_lora.json", "dvclive/train_lora/plots/metrics/val_acc.tsv",
                                     "plots/per_class.csv"])
def test_missing_input_names_the_file(tmp_path, monkeypatch, capsys, missing):
    fabricate(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(SystemExit) as ended:  # one line naming the file, no traceback
        run_stage(tmp_path, monkeypatch)
    err = capsys.readouterr().err
    assert ended.value.code == 1 and err.startswith("error: ") and Path(missing).name in err and "Traceback" not in err
    assert not (tmp_path / "metrics" / "compare.json").exists()


def test_gpu_memory_is_a_ratio(tmp_path):
    """GPU runs report memory allocated by tensors, which compares as a ratio."""
    fabricate(tmp_path)
    for name in ("full", "lora"):
        path = tmp_path / "metrics" / f"train_{name}.json"
        train = json.loads(path.read_text())
        train.update(peak_memory_kind="cuda_allocated", hardware="NVIDIA H100 80GB HBM3")
        path.write_text(json.dumps(train))
    assert "Peak GPU memory held by tensors was 1500 MB against 2000 MB (25 % less)." in discussion_of(tmp_path)


# ---------------------------------------------------------------- the programme's record beside the pipeline

ARCHIVE, WEIGHTS = "a" * 64, "e" * 64  # what the fabricated pipeline learnt from
# name: (block, method, overrides, images right of 200 on test and val, trainable params)
RECORD_RUNS = {"zero-shot": ("baseline", "zero_shot", {}, 172, 0),
               "full-lr5e-05": ("full-lr", "full", {"full.lr": 5e-5}, 184, 5_000_000),
               "lora-r8": ("lora-rank", "lora", {"lora.rank": 8, "lora.alpha": 16, "lora.lr": 3e-4}, 182, 150_000)}


def fabricate_record(root, archive, weights, n=200):
    """A programme record (metrics/experiments.csv and its per-image files) of three runs on n
    images, learnt from `archive` and `weights`; the pipeline's metrics name ARCHIVE and WEIGHTS."""
    m = root / "metrics"
    data = json.loads((m / "data.json").read_text())
    (m / "data.json").write_text(json.dumps(dict(data, archive_sha256=ARCHIVE)))
    full = json.loads((m / "train_full.json").read_text())
    (m / "train_full.json").write_text(json.dumps(dict(full, pretrained_weights_sha256=WEIGHTS)))
    (m / "cost.json").write_text(json.dumps({"blocks": 12}))
    for name, (block, method, overrides, right, trainable) in RECORD_RUNS.items():
        correct = {s: "1" * right + "0" * (n - right) for s in ("val", "test")}  # nested: every pair is paired
        write_json(m / "experiments" / f"{name}.json",
                   {"name": name, "overrides": overrides, "history": [], "correct": correct,
                    "files_sha": {"val": "v", "test": "t"}})
        write_row({"name": name, "block": block, "method": method, "overrides": json.dumps(overrides),
                   "status": "ok", "error": "", **accuracy_columns(correct, {"val": 0.99, "test": 0.99}),
                   "train_images": 0 if method == "zero_shot" else 3000,
                   "train_minutes": 0.0 if method == "zero_shot" else 30.0, "train_images_per_s": 50.0,
                   "trainable_params": trainable, "total_params": 5_000_000, "peak_memory_mb": 2500.0,
                   "epochs": 5, "precision": "fp32", "archive_sha256": archive, "weights_sha256": weights},
                  m / "experiments.csv")


def paper_of(root):
    doc = paper.build(root / "metrics" / "compare.json", root / "plots", yaml.safe_load((root / "params.yaml").read_text()))
    return doc.abstract, " ".join(getattr(b, "text", "") for b in doc.blocks)


def test_record_from_another_archive_is_never_paired_with_the_pipeline(tmp_path, monkeypatch):
    """The pipeline ran on one archive (zero-shot 80.0 % on its 1,000 test images), the record on
    another (zero-shot 86.0 % on 200): compare says they differ, and the paper says so plainly and
    sets the programme's runs only beside the programme's own zero-shot run."""
    fabricate(tmp_path)
    fabricate_record(tmp_path, archive="b" * 64, weights=WEIGHTS)
    run_stage(tmp_path, monkeypatch)
    out = json.loads((tmp_path / "metrics" / "compare.json").read_text())
    prov = out["provenance"]
    assert prov["same_data"] is False
    assert prov["pipeline"] == {"archive_sha256": ARCHIVE, "weights_sha256": WEIGHTS}
    assert prov["programme"] == {"archive_sha256": ["b" * 64], "weights_sha256": [WEIGHTS]}
    prog = out["programme"]
    assert prog["runs"]["ok"] == 3 and prog["zero_shot"]["test_top1"] == pytest.approx(0.86)
    assert prog["best"]["full"]["vs_zero_shot"]["test"]["n"] == 200  # paired on the record's own images
    # The share of the LoRA the paper reports (the programme's), of the plain model's parameters.
    assert prog["best"]["lora"]["trainable_share"] == pytest.approx(150_000 / 5_000_000)

    abstract, body = paper_of(tmp_path)
    assert ("The pipeline's own runs in this report used another archive or other weights than the programme "
            f"(archive sha256 {'a' * 12} against {'b' * 12}), so their numbers are shown apart and never paired "
            "with the programme's.") in abstract
    assert "LoRA reaches 91.0 %" in abstract and "against 92.0 %" in abstract  # the programme's val-best runs
    assert "zero-shot ImageNet head (86.0 %)" in abstract and "80.0 %" not in abstract
    assert "the zero-shot head already scores 86.0 %, so fine-tuning adds +6.0 (full) and +5.0 (LoRA) points" in body
    assert "+15.0 (full)" not in body


def test_record_from_the_same_archive(tmp_path):
    fabricate(tmp_path)
    fabricate_record(tmp_path, archive=ARCHIVE, weights=WEIGHTS)
    from woof.record import load
    df, correct = load(tmp_path / "metrics" / "experiments.csv", tmp_path / "metrics" / "experiments")
    write_json(tmp_path / "metrics" / "compare.json", results_of(tmp_path, df, correct))
    out = json.loads((tmp_path / "metrics" / "compare.json").read_text())
    assert out["provenance"]["same_data"] is True
    abstract, _ = paper_of(tmp_path)
    assert "another archive" not in abstract and "zero-shot ImageNet head (86.0 %)" in abstract

    # Other weights alone are other data too.
    fabricate_record(tmp_path, archive=ARCHIVE, weights="f" * 64)
    df, correct = load(tmp_path / "metrics" / "experiments.csv", tmp_path / "metrics" / "experiments")
    assert not results_of(tmp_path, df, correct)["provenance"]["same_data"]
