"""The experiment programme: every configuration the paper compares, run one at a time on the
prepared data, each result kept in a committed record so that it survives the machine.

    python -m woof.programme list                      # done, failed and missing runs
    python -m woof.programme run [BLOCK ...] [--rerun NAME ...] [--commit] [--threads N]
    python -m woof.programme adopt                     # record the pipeline's own two trainings
    python -m woof.programme summary                   # selection, tables and figures (the record only)

The record is metrics/experiments.csv (one row per run: what differs from params.yaml, val and
test top-1/top-5 with 95 % CIs, minutes, img/s, trainable parameters, peak memory, status, error,
git revision, hardware) and metrics/experiments/<name>.json beside it (the per-epoch history and
each image's prediction on val and test, for paired tests between any two runs). A recorded run
is never re-run unless named in --rerun; a failed run stays recorded with its error.

Why not DVC experiments: their refs and the run-cache live in .git and .dvc/cache, which do not
survive a replaced machine, and a DVC experiment retrains every stage its params touch (two
trainings per data fraction). Each run here is one `woof.train.train_method` call on the cached
tensors of `dvc repro`'s preprocess stage, the same path the train stages take.

Selection follows the protocol: for each method the configuration with the best *val* top-1 is
chosen, and its *test* numbers are reported; test chooses nothing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from itertools import zip_longest
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from woof import config
from woof.errors import InputError, ParamError, UserError
from woof.io import atomic_path, load_params, read_json, write_json

RECORD = Path("metrics/experiments.csv")
DETAILS = Path("metrics/experiments")
PREPARED = Path("data/prepared")
ALPHA_PER_RANK = 2  # alpha = 2r: LoRA's scale alpha/r stays 2 (the default 16/8) across ranks
SEEDS = (1, 2)      # extra seeds of the val-best configurations (seed 0 is the grid run itself)


@dataclass
class Run:
    name: str
    block: str
    method: str                      # full | lora | zero_shot
    overrides: dict = field(default_factory=dict)  # dotted params keys -> value

    def params(self, base):
        """params.yaml with this run's overrides applied."""
        p = json.loads(json.dumps(base))  # a deep copy
        for key, value in self.overrides.items():
            section, name = key.split(".", 1)
            if name not in p.get(section, {}):
                raise KeyError(f"run {self.name}: {key} is not a param of params.yaml")
            p[section][name] = value
        return p


LORA_LR = 3e-4  # the rank block's learning rate (params.yaml's default when the programme was set)
# Every run trains in fp32 eager, as the programme's first runs did, whatever params.yaml's
# throughput defaults: runs of one programme differ only by their own overrides. The precision
# block measures what those defaults cost in accuracy.
PINNED = {"train.precision": "fp32", "train.compile": False}
FAST = {"train.precision": "auto", "train.compile": True}  # bf16 where it is native, compiled


def programme_base():
    """params.yaml as the programme's runs start from it: with PINNED applied."""
    return Run("base", "", "", PINNED).params(load_params())


def _lora(rank, **extra):
    return {"lora.rank": rank, "lora.alpha": ALPHA_PER_RANK * rank, "lora.lr": LORA_LR, **extra}


def programme():
    """The runs of issue "Run the experiment programme", cheapest and most informative first."""
    runs = [Run("zero-shot", "baseline", "zero_shot")]
    runs += [Run(f"probe-lr{lr:g}", "probe", "full", {"full.trainable": ["head"], "full.lr": lr})
             for lr in (1e-4, 1e-3, 1e-2)]  # cached features: about a minute each
    # The two grids alternate, the widest spans first, so that a partial programme already
    # brackets both methods' optimum.
    full = [Run(f"full-lr{lr:g}", "full-lr", "full", {"full.lr": lr}) for lr in (5e-5, 2e-5, 1e-4, 2e-4)]
    ranks = [Run(f"lora-r{r}", "lora-rank", "lora", _lora(r)) for r in (8, 32, 2, 64, 1, 16, 4)]
    runs += [r for pair in zip_longest(full, ranks) for r in pair if r is not None]
    runs += [Run(f"lora-r{r}-lr{lr:g}", "lora-lr", "lora", _lora(r, **{"lora.lr": lr}))
             for r in (2, 8, 32) for lr in (1e-4, 1e-3)]
    runs += [Run("fast-full", "precision", "full", FAST), Run("fast-lora", "precision", "lora", FAST)]
    runs += [Run(f"freeze-{k}", "freeze", "full", {"full.freeze_blocks": k}) for k in (4, 8)]
    # From scratch a ViT needs a far larger lr than fine-tuning; 5e-4 with warmup, not tuned.
    scratch = {"full.pretrained": False, "full.lr": 5e-4}
    runs += [Run("scratch", "scratch", "full", scratch)]
    for f in (0.1, 0.2, 0.5):
        runs += [Run(f"fraction{f:g}-full", "fraction", "full", {"data.train_fraction": f}),
                 Run(f"fraction{f:g}-lora", "fraction", "lora", {"data.train_fraction": f}),
                 Run(f"fraction{f:g}-scratch", "fraction", "full", {"data.train_fraction": f, **scratch})]
    return runs


BLOCKS = list(dict.fromkeys([r.block for r in programme()] + ["seeds"]))
GRIDS = {"full": ("full-lr",), "lora": ("lora-rank", "lora-lr")}  # what "val-best" is chosen among


def extra_seeds(seeds):
    """The seeds a configuration is rerun at: seed 0 is its grid run."""
    return [s for s in seeds if s != 0]


def seed_runs(record, seeds=SEEDS):
    """The val-best full and LoRA configurations at `seeds` (0 is the grid run itself); none
    until their grids are complete."""
    by_name = {r.name: r for r in programme()}
    runs = []
    for method, blocks in GRIDS.items():
        best = select(record, blocks)
        if best is None:
            continue
        base = by_name[best["name"]]
        runs += [Run(f"{base.name}-seed{s}", "seeds", method, {**base.overrides, f"{method}.seed": s})
                 for s in extra_seeds(seeds)]
    return runs


# ------------------------------------------------------------------ the record

COLUMNS = ["name", "block", "method", "overrides", "status", "error",
           "val_top1", "val_top1_lo", "val_top1_hi", "val_top5", "val_n",
           "test_top1", "test_top1_lo", "test_top1_hi", "test_top5", "test_n",
           "train_images", "train_minutes", "train_images_per_s", "trainable_params", "total_params",
           "peak_memory_mb",
           "epochs", "precision", "git_rev", "hardware", "finished"]


def read_record(path=RECORD):
    if not Path(path).exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def write_row(row, path=RECORD):
    """Add (or, for a rerun, replace) one run's row; rows stay in programme order."""
    df = read_record(path)
    df = pd.concat([df[df.name != row["name"]], pd.DataFrame([row])], ignore_index=True)
    order = {r.name: i for i, r in enumerate(programme())}
    df["_order"] = [order.get(n, len(order)) for n in df.name]
    df = df.sort_values(["_order", "name"], kind="stable").drop(columns="_order")
    with atomic_path(path) as tmp:
        df.reindex(columns=COLUMNS).to_csv(tmp, index=False)


def select(record, blocks):
    """The successful run of `blocks` with the best val top-1 (ties: fewer trainable parameters),
    or None while any run of those blocks is still missing."""
    names = {r.name for r in programme() if r.block in blocks}
    d = record[record.name.isin(names)]
    return val_best(d) if len(d) == len(names) else None


def val_best(rows):
    """The successful row with the best val top-1 (ties: fewer trainable parameters), or None."""
    d = rows[rows.status == "ok"]
    if not len(d):
        return None
    return d.sort_values(["val_top1", "trainable_params"], ascending=[False, True]).iloc[0].to_dict()


# ------------------------------------------------------------------ one run (in its own process)

def _git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "woof", "stages"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check_prepared(cfg):
    """The prepared tensors must be those of the config's data section (dvc repro's preprocess)."""
    data = read_json("metrics/data.json") if Path("metrics/data.json").exists() else {}
    if not (PREPARED / "files.json").exists():
        raise InputError(f"{PREPARED}/files.json not found: run `dvc repro preprocess` "
                         "(or `make offline`) before the programme")
    if data.get("split") != cfg.data.split or "test_images" not in data:
        raise InputError(f"{PREPARED} was not prepared with data.split={cfg.data.split} and a "
                         "test split (metrics/data.json): run `dvc repro preprocess`")
    if cfg.data.train_fraction != 1:
        raise ParamError("params.yaml data.train_fraction must be 1: the programme takes its own "
                         "fractions of the full training set")


def run_one(run, device="cpu"):
    """Train (unless zero-shot) and evaluate one run on val and test -> (row, details)."""
    import torch
    from woof.data import load_classes, load_eval_splits, load_split, stratified_subset
    from woof.evaluate import evaluate_models, resolve_precision
    from woof.models import create_model, pretrained_weights
    from woof.train import machine, parameter_counts, train_method

    base = programme_base()
    check_prepared(config.parse(base))  # the programme's own fractions are overrides of the full set
    cfg = config.parse(run.params(base))
    classes = load_classes(PREPARED / "classes.json")
    splits = load_eval_splits(PREPARED)
    size = cfg.data.image_size
    precision = resolve_precision(cfg.train.precision, device)  # what train_method runs at, too
    history, metrics, n_train = [], {}, 0
    if run.method == "zero_shot":
        model = create_model(cfg.model.name, num_classes=len(classes), img_size=size,
                             weights=pretrained_weights(cfg.model),
                             class_indices=[c["imagenet_index"] for c in classes])
        metrics = {**parameter_counts(model), "trainable_params": 0, "train_minutes": 0.0}
    else:
        images, labels = load_split(PREPARED / "train.safetensors")
        fraction = cfg.data.train_fraction
        if fraction < 1:  # the same stratified subset preprocess would have taken
            keep = torch.tensor(stratified_subset(labels, fraction, cfg.data.seed))
            images, labels = images[keep], labels[keep]
        n_train, val = len(labels), splits["val"][:2]
        ckpt = Path("checkpoints/programme") / run.name  # an interrupted run resumes from its last epoch
        model, history, metrics = train_method(run.method, cfg, classes, (images, labels), val, ckpt,
                                               device, PREPARED / "train.safetensors")
        shutil.rmtree(ckpt, ignore_errors=True)
        if run.method == "lora":
            from woof import lora
            model = lora.merge_lora(model.cpu())
    ev, _, predictions = evaluate_models({run.method: model.cpu()}, splits, [c["name"] for c in classes],
                                         size, cfg.evaluate.batch_size, precision, cfg.train.compile)
    row = {"name": run.name, "block": run.block, "method": run.method,
           "overrides": json.dumps(run.overrides, sort_keys=True), "status": "ok", "error": "",
           "train_images": n_train, "train_minutes": metrics.get("train_minutes"),
           "train_images_per_s": metrics.get("train_images_per_s"),
           "trainable_params": metrics.get("trainable_params"), "total_params": metrics.get("total_params"),
           "peak_memory_mb": metrics.get("peak_memory_mb"), "epochs": len(history),
           "precision": precision, "git_rev": _git_rev(), "hardware": machine(device),
           "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    row.update(split_columns(ev[run.method]))
    details = {"name": run.name, "overrides": run.overrides, "history": history,
               **per_image({s: rows[run.method] for s, rows in predictions.items()}, classes)}
    return row, details


def split_columns(by_split):
    """The record's accuracy columns from evaluate's {split: metrics} of one model."""
    row = {}
    for split, m in by_split.items():
        row.update({f"{split}_top1": m["top1"], f"{split}_top1_lo": m["top1_ci"][0],
                    f"{split}_top1_hi": m["top1_ci"][1], f"{split}_top5": m["top5"], f"{split}_n": m["n"]})
    return row


def per_image(predictions, classes):
    """{split: rows (file, actual, predicted)} -> the details' per-image fields, in
    data/prepared/files.json order: each prediction's class index, a 0/1 string of which images
    are right (for paired tests), and a digest of the file list (to refuse pairing other images)."""
    import hashlib
    names = [c["name"] for c in classes]
    return {"predicted": {s: [names.index(r["predicted"]) for r in rows] for s, rows in predictions.items()},
            "correct": {s: "".join("1" if r["actual"] == r["predicted"] else "0" for r in rows)
                        for s, rows in predictions.items()},
            "files_sha": {s: hashlib.sha256("\n".join(r["file"] for r in rows).encode()).hexdigest()[:16]
                          for s, rows in predictions.items()}}


def _one(spec, out):
    """Child process: run the Run given as JSON, write {"row", "details"} (or the error) to `out`."""
    run = Run(**json.loads(spec))
    try:
        row, details = run_one(run)
        write_json(out, {"row": row, "details": details})
    except Exception as e:  # recorded as a failed run; the traceback goes to the log
        traceback.print_exc()
        write_json(out, {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]})
        raise SystemExit(1)


# ------------------------------------------------------------------ the runner

def todo(record, blocks=None, rerun=(), seeds=SEEDS):
    """The runs still to do, in order (seeds join once their grids are complete)."""
    done = set(record.name) - set(rerun)
    runs = programme() + seed_runs(record, seeds)
    return [r for r in runs if r.name not in done and (not blocks or r.block in blocks)]


def still_to_run(record, seeds=SEEDS):
    """How many runs the programme still lacks, counting the seeds of grids not yet complete:
    which configuration they repeat is not known yet, how many there will be is."""
    unknown_seeds = sum(select(record, blocks) is None for blocks in GRIDS.values()) * len(extra_seeds(seeds))
    return len(todo(record, seeds=seeds)) + unknown_seeds


def run_programme(blocks=None, rerun=(), commit=False, threads=None, seeds=SEEDS):
    """Run every missing run of `blocks` one after the other, each in its own process (its own
    peak memory, nothing leaking between runs), recording each result as it arrives."""
    try:  # a user error stops the programme before any run, instead of failing every run
        base = programme_base()
        check_prepared(config.parse(base))
        for run in todo(read_record(), blocks, rerun, seeds):
            config.parse(run.params(base))
    except UserError as e:
        raise SystemExit(f"error: {e}")
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    if threads:  # e.g. leave a core to tests: two processes on both cores slow each other 3-6x
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    while True:
        pending = todo(read_record(), blocks, rerun, seeds)
        if not pending:
            break
        run = pending[0]
        rerun = tuple(n for n in rerun if n != run.name)
        print(f"=== {run.name} ({run.block}): {json.dumps(run.overrides) if run.overrides else 'defaults'}; "
              f"{len(pending) - 1} more after it", flush=True)
        DETAILS.mkdir(parents=True, exist_ok=True)
        out = DETAILS / f".{run.name}.result.json"
        start = time.time()
        spec = json.dumps({"name": run.name, "block": run.block, "method": run.method, "overrides": run.overrides})
        proc = subprocess.run([sys.executable, "-m", "woof.programme", "_one", spec, str(out)], env=env)
        result = json.loads(out.read_text()) if out.exists() else {}
        out.unlink(missing_ok=True)
        if "row" in result:
            write_json(DETAILS / f"{run.name}.json", result["details"])
            row = result["row"]
        else:
            error = result.get("error") or f"the run's process exited with {proc.returncode}"
            row = {"name": run.name, "block": run.block, "method": run.method,
                   "overrides": json.dumps(run.overrides, sort_keys=True), "status": "failed",
                   "error": error, "git_rev": _git_rev(),
                   "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        write_row(row)
        status = (f"val {100 * row['val_top1']:.2f} %, test {100 * row['test_top1']:.2f} %"
                  if row["status"] == "ok" else f"FAILED: {row['error']}")
        print(f"=== {run.name}: {status} ({(time.time() - start) / 60:.1f} min)", flush=True)
        if commit:
            paths = [str(RECORD)] + ([str(DETAILS / f"{run.name}.json")] if row["status"] == "ok" else [])
            subprocess.run(["git", "add", *paths], check=True)
            subprocess.run(["git", "commit", "-q", "-m", f"Programme: {run.name} ({status})", "--", *paths],
                           check=False)


def adopt(metrics_dir="metrics", plots_dir="plots"):
    """Record the pipeline's own trainings (train_full, train_lora at params.yaml's values) as the
    programme runs with the same configuration, instead of training them again: full-lr5e-05 and
    lora-r8 under fp32 eager, fast-full and fast-lora under the throughput defaults. Their
    per-image predictions come from plots/predictions/."""
    from woof.data import load_classes
    pipeline, base = load_params(), programme_base()
    check_prepared(config.parse(pipeline))
    classes = load_classes(PREPARED / "classes.json")
    ev = read_json(Path(metrics_dir) / "evaluate.json")
    for method in ("full", "lora"):
        same = [r for r in programme() if r.method == method and r.params(base) == pipeline]
        if not same:
            print(f"not adopting train_{method}: no run of the programme has params.yaml's params")
            continue
        run, name = same[0], same[0].name
        train = read_json(Path(metrics_dir) / f"train_{method}.json")
        history = pd.read_csv(Path(plots_dir) / f"train_{method}.csv").to_dict("records")
        row = {"name": name, "block": run.block, "method": method,
               "overrides": json.dumps(run.overrides, sort_keys=True), "status": "ok", "error": "",
               "train_images": read_json(Path(metrics_dir) / "data.json")["train_images"],
               **{k: train.get(k) for k in ("train_minutes", "train_images_per_s", "trainable_params",
                                              "total_params", "peak_memory_mb", "precision", "hardware")},
               "epochs": train.get("epochs"), "git_rev": _git_rev() + " (dvc repro)",
               "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        row.update(split_columns(ev[method]))
        predictions = {split: pd.read_csv(Path(plots_dir) / "predictions" / f"{split}_{method}.csv").to_dict("records")
                       for split in ev[method]}
        DETAILS.mkdir(parents=True, exist_ok=True)
        write_json(DETAILS / f"{name}.json", {"name": name, "overrides": run.overrides, "history": history,
                                              **per_image(predictions, classes)})
        write_row(row)
        print(f"adopted {name} from the pipeline: val {100 * row['val_top1']:.2f} %, test {100 * row['test_top1']:.2f} %")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m woof.programme", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every run and its status")
    r = sub.add_parser("run", help="run what the record lacks, one at a time")
    r.add_argument("blocks", nargs="*", help=f"only these blocks: {' '.join(BLOCKS)}")
    r.add_argument("--rerun", nargs="+", default=[], metavar="NAME", help="run these again even if recorded")
    r.add_argument("--commit", action="store_true", help="git commit the record after every run")
    r.add_argument("--threads", type=int, help="torch threads per run (default: all cores)")
    r.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                   help="seeds of the val-best configurations (block seeds); 0 is the grid run")
    sub.add_parser("adopt", help="record the pipeline's train_full/train_lora as their programme runs")
    sub.add_parser("summary", help="selection, tables and figures from the record only")
    one = sub.add_parser("_one")  # internal: one run in a child process
    one.add_argument("spec")
    one.add_argument("out")
    args = ap.parse_args(argv)
    unknown = [b for b in getattr(args, "blocks", []) if b not in BLOCKS]
    if unknown:
        ap.error(f"unknown block(s) {unknown}: choose from {' '.join(BLOCKS)}")
    if args.cmd == "list":
        record = read_record()
        status = dict(zip(record.name, record.status))
        for run in programme() + seed_runs(record):
            print(f"{status.get(run.name, 'missing'):>8}  {run.block:>10}  {run.name}")
        print(f"{(record.status == 'ok').sum()} ok, {(record.status == 'failed').sum()} failed, "
              f"{still_to_run(record)} to run (counting the seeds of grids not yet complete)")
    elif args.cmd == "run":
        run_programme(args.blocks, args.rerun, args.commit, args.threads, tuple(args.seeds))
    elif args.cmd == "adopt":
        adopt()
    elif args.cmd == "summary":
        from woof import results
        results.main(RECORD, DETAILS)
    elif args.cmd == "_one":
        _one(args.spec, args.out)


if __name__ == "__main__":
    main()
