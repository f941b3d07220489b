"""The compare stage on small fabricated metrics files: table numbers, compare.json deltas, a
discussion that follows the numbers, clear errors for missing inputs, figures written."""
import json
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from woof import report
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
    for method, top1 in (("full", full_top1), ("lora", lora_top1)):
        pd.DataFrame(dict(epoch=[1, 2], train_loss=[1.0, 0.5], train_acc=[0.7, 0.9], val_loss=[0.6, 0.3],
                          val_acc=[0.8, top1], epoch_seconds=[600.0, 600.0], lr=[1e-4, 1e-5])
                     ).to_csv(p / f"train_{method}.csv", index=False)
    pd.DataFrame([dict(split=split, **{"class": c}, method=meth, accuracy=0.8 + 0.05 * i)
                  for split in ("val", "test") for meth in ("zero_shot", "full", "lora") for i, c in enumerate(CLASSES)]
                 ).to_csv(p / "per_class.csv", index=False)
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"model": {"name": "vit_tiny_patch16_224", "weights": None}, "data": {"image_size": 160, "train_fraction": 1.0},
         "full": {"epochs": 2, "lr": 1e-4}, "lora": {"epochs": 2, "rank": 8, "alpha": 16, "targets": ["qkv", "proj"]}}))


def discussion_of(root):
    paired = report.paired_tests(root / "plots" / "predictions")
    return " ".join(report.discussion(report.collect(root / "metrics", root / "plots"), paired["test"]))


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


def table_rows_text(text):
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and "Method" not in line}


def table_rows(df):
    return table_rows_text(report.markdown_table(df))


def test_stage_writes_table_json_figures(tmp_path, monkeypatch, capsys):
    fabricate(tmp_path)
    run_stage(tmp_path, monkeypatch)
    assert table_rows_text(capsys.readouterr().out)["Full fine-tuning"][0] == "95.00"  # printed too
    rows = table_rows(report.collect(tmp_path / "metrics", tmp_path / "plots"))
    # columns: test top1, CI, top5, loss, val top1, minutes, img/s, trainable, total, trainable %,
    # peak MB, checkpoint MB
    assert rows["Full fine-tuning"][:5] == ["95.00", "93.5-96.2", "99.50", "0.200", "93.00"]
    assert rows["LoRA"][0] == "90.00" and rows["Zero-shot"][0] == "80.00"
    assert rows["LoRA"][7:10] == ["125,000", "5,000,000", "2.50"]
    assert rows["Zero-shot"][7:10] == ["0", "5,000,000", "0.00"]
    assert rows["LoRA"][11] == "0.50" and rows["Full fine-tuning"][11] == "20.00"  # adapter vs model
    assert rows["Zero-shot"][11] == "—"

    out = json.loads((tmp_path / "metrics" / "compare.json").read_text())
    assert out["lora_minus_full_top1"] == pytest.approx(-0.05)
    assert out["full_minus_zero_shot_top1"] == pytest.approx(0.15)
    assert out["lora_trainable_pct"] == pytest.approx(2.5)
    assert out["lora_speedup"] == pytest.approx(2.0)
    assert out["lora_checkpoint_ratio"] == pytest.approx(0.025)
    assert out["lora"]["checkpoint_mb"] == 0.5 and out["zero_shot"]["checkpoint_mb"] is None
    assert out["lora"]["top1_lo"] < 0.90 < out["lora"]["top1_hi"] and out["lora"]["val_top1"] == pytest.approx(0.88)
    t = out["paired"]["test"]["lora_vs_full"]
    assert (t["a_only"], t["b_only"], t["n"], t["significant"]) == (0, 50, 1000, True)
    assert t["difference"] == pytest.approx(-0.05) and t["difference_ci"][1] < 0
    assert out["paired"]["val"]["full_vs_zero_shot"]["difference"] == pytest.approx(0.13)
    for k in ("accuracy", "params", "curves", "per_class"):
        assert (tmp_path / "plots" / f"compare_{k}.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.rglob(".*.png*"))  # no temporary files left behind


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
    (tmp_path / "metrics" / "cost.json").write_text(json.dumps(
        {"full": {"train_flops": 3e11, "inference_flops": 1e9}, "lora": {"train_flops": 2e11, "inference_flops": 1e9}}))
    df = report.collect(tmp_path / "metrics", tmp_path / "plots")
    assert list(df.method) == ["zero_shot", "full", "lora"]
    table = report.markdown_table(df)
    assert "Train GFLOPs/step" in table and table_rows_text(table)["Full fine-tuning"][-2] == "300.0"


@pytest.mark.parametrize("missing", ["metrics/evaluate.json", "metrics/train_full.json",
                                     "metrics/train_lora.json", "plots/train_lora.csv", "plots/per_class.csv"])
def test_missing_input_names_the_file(tmp_path, monkeypatch, missing):
    fabricate(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=Path(missing).name):
        run_stage(tmp_path, monkeypatch)
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
