"""Small file helpers: every output is written to a temporary path first and renamed into
place, so a crash never leaves a half-written file or folder behind."""
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from woof.errors import InputError, reading

# Where a stage leaves what later stages read (dvc.yaml declares the same paths).
PREDICTIONS = Path("plots/predictions")  # evaluate's {split}_{model}.csv: file, actual, predicted
LOGITS = Path("data/logits.safetensors")  # evaluate's "{split}/{model}": float32 (N, C), rows of files.json
CORRUPTED = Path("plots/robustness/correct.json")  # robustness's per-image correctness on ImageWoof-C


@contextlib.contextmanager
def atomic_path(path, is_dir=False):
    """Yield a temporary sibling of `path`; on success move it onto `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*"):  # left by a process killed with SIGKILL
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod((0o777 if is_dir else 0o666) & ~umask)  # mkstemp/mkdtemp make them private
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def at(results, path):
    """The entry at a dotted path ("cnn.lora_vs_full") of a results dict; None where a step is missing."""
    for key in path.split("."):
        results = (results or {}).get(key)
    return results


def read_json(path):
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} not found: run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


def write_csv(path, rows):
    """Rows are dicts with the same keys; the header comes from the first row."""
    import csv
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def pyplot():
    """matplotlib.pyplot on the Agg backend: stages and CI run headless. Call it before creating
    a figure: switching backend later closes the figures already open."""
    import matplotlib
    matplotlib.use("Agg")  # a no-op when Agg is already the backend
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi=120):
    """Write a matplotlib figure atomically in the format its suffix names, then close it (pyplot
    keeps open figures alive). Plots are PNG; photographs (attention maps) JPEG, a tenth the size."""
    fmt = Path(path).suffix.lstrip(".").lower().replace("jpg", "jpeg")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, **({"pil_kwargs": {"quality": 85}} if fmt == "jpeg" else {}))
    pyplot().close(fig)


def read_live(live_dir, keys=("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")):
    """A training's per-epoch curves as dvclive wrote them (<live_dir>/plots/metrics/<key>.tsv, one
    row per step = epoch - 1) -> a DataFrame with an `epoch` column and one column per key."""
    import pandas as pd
    metrics = Path(live_dir) / "plots" / "metrics"
    curves = []
    for k in keys:
        with reading(metrics / f"{k}.tsv", "run the training stage that logs there (dvc repro)"):
            curves.append(pd.read_csv(metrics / f"{k}.tsv", sep="\t").set_index("step")[k])
    df = pd.concat(curves, axis=1).reset_index(drop=False)
    return df.assign(epoch=df.pop("step") + 1)[["epoch", *keys]]


def load_params(path="params.yaml"):
    import yaml
    return yaml.safe_load(Path(path).read_text())


def machine(device="cpu"):
    """What the numbers were measured on, for metrics and reports: GPU name, or CPU model and cores."""
    if str(device).startswith("cuda"):
        import torch  # only for a GPU: the stages that read results never load torch
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"{model} ({os.cpu_count()} cores)"
