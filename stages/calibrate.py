"""Stage calibrate: how well each model's confidence matches its accuracy. The zero-shot head and
both fine-tuned models on val and test: expected calibration error (calibration.bins bins) and
NLL before and after temperature scaling fitted on val (metrics/calibration.json), and their
reliability diagrams (plots/reliability.png). Logic in woof/calibration.py."""
from woof import calibration, config
from woof.data import check_splits, load_classes, load_eval_splits
from woof.errors import InputError, run_stage
from woof.evaluate import compiled, predict, resolve_precision
from woof.io import write_json
from woof.labels import LABELS
from woof.models import check_model_name, data_config, pipeline_models


def main():
    cfg = config.load()
    check_model_name(cfg.model.name)
    classes = load_classes("data/prepared/classes.json")
    splits = load_eval_splits("data/prepared")
    check_splits(splits, len(classes), cfg.data.image_size)
    if "test" not in splits:
        raise InputError("calibrate reports on the test split: set data.split=clean_test and run `dvc repro`")
    models = pipeline_models(cfg.model, classes, cfg.data.image_size)
    precision = resolve_precision(cfg.train.precision, "cpu")
    result = {}
    for name, model in models.items():
        forward = compiled(model, cfg.train.compile)
        logits = {s: predict(model, x, data_config(model, cfg.data.image_size), cfg.evaluate.batch_size,
                             precision=precision, desc=f"calibrate {name} on {s}", forward=forward)[0].numpy()
                  for s, (x, _, _) in splits.items()}
        result[name] = calibration.calibrate(logits, {s: y.numpy() for s, (_, y, _) in splits.items()},
                                             cfg.calibration.bins)
    write_json("metrics/calibration.json", result)
    calibration.plot(result, "plots/reliability.png", "test", LABELS)
    for name, r in result.items():
        t = r["test"]
        print(f"{name:>9}: T {r['temperature']:.3f}; test ECE {100 * t['ece']:.2f} % -> {100 * t['ece_scaled']:.2f} %, "
              f"NLL {t['nll']:.4f} -> {t['nll_scaled']:.4f}")


if __name__ == "__main__":
    run_stage(main)
