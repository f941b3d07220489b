"""Stage evaluate: the zero-shot baseline and both fine-tuned models on every evaluation split
(val, and test under data.split=clean_test), with confidence intervals and per-image predictions,
and how far fine-tuning moved the weights from the pretrained ones (metrics/drift.json)."""

from woof import config, drift
from woof.data import check_splits, load_classes, load_eval_splits
from woof.errors import capped, run_stage
from woof.evaluate import evaluate_models, resolve_precision
from woof.io import atomic_path, write_csv, write_json
from woof.models import check_model_name, pipeline_models
PREDICTIONS = "plots/predictions"  # {split}_{model}.csv: file, actual, predicted (confusion, paired tests)

def main():
    cfg = config.load()
    check_model_name(cfg.model.name)
    classes = load_classes("data/prepared/classes.json")
    splits = load_eval_splits("data/prepared")
    check_splits(splits, len(classes), cfg.data.image_size)
    # The untrained model whose 10-class head is the ImageNet head restricted to our breeds.
    models = pipeline_models(cfg.model, classes, cfg.data.image_size)
    capped("evaluate.batch_size", cfg.evaluate.batch_size, max(len(s[1]) for s in splits.values()),
           "the images of the largest evaluation split")  # inference batches are never larger anyway
    metrics, per_class, predictions = evaluate_models(
        models, splits, [c["name"] for c in classes], cfg.data.image_size, cfg.evaluate.batch_size,
        resolve_precision(cfg.train.precision, "cpu"), cfg.train.compile)
    with atomic_path(PREDICTIONS, is_dir=True) as tmp:
        for split, by_model in predictions.items():
            for method, rows in by_model.items():
                write_csv(tmp / f"{split}_{method}.csv", rows)
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
