"""The experiment programme: every configuration the paper compares, run one at a time on the
prepared data, each result kept in a committed record so that it survives the machine.

    python -m woof.programme list                      # done, failed and missing runs
    python -m woof.programme run [BLOCK|NAME ...] [--rerun NAME ...] [--commit] [--threads N]
    python -m woof.programme adopt                     # record the pipeline's own two trainings

The grid and the record are defined in woof/record.py; the compare stage (`dvc repro compare`)
turns the record into the answer. A recorded run is never re-run unless named in --rerun; a
failed run stays recorded with its error.

Why not DVC experiments: their refs and the run-cache live in .git and .dvc/cache, which do not
survive a replaced machine, and a DVC experiment retrains every stage its params touch (two
trainings per data fraction). Each run here is one `woof.train.train_method` call on the cached
tensors of `dvc repro`'s preprocess stage, the same path the train stages take.

Selection follows the protocol: for each method the configuration with the best *val* top-1 is
chosen, and its *test* numbers are reported; test chooses nothing.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from woof import config, corrupt, lora
from woof.data import load_classes, load_eval_splits, load_split, preprocess, sha256_file, stratified_subset
from woof.errors import InputError, ParamError, UserError
from woof.evaluate import evaluate_models, resolve_precision
from woof.io import PREDICTIONS, load_params, machine, read_json, read_live, write_json
from woof.models import create_model, data_config, pretrained_weights, zero_shot_model
from woof.record import (BLOCKS, DETAILS, RECORD, SEEDS, Run, accuracy_columns, all_runs, base_params, programme,
                         read_record, still_to_run, todo, write_row)
from woof.train import parameter_counts, train_method

PREPARED = Path("data/prepared")


def programme_base():
    """params.yaml as the programme's runs start from it (woof.record.PINNED applied)."""
    return base_params(load_params())


# ------------------------------------------------------------------ one run (in its own process)

CODE = ["woof", "stages", "params.yaml"]  # what a run's numbers depend on, besides the data


def _git_rev():
    """The commit of the code a run ran: the last one that touched CODE (the record's own commits
    on top of it change nothing), +dirty when CODE has uncommitted edits."""
    try:
        rev = subprocess.run(["git", "log", "-1", "--format=%h", "--", *CODE], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *CODE],
                               capture_output=True, text=True).stdout.strip()
        return (rev or "unknown") + ("+dirty" if dirty else "")
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


def prepared_dir(cfg, base):
    """The prepared tensors a run reads: dvc repro's (data/prepared) when its model and image size
    are params.yaml's; else its own, decoded once from data/raw with that model's data config into
    data/programme/<model>-<size> (the same files in the same order: runs stay pairable)."""
    if (cfg.model.name, cfg.data.image_size) == (base.model.name, base.data.image_size):
        return PREPARED
    out = Path("data/programme") / f"{cfg.model.name}-{cfg.data.image_size}"
    if not (out / "files.json").exists():
        model = create_model(cfg.model.name, img_size=cfg.data.image_size, pretrained=False)
        preprocess("data/raw", out, data_config(model, cfg.data.image_size), seed=cfg.data.seed, split=cfg.data.split)
    return out


def run_one(run, device="cpu"):
    """Train (unless zero-shot) and evaluate one run on val and test -> (row, details)."""
    base = programme_base()
    check_prepared(config.parse(base))  # the programme's own fractions are overrides of the full set
    cfg = config.parse(run.params(base))
    prepared = prepared_dir(cfg, config.parse(base))
    classes = load_classes(prepared / "classes.json")
    splits = load_eval_splits(prepared)
    size = cfg.data.image_size
    precision = resolve_precision(cfg.train.precision, device)  # what train_method runs at, too
    history, metrics, n_train = [], {}, 0
    if run.method == "zero_shot":
        model = zero_shot_model(cfg.model, classes, size)
        metrics = {**parameter_counts(model), "trainable_params": 0, "train_minutes": 0.0}
    else:
        images, labels = load_split(prepared / "train.safetensors")
        fraction = cfg.data.train_fraction
        if fraction < 1:  # the same stratified subset preprocess would have taken
            keep = torch.tensor(stratified_subset(labels, fraction, cfg.data.seed))
            images, labels = images[keep], labels[keep]
        n_train, val = len(labels), splits["val"][:2]
        ckpt = Path("checkpoints/programme") / run.name  # an interrupted run resumes from its last epoch
        model, history, metrics = train_method(run.method, cfg, classes, (images, labels), val, ckpt,
                                               device, prepared / "train.safetensors")
        shutil.rmtree(ckpt, ignore_errors=True)
        if run.method == "lora":
            model = lora.merge_lora(model.cpu())
    r, corrupted_sha = cfg.robustness, None
    if "test" in splits:  # ImageWoof-C: the test images' corrupted copies, recorded like val and test
        splits["corrupted"] = corrupt.corrupted_split(*splits["test"], r.corruptions, r.severities, r.seed)
        corrupted_sha = corrupt.fingerprint(splits["corrupted"][0])
    ev, _, predictions, _ = evaluate_models({run.method: model.cpu()}, splits, [c["name"] for c in classes],
                                            size, cfg.evaluate.batch_size, precision, cfg.train.compile)
    row = {"name": run.name, "block": run.block, "method": run.method,
           "overrides": json.dumps(run.overrides, sort_keys=True), "status": "ok", "error": "",
           "train_images": n_train, "train_minutes": metrics.get("train_minutes"),
           "train_images_per_s": metrics.get("train_images_per_s"),
           "trainable_params": metrics.get("trainable_params"), "total_params": metrics.get("total_params"),
           "peak_memory_mb": metrics.get("peak_memory_mb"), "epochs": len(history),
           "precision": precision, **provenance(cfg), "corrupted_sha": corrupted_sha, "git_rev": _git_rev(),
           "hardware": machine(device),
           "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    details = {"name": run.name, "overrides": run.overrides, "history": history,
               **per_image({s: rows[run.method] for s, rows in predictions.items()}, classes)}
    row.update(accuracy_columns(details["correct"], {s: m["top5"] for s, m in ev[run.method].items()}))
    return row, details


def provenance(cfg):
    """Which bytes a run learnt from: the archive (metrics/data.json, written by preprocess) and
    the pretrained weights, so that compare pairs only numbers from the same data."""
    weights = pretrained_weights(cfg.model)
    return {"archive_sha256": read_json("metrics/data.json").get("archive_sha256", "unknown"),
            "weights_sha256": sha256_file(weights) if weights else "timm hub default"}


def per_image(predictions, classes):
    """{split: rows (file, actual, predicted)} -> the details' per-image fields, in
    data/prepared/files.json order: each prediction's class index, a 0/1 string of which images
    are right (for paired tests), and a digest of the file list (to refuse pairing other images)."""
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

def run_programme(blocks=None, rerun=(), commit=False, threads=None, seeds=SEEDS):
    """Run every missing run of `blocks` one after the other, each in its own process (its own
    peak memory, nothing leaking between runs), recording each result as it arrives."""
    try:  # a user error stops the programme before any run, instead of failing every run
        base = programme_base()
        cfg = config.parse(base)
        check_prepared(cfg)
        corrupt.check(cfg.robustness.corruptions, cfg.robustness.severities)
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


def adopt(metrics_dir="metrics", predictions_dir=PREDICTIONS, live_root="dvclive"):
    """Record the pipeline's own trainings (train_full, train_lora at params.yaml's values) as the
    programme runs with the same configuration, instead of training them again: full-lr5e-05 and
    lora-r8 under fp32 eager, fast-full and fast-lora under the throughput defaults. Their
    per-image predictions are the evaluate stage's (woof.io.PREDICTIONS)."""
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
        history = read_live(Path(live_root) / f"train_{method}").to_dict("records")
        row = {"name": name, "block": run.block, "method": method,
               "overrides": json.dumps(run.overrides, sort_keys=True), "status": "ok", "error": "",
               "train_images": read_json(Path(metrics_dir) / "data.json")["train_images"],
               **{k: train.get(k) for k in ("train_minutes", "train_images_per_s", "trainable_params",
                                              "total_params", "peak_memory_mb", "precision", "hardware")},
               "epochs": train.get("epochs"), **provenance(config.parse(pipeline)),
               "git_rev": _git_rev() + " (dvc repro)",
               "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        predictions = {split: pd.read_csv(Path(predictions_dir) / f"{split}_{method}.csv").to_dict("records")
                       for split in ev[method]}
        details = {"name": name, "overrides": run.overrides, "history": history, **per_image(predictions, classes)}
        row.update(accuracy_columns(details["correct"], {s: m["top5"] for s, m in ev[method].items()}))
        DETAILS.mkdir(parents=True, exist_ok=True)
        write_json(DETAILS / f"{name}.json", details)
        write_row(row)
        print(f"adopted {name} from the pipeline: val {100 * row['val_top1']:.2f} %, test {100 * row['test_top1']:.2f} %")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m woof.programme", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every run and its status")
    r = sub.add_parser("run", help="run what the record lacks, one at a time")
    r.add_argument("blocks", nargs="*", metavar="BLOCK|NAME",
                   help=f"only these blocks ({' '.join(BLOCKS)}) or runs (names as `list` prints them)")
    r.add_argument("--rerun", nargs="+", default=[], metavar="NAME", help="run these again even if recorded")
    r.add_argument("--commit", action="store_true", help="git commit the record after every run")
    r.add_argument("--threads", type=int, help="torch threads per run (default: all cores)")
    r.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                   help="seeds of the val-best configurations (block seeds); 0 is the grid run")
    sub.add_parser("adopt", help="record the pipeline's train_full/train_lora as their programme runs")
    one = sub.add_parser("_one")  # internal: one run in a child process
    one.add_argument("spec")
    one.add_argument("out")
    args = ap.parse_args(argv)
    asked = getattr(args, "blocks", [])
    unknown = [b for b in asked if b not in set(BLOCKS) | {r.name for r in all_runs(read_record())}] if asked else []
    if unknown:
        ap.error(f"unknown block(s) or run(s) {unknown}: choose from {' '.join(BLOCKS)} "
                 "or a run name that `python -m woof.programme list` prints")
    if args.cmd == "list":
        record = read_record()
        status = dict(zip(record.name, record.status))
        for run in all_runs(record):
            print(f"{status.get(run.name, 'missing'):>8}  {run.block:>10}  {run.name}")
        print(f"{(record.status == 'ok').sum()} ok, {(record.status == 'failed').sum()} failed, "
              f"{still_to_run(record)} to run (counting the seeds of grids not yet complete)")
    elif args.cmd == "run":
        run_programme(args.blocks, args.rerun, args.commit, args.threads, tuple(args.seeds))
    elif args.cmd == "adopt":
        adopt()
    elif args.cmd == "_one":
        _one(args.spec, args.out)


if __name__ == "__main__":
    main()
