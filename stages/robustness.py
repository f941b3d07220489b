"""Stage robustness: beyond clean top-1. The zero-shot head and both fine-tuned models on
ImageWoof-C, the clean test split under robustness.corruptions at robustness.severities
(metrics/robustness.json), and the WiSE-FT path theta(a) = (1 - a) theta_0 + a theta_ft at
robustness.alphas on val, clean test and the corrupted test images (metrics/interpolation.json).
Clean results are the evaluate stage's (plots/predictions). Per-image correctness
(plots/robustness/correct.json) is what compare's paired tests read; the
figures are plots/robustness/{severity,path}.png. Logic in woof/robustness.py, woof/corrupt.py."""
import pandas as pd

from woof import config, corrupt, robustness
from woof.errors import ParamError, reading, run_stage
from woof.evaluate import evaluation_inputs, resolve_precision
from woof.io import CORRUPTED, PREDICTIONS, atomic_path, write_json
from woof.models import pipeline_models

OUT = CORRUPTED.parent  # correct.json, severity.png, path.png


def evaluated(split, model, files):
    """Which images of `split` the evaluate stage found `model` right on, in `files` order."""
    path = PREDICTIONS / f"{split}_{model}.csv"
    with reading(path, "run `dvc repro evaluate`"):
        rows = pd.read_csv(path)
        if rows.file.tolist() != list(files):
            raise ValueError("other images than data/prepared holds")
    return (rows.actual == rows.predicted).to_numpy()


def main():
    cfg = config.load()
    r = cfg.robustness
    corrupt.check(r.corruptions, r.severities)
    if r.path_severity not in r.severities:
        raise ParamError(f"params.yaml: robustness.path_severity={r.path_severity} must be one of "
                         f"robustness.severities {list(r.severities)}")
    classes, splits = evaluation_inputs(cfg, needs_test="robustness")
    models = pipeline_models(cfg.model, classes, cfg.data.image_size)
    clean = {s: {m: evaluated(s, m, files) for m in models} for s, (_, _, files) in splits.items()}
    result, path, per_image = robustness.measure(
        models, splits, clean, [c["name"] for c in classes], r, cfg.data.image_size, cfg.evaluate.batch_size,
        resolve_precision(cfg.train.precision, "cpu"), cfg.train.compile)
    with atomic_path(OUT, is_dir=True) as tmp:
        write_json(tmp / CORRUPTED.name, per_image)
        robustness.plot_severity(result, tmp / "severity.png")
        robustness.plot_path(path, tmp / "path.png")
    write_json("metrics/robustness.json", result)
    write_json("metrics/interpolation.json", path)
    for m, x in result["models"].items():
        print(f"{m:>9}: clean {100 * x['clean']:.1f} %, corrupted mean {100 * x['mean']:.1f} %, "
              f"severity {r.severities[-1]} {100 * x['by_severity'][-1]:.1f} %")
    for m, acc in path["models"].items():
        print(f"{m:>9} path a={r.alphas}: val " + " ".join(f"{100 * v:.1f}" for v in acc["val"]))


if __name__ == "__main__":
    run_stage(main)
