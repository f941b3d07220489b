"""Stage evaluate: the zero-shot baseline and both fine-tuned models on every evaluation split
(val, and test under data.split=clean_test), with confidence intervals, per-image predictions and
logits (data/logits.safetensors, which calibrate reads), and how far fine-tuning moved the weights
from the pretrained ones (metrics/drift.json)."""
from safetensors.torch import save_file

from woof import config, drift
from woof.errors import capped, run_stage
from woof.evaluate import evaluate_models, evaluation_inputs, resolve_precision
from woof.io import LOGITS, PREDICTIONS, atomic_path, write_csv, write_json
from woof.models import pipeline_models


def main():
    cfg = config.load()
    classes, splits = evaluation_inputs(cfg)
    # The untrained model whose 10-class head is the ImageNet head restricted to our breeds.
    models = pipeline_models(cfg.model, classes, cfg.data.image_size)
    capped("evaluate.batch_size", cfg.evaluate.batch_size, max(len(s[1]) for s in splits.values()),
           "the images of the largest evaluation split")  # inference batches are never larger anyway
    metrics, per_class, predictions, logits = evaluate_models(
        models, splits, [c["name"] for c in classes], cfg.data.image_size, cfg.evaluate.batch_size,
        resolve_precision(cfg.train.precision, "cpu"), cfg.train.compile)
    with atomic_path(PREDICTIONS, is_dir=True) as tmp:
        for split, by_model in predictions.items():
            for method, rows in by_model.items():
                write_csv(tmp / f"{split}_{method}.csv", rows)
    with atomic_path(LOGITS) as tmp:
        save_file({f"{s}/{m}": t.contiguous() for s, by_model in logits.items() for m, t in by_model.items()}, str(tmp))
    write_csv("plots/per_class.csv", per_class)
    write_json("metrics/evaluate.json", metrics)
    # How far each fine-tuning moved the weights from the pretrained model (= the zero-shot one).
    moved = drift.drift(models["zero_shot"], {m: models[m] for m in ("full", "lora")})
    write_json("metrics/drift.json", moved)
    drift.plot(moved, "plots/drift.png")
    for method, by_split in metrics.items():
        for split, m in by_split.items():
            lo, hi = m["top1_ci"]
            print(f"{method:>9} {split:>4}: top-1 {m['top1']:.4f} [{lo:.4f}, {hi:.4f}]  "
                  f"top-5 {m['top5']:.4f}  loss {m['loss']:.4f}  n {m['n']}")


if __name__ == "__main__":
    run_stage(main)
