"""Sweeps and comparisons with DVC experiments.

    python -m woof.sweep queue [lora probe freeze scratch fraction backbone | all] [--dry-run] [--run -j 1]
    python -m woof.sweep wait               # until nothing is queued or running (--run already waits)
    python -m woof.sweep collect            # dvc.api.exp_show -> metrics/sweep*.csv, plots/sweep*.png, sweep.md

`queue --run -j N` is complete on its own: it queues, starts N workers and waits for the queue.
The pull-request report is woof/pr_report.py.

DVC builds the grids. A comparison is one `dvc exp run --queue -n NAME -S 'key=v1,v2,...'` call in
Hydra's sweep syntax: DVC queues one experiment per point of the product of the -S lists, and
re-runs only the stages whose params changed (a LoRA point reuses the cached data and train_full).
The LoRA grid is one call per rank, sweeping the learning rate: alpha must be 2r at every point
(scale alpha/r fixed, README "Protocol"), and a sweep is a product, so alpha cannot follow rank
within one call (see grid()).

Names. DVC names the experiments of a sweep queued with -n NAME NAME-1 ... NAME-N, in the order of
the product (Hydra's BasicSweeper: the last -S list varies fastest); a call without a sweep keeps
NAME. So: lora-r8-1 ... lora-r8-3 (the lrs in the order given), freeze-1 ..., fraction-1 ...,
probe, scratch, backbone-resnet18. The suffix is a position, not a value: the tables read every
param from DVC, never from a name. Re-queuing matches grid points by params, not names: a point
whose params an experiment of this commit already has (queued, running, done or failed) is skipped;
when only some points of a call are new, or DVC's names for them are taken, the new points are
queued one by one as NAME-<key><value> (e.g. lora-r8-lr0.01).

Results come from `dvc.api.exp_show()` (DVC 3.67; checked in its code and on a real queue):
  * one flat dict per row (the workspace, the baseline commit, each experiment), columns named as
    in `dvc exp show`: a key alone, or "file:key" when another file, params.yaml included, has the
    same key (see FIELDS);
  * numbers come as floats (ranks too); booleans, lists and null params as their text ("True",
    "['head']", "None"); "!" for a file DVC could not read; None where nothing is known (a queued
    experiment has its params, no metrics); State is "Queued", "Running", "Success" or "Failed"
    (None for baselines and once the queue has forgotten the task);
  * a failed or running experiment shows the metrics of the commit it started from (they are
    git-tracked files of that commit), not its own: collect blanks them and lists the run as
    failed/running, never as a result.

What DVC does not do, done here:
  * a queued experiment runs in a copy made from git: untracked files are not there (we warn
    about them; pass --copy-path to copy one, e.g. a local weights file), and `dvc` must be on
    the workers' PATH (we put this Python's bin folder first).
  * `dvc exp run --run-all` and several queue workers have hung or raced: we start the queue with
    `dvc queue start -j N` (default 1) and wait by reading exp_show, not `dvc queue status`, whose
    question to the workers can kill one (see wait()); workers that died anyway are started again.
    Worker logs: .dvc/tmp/exps/celery/dvc-exp-worker-*.out, per experiment `dvc queue logs NAME`.
  * failed experiments are listed (status column, sweep.md), never dropped silently.
"""
import argparse
import ast
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from woof.io import atomic_path, pyplot, save_png

RANKS = (1, 2, 4, 8, 16, 32)
LRS = (3e-4, 1e-3, 3e-3)
# alpha = ALPHA_PER_RANK * rank keeps LoRA's scale alpha/r fixed (2, as the default 16/8): with
# alpha fixed, a rank sweep would also be an effective learning-rate sweep.
ALPHA_PER_RANK = 2
FREEZE_BLOCKS = (2, 4, 6, 8, 10)
FRACTIONS = (0.1, 0.2, 0.5, 1.0)
BACKBONE, BACKBONE_TARGETS = "resnet18", r"layer\d\.\d\.conv[12]"
COMPARISONS = ("lora", "probe", "freeze", "scratch", "fraction", "backbone")


# ------------------------------------------------------------------ running dvc

def dvc_command():
    """The dvc next to this Python (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else "dvc"


def _env():
    # Queue workers spawn a bare `dvc`: it must resolve to this environment's.
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def dvc(*args, cwd=None, check=True):
    """Run dvc, return stdout."""
    proc = subprocess.run([dvc_command(), *args], cwd=cwd, env=_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def exp_show(cwd=None, num=1):
    """dvc.api.exp_show: the workspace, the last `num` commits and their experiments (see above)."""
    import dvc.api  # the Python API of the same dvc the workers run
    return dvc.api.exp_show(repo=str(cwd) if cwd else None, num=num)


# ------------------------------------------------------------------ the grids

def _value(v):
    """A params value in DVC's -S (Hydra override) syntax."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, str) and not v.replace("_", "").replace("-", "").isalnum():
        return "'" + v + "'"  # regexes: quoted, so [ ] \ , are not Hydra syntax
    return repr(v) if isinstance(v, float) else str(v)  # repr: 1.0 stays a float, 1/3 round-trips


def grid(comparison, ranks=RANKS, lrs=LRS, freeze_blocks=FREEZE_BLOCKS, fractions=FRACTIONS,
         backbone=BACKBONE, backbone_targets=BACKBONE_TARGETS, backbone_weights=None):
    """[(name, {param: (values...)})]: one `dvc exp run --queue` call each, a sweep where a param
    has several values."""
    if comparison == "lora":
        # One call per rank: DVC's sweep is a product, so `-S lora.rank=1,2 -S lora.alpha=2,4`
        # would also queue r=1 with alpha 4. Hydra cannot compute alpha from rank (interpolation
        # copies, no arithmetic) and lora.rslora changes the scale rule itself (alpha/sqrt(r)).
        return [(f"lora-r{r}", {"lora.rank": (r,), "lora.alpha": (ALPHA_PER_RANK * r,), "lora.lr": tuple(lrs)})
                for r in ranks]
    if comparison == "probe":
        return [("probe", {"full.trainable": (["head"],)})]
    if comparison == "freeze":
        return [("freeze", {"full.freeze_blocks": tuple(freeze_blocks)})]
    if comparison == "scratch":
        return [("scratch", {"full.pretrained": (False,)})]
    if comparison == "fraction":
        return [("fraction", {"data.train_fraction": tuple(fractions)})]
    if comparison == "backbone":
        # weights=None: timm's own pretrained weights for that backbone (a local file otherwise).
        return [(f"backbone-{backbone}", {"model.name": (backbone,), "model.weights": (backbone_weights,),
                                          "lora.targets": (backbone_targets,)})]
    raise ValueError(f"unknown comparison {comparison!r}; choose from {COMPARISONS}")


def points(overrides):
    """The experiments DVC makes of one call, in its order (itertools.product, as Hydra's sweeper)."""
    return [dict(zip(overrides, values)) for values in itertools.product(*overrides.values())]


def names(name, n):
    """DVC's names for the n experiments of a call queued with -n name."""
    return [name] if n == 1 else [f"{name}-{i}" for i in range(1, n + 1)]


def queue_command(name, overrides, copy_paths=()):
    """One `dvc exp run --queue` argument list; a param with several values is a Hydra sweep."""
    cmd = ["dvc", "exp", "run", "--queue", "-n", name]
    for path in copy_paths:
        cmd += ["-C", path]
    for key, values in overrides.items():
        cmd += ["-S", f"{key}={','.join(_value(v) for v in values)}"]
    return cmd


def queue_commands(comparisons, copy_paths=(), **grid_kwargs):
    """The `dvc exp run --queue` argument lists for the comparisons, one per grid() entry."""
    return [queue_command(name, overrides, copy_paths)
            for comparison in comparisons for name, overrides in grid(comparison, **grid_kwargs)]


def untracked_files(cwd=None):
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=cwd,
                         capture_output=True, text=True, check=True).stdout
    return [line[3:] for line in out.splitlines() if line.startswith("??")]


def _param_keys(cwd=None):
    """params.yaml's keys, dotted as DVC flattens them (lists are values)."""
    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return list(flat(yaml.safe_load((Path(cwd or ".") / "params.yaml").read_text()) or {}))


def plan(name, overrides, rows, param_keys, copy_paths=()):
    """The `dvc exp run --queue` argument lists for a grid() entry's points that no experiment in
    rows (exp_show) has yet: the entry's one sweep call when all its points are new and DVC's names
    for them are free, else one call per new point, named NAME-<key><value> (-2, -3 if taken).

    A point is the workspace's params (what a queued experiment starts from) with its overrides;
    an experiment has it when every param agrees, so a freeze run at the default LoRA params is
    not taken for the LoRA grid point with those params."""
    workspace = next((r for r in rows if r["rev"] == "workspace"), {})
    exps = [r for r in rows if r["typ"] != "baseline"]

    def params(row, point=None):
        return {k: _cell(point[k]) if point and k in point else _cell(_field(row, "params.yaml", k))
                for k in param_keys}

    have, taken = [params(r) for r in exps], {r["Experiment"] for r in exps}
    pts = points(overrides)
    new = [p for p in pts if params(workspace, p) not in have]
    if len(new) == len(pts) and not taken & set(names(name, len(pts))):
        return [queue_command(name, overrides, copy_paths)]
    swept = [k for k, values in overrides.items() if len(values) > 1]
    cmds = []
    for p in new:
        tag = name + "".join(f"-{k.split('.')[-1]}{_value(p[k])}" for k in swept)
        n, i = tag, 1
        while n in taken:
            i += 1
            n = f"{tag}-{i}"
        taken.add(n)
        cmds.append(queue_command(n, {k: (v,) for k, v in p.items()}, copy_paths))
    return cmds


def queue(comparisons, dry_run=False, run=False, jobs=1, copy_paths=(), timeout_h=48, poll_s=10, cwd=None,
          **grid_kwargs):
    """Queue (and with run=True, run and wait for) the experiments of the comparisons; return the
    dvc argument lists it ran (all of them with dry_run)."""
    if dry_run:
        cmds = queue_commands(comparisons, copy_paths, **grid_kwargs)
        for cmd in cmds:
            print(shlex.join(cmd))
        return cmds
    missing = [f for f in untracked_files(cwd) if f not in copy_paths]
    if missing:
        print("warning: queued experiments see only files tracked by git or DVC; untracked here: "
              + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
              + " (commit or `dvc add` them, or pass --copy-path)", file=sys.stderr)
    rows, keys, cmds = exp_show(cwd), _param_keys(cwd), []
    for name, overrides in (e for c in comparisons for e in grid(c, **grid_kwargs)):
        todo = plan(name, overrides, rows, keys, copy_paths)
        if not todo:
            print(f"skip {name}: every point is already an experiment of this commit "
                  "(`dvc exp remove NAME` to redo one)")
        cmds += todo
    for cmd in cmds:
        print(shlex.join(cmd))
        dvc(*cmd[1:], cwd=cwd)
    if run:
        run_queue(jobs, timeout_h * 3600, poll_s, cwd=cwd)
    return cmds


def run_queue(jobs=1, timeout_s=48 * 3600, poll_s=10, cwd=None):
    """`dvc queue start -j jobs`, then wait until nothing is queued or running."""
    print(f"dvc queue start -j {jobs}")
    dvc("queue", "start", "-j", str(jobs), cwd=cwd)
    return wait(timeout_s, poll_s, jobs=jobs, cwd=cwd)


def _workers_alive(cwd=None):
    """Whether a DVC queue worker process runs: DVC's process files (pid, returncode once it ended)."""
    for info in (Path(cwd or ".") / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json"):
        proc = json.loads(info.read_text() or "{}")
        if proc.get("pid") and proc.get("returncode") is None:
            try:
                os.kill(proc["pid"], 0)
                return True
            except ProcessLookupError:
                continue
            except PermissionError:
                return True
    return False


def wait(timeout_s=48 * 3600, poll_s=10, jobs=1, restarts=2, cwd=None):
    """Poll exp_show until none of this commit's experiments is Queued or Running; return its rows.

    Not `dvc queue status`: it asks the workers over Celery's broadcast channel, message files in
    DVC's filesystem broker, and a worker that reads one half-written dies ("Unrecoverable error:
    JSONDecodeError" in its log; seen with one worker on a loaded 2-core machine, the rest of the
    queue left Queued for good). exp_show only reads the queue's files. A worker can die all the
    same: when experiments are still queued and no worker process lives (twice in a row), the
    workers are started again, at most `restarts` times; a run shown Running without a worker is
    reported and not waited for."""
    print("waiting for the DVC queue (worker logs: .dvc/tmp/exps/celery/dvc-exp-worker-*.out; "
          "one experiment: `dvc queue logs NAME`)", flush=True)
    start, dead = time.time(), 0
    while True:
        rows = exp_show(cwd)
        busy = {r["Experiment"] or r["rev"]: r["State"] for r in rows if r["State"] in ("Queued", "Running")}
        dead = 0 if not busy or _workers_alive(cwd) else dead + 1
        if not busy:
            return rows
        if dead >= 2 and "Queued" not in busy.values():
            print(f"warning: {', '.join(busy)} shown Running, but no DVC queue worker is alive: it died "
                  "(see its log and `dvc queue logs NAME`)", file=sys.stderr)
            return rows
        if dead >= 2:
            if restarts <= 0:
                raise RuntimeError(f"DVC queue workers died with {len(busy)} experiment(s) left: {', '.join(busy)}")
            print(f"warning: no DVC queue worker alive with {len(busy)} experiment(s) left; dvc queue start -j {jobs}",
                  file=sys.stderr)
            dvc("queue", "start", "-j", str(jobs), cwd=cwd)
            restarts, dead = restarts - 1, 0
        if time.time() - start > timeout_s:
            raise TimeoutError(f"DVC queue still busy after {timeout_s} s: {busy}")
        time.sleep(poll_s)


# ------------------------------------------------------------------ reading dvc.api.exp_show

# field -> (file, key). DVC names a column by its key, prefixed with "file:" when another file,
# params.yaml included, has the same key. In this pipeline evaluate.json and compare.json share
# full.top1 etc., train_full.json and train_lora.json share trainable_params, and cost.json has a
# lora.rank like params.yaml: those columns read "metrics/evaluate.json:full.top1", ...
FIELDS = {
    "rank": ("params.yaml", "lora.rank"),
    "lr": ("params.yaml", "lora.lr"),
    "full_lr": ("params.yaml", "full.lr"),
    "targets": ("params.yaml", "lora.targets"),
    "full_trainable": ("params.yaml", "full.trainable"),
    "freeze_blocks": ("params.yaml", "full.freeze_blocks"),
    "pretrained": ("params.yaml", "full.pretrained"),
    "train_fraction": ("params.yaml", "data.train_fraction"),
    "model": ("params.yaml", "model.name"),
    "alpha": ("params.yaml", "lora.alpha"),
    "zero_shot_top1": ("metrics/evaluate.json", "zero_shot.val.top1"),
    "full_top1": ("metrics/evaluate.json", "full.val.top1"),
    "lora_top1": ("metrics/evaluate.json", "lora.val.top1"),
    "full_top5": ("metrics/evaluate.json", "full.val.top5"),
    "lora_top5": ("metrics/evaluate.json", "lora.val.top5"),
    "zero_shot_test_top1": ("metrics/evaluate.json", "zero_shot.test.top1"),
    "full_test_top1": ("metrics/evaluate.json", "full.test.top1"),
    "lora_test_top1": ("metrics/evaluate.json", "lora.test.top1"),
    "full_trainable_params": ("metrics/train_full.json", "trainable_params"),
    "lora_trainable_params": ("metrics/train_lora.json", "trainable_params"),
    "full_train_minutes": ("metrics/train_full.json", "train_minutes"),
    "lora_train_minutes": ("metrics/train_lora.json", "train_minutes"),
}
METRICS = [k for k, (f, _) in FIELDS.items() if f != "params.yaml"]
PARAMS = [k for k, (f, _) in FIELDS.items() if f == "params.yaml"]


def _field(row, file, key):
    """A cell of an exp_show row: "file:key" where DVC had to prefix the column, else "key"."""
    return row.get(f"{file}:{key}", row.get(key))


def _cell(v):
    """One value as Python: exp_show's text for booleans, lists and null back to values, "!"
    (unreadable file) to None; numbers as floats; a list as "a,b" (a table cell, hashable)."""
    if isinstance(v, str):
        if v in ("!", "None", ""):
            return None
        if v in ("True", "False"):
            return v == "True"
        if v[:1] != "[":
            return v
        try:
            v = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return v


def experiments(rows):
    """One row per exp_show row with the FIELDS columns and a status: "workspace", "baseline" (the
    commit), "ok", "queued", "running", "failed" (State Failed, or done without the metrics we need)."""
    out = []
    for r in rows:
        state = r.get("State") or ""
        row = {"name": r.get("Experiment") or r["rev"], "rev": r["rev"], "typ": r["typ"], "state": state,
               **{field: _cell(_field(r, file, key)) for field, (file, key) in FIELDS.items()}}
        if r["rev"] == "workspace":
            row["status"] = "workspace"
        elif r["typ"] == "baseline":
            row["status"] = "baseline"
        else:
            row["status"] = {"Queued": "queued", "Running": "running", "Failed": "failed"}.get(state, "ok")
        if row["status"] in ("running", "failed"):
            row.update(dict.fromkeys(METRICS))  # the parent commit's numbers, not this run's
        out.append(row)
    df = pd.DataFrame(out, columns=["name", "rev", "typ", "state", *FIELDS, "status"])
    has_metrics = df[["full_top1", "lora_top1"]].notna().any(axis=1)
    df.loc[(df.status == "ok") & ~has_metrics, "status"] = "failed"
    return df


def comparison_of(row, base):
    """Which comparison an experiment belongs to: its name prefix, else the params it changed."""
    prefix = str(row["name"]).split("-")[0]
    if prefix in COMPARISONS:
        return prefix
    changed = {k for k in PARAMS if row[k] != base.get(k) and not (pd.isna(row[k]) and pd.isna(base.get(k)))}
    for comparison, keys in (("backbone", {"model"}), ("scratch", {"pretrained"}),
                             ("fraction", {"train_fraction"}), ("probe", {"full_trainable"}),
                             ("freeze", {"freeze_blocks"}), ("lora", {"rank", "lr", "targets"})):
        if changed & keys:
            return comparison
    return "other"


def _baseline(df):
    base = df[df.status == "baseline"]
    return base.iloc[0].to_dict() if len(base) else {}


def _reference(df, base, field):
    """A reference accuracy: the baseline commit's, else the median over finished experiments."""
    if base.get(field) is not None and not pd.isna(base.get(field)):
        return float(base[field])
    values = df.loc[df.status == "ok", field].dropna()
    return float(values.median()) if len(values) else None


# What each comparison varies, and which trained models it affects.
X = {"probe": ("full_trainable", "full.trainable", ["full"]),
     "freeze": ("freeze_blocks", "full.freeze_blocks", ["full"]),
     "scratch": ("pretrained", "full.pretrained", ["full"]),
     "fraction": ("train_fraction", "data.train_fraction", ["full", "lora"]),
     "backbone": ("model", "model.name", ["full", "lora"])}
LABEL = {"full": "full fine-tuning", "lora": "LoRA"}


def lora_table(df):
    """metrics/sweep.csv: the rank x lr grid, failed points included."""
    d = df[df.comparison == "lora"]
    out = pd.DataFrame({"name": d.name, "status": d.status, "rank": d["rank"], "alpha": d.alpha, "lr": d.lr,
                        "trainable_params": d.lora_trainable_params, "top1": d.lora_top1,
                        "test_top1": d.lora_test_top1, "top5": d.lora_top5, "train_minutes": d.lora_train_minutes,
                        "full_top1": d.full_top1, "zero_shot_top1": d.zero_shot_top1, "rev": d.rev})
    out = out.sort_values(["lr", "rank"], na_position="last").reset_index(drop=True)
    # Selection is on val (top1); test_top1 of the chosen point is what gets reported.
    ok = out[out.status == "ok"].dropna(subset=["top1"])
    out["val_best"] = out.index == (ok.top1.idxmax() if len(ok) else -1)
    return out


def comparison_table(df, comparison, base):
    """Long table (one row per experiment and trained model) for a comparison, baseline first."""
    x, _, methods = X[comparison]
    d = df[df.comparison == comparison]
    if base:
        d = pd.concat([pd.DataFrame([{**base, "name": "baseline", "status": "baseline"}]), d])
    rows = []
    for r in d.to_dict("records"):
        for m in methods:
            rows.append({"name": r["name"], "status": r["status"], x: r[x], "method": m,
                         "top1": r[f"{m}_top1"], "test_top1": r.get(f"{m}_test_top1"),
                         "trainable_params": r[f"{m}_trainable_params"],
                         "train_minutes": r[f"{m}_train_minutes"], "rev": r["rev"]})
    return pd.DataFrame(rows)


def _plt():
    plt = pyplot()
    import seaborn as sns  # after pyplot(): seaborn imports pyplot, which must find Agg set
    return plt, sns


def plot_lora(table, full_top1, zero_shot_top1, path):
    """Accuracy against trainable parameters (log x), one line per learning rate."""
    plt, sns = _plt()
    d = table[table.status == "ok"].dropna(subset=["top1", "trainable_params"]).copy()
    d["top-1 (%)"] = 100 * d.top1
    d["lr"] = d.lr.map(lambda v: f"{v:g}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if len(d):
        sns.lineplot(d, x="trainable_params", y="top-1 (%)", hue="lr", marker="o", ax=ax)
        for r in d.drop_duplicates("rank").itertuples():  # label each rank once, under its first point
            ax.annotate(f"r={r.rank:g}", (r.trainable_params, 100 * r.top1),
                        textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8, color="gray")
    for value, label, style in ((full_top1, "full fine-tuning", "-"), (zero_shot_top1, "zero-shot", "--")):
        if value is not None:
            ax.axhline(100 * value, color="black" if style == "-" else "gray", ls=style, lw=1,
                       label=f"{label} ({100 * value:.1f} %)")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel="validation top-1 (%)",
           title="LoRA sweep: accuracy against trainable parameters")
    ax.legend(title="LoRA lr / reference", fontsize=9)
    failed = (table.status == "failed").sum()
    if failed:
        ax.text(0.99, 0.01, f"{failed} failed run(s) not plotted, see sweep.md", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=8, color="red")
    fig.tight_layout()
    save_png(fig, path)


def plot_comparison(table, comparison, zero_shot_top1, path):
    plt, sns = _plt()
    x, label, _ = X[comparison]
    d = table[table.status.isin(["ok", "baseline"])].dropna(subset=["top1"]).copy()
    d["top-1 (%)"] = 100 * d.top1
    d["method"] = d.method.map(LABEL)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    numeric = len(d) and pd.to_numeric(d[x], errors="coerce").notna().all() and comparison != "scratch"
    if numeric:
        d[x] = pd.to_numeric(d[x])
        sns.lineplot(d, x=x, y="top-1 (%)", hue="method", marker="o", ax=ax)
    elif len(d):
        d[x] = d[x].astype(str)
        sns.barplot(d, x=x, y="top-1 (%)", hue="method", ax=ax)
        for c in ax.containers:
            ax.bar_label(c, fmt="%.1f", fontsize=8)
    if zero_shot_top1 is not None:
        ax.axhline(100 * zero_shot_top1, color="gray", ls="--", lw=1, label=f"zero-shot ({100 * zero_shot_top1:.1f} %)")
    ax.set(xlabel=label, ylabel="validation top-1 (%)", title=f"Comparison: {label}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def _markdown(df):
    def fmt(v):
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"  # parameter counts (floats only because of missing values)
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return df.map(fmt).to_markdown(index=False, disable_numparse=True) + "\n"


def _rel(path, markdown_file):
    """Image links relative to the Markdown file, so they work wherever the folder is viewed."""
    return Path(os.path.relpath(Path(path).resolve(), Path(markdown_file).resolve().parent)).as_posix()


def collect(rows, metrics_dir="metrics", plots_dir="plots", summary="sweep.md"):
    """Write every table and figure from exp_show rows. Returns {comparison: table}."""
    df = experiments(rows)
    base = _baseline(df)
    df["comparison"] = [comparison_of(r, base) if r["status"] not in ("baseline", "workspace") else ""
                        for r in df.to_dict("records")]
    exps = df[~df.status.isin(["baseline", "workspace"])]
    zero_shot = _reference(df, base, "zero_shot_top1")
    tables, lines = {}, ["# Sweeps and comparisons", "",
                         f"From `dvc.api.exp_show()` (baseline {base.get('name', '?')}); "
                         "top1 is validation top-1 (where the val-best point is chosen), test_top1 the "
                         "clean test split's (reported, never chosen on); fractions.", ""]
    if (exps.comparison == "lora").any():
        t = lora_table(df)
        with atomic_path(Path(metrics_dir) / "sweep.csv") as tmp:
            t.to_csv(tmp, index=False)
        # train_full is the same for every LoRA point (DVC cached it): one reference line.
        plot_lora(t, _reference(df[df.comparison == "lora"], base, "full_top1"), zero_shot,
                  Path(plots_dir) / "sweep.png")
        tables["lora"] = t
        lines += ["## LoRA rank x learning rate", "", _markdown(t.drop(columns="rev")),
                  f"![LoRA sweep]({_rel(Path(plots_dir) / 'sweep.png', summary)})", ""]
    for comparison in X:
        if not (exps.comparison == comparison).any():
            continue
        t = comparison_table(df, comparison, base)
        with atomic_path(Path(metrics_dir) / f"sweep_{comparison}.csv") as tmp:
            t.to_csv(tmp, index=False)
        png = Path(plots_dir) / f"sweep_{comparison}.png"
        plot_comparison(t, comparison, zero_shot, png)
        tables[comparison] = t
        lines += [f"## {X[comparison][1]}", "", _markdown(t.drop(columns="rev")),
                  f"![{comparison}]({_rel(png, summary)})", ""]
    bad = exps[~exps.status.isin(["ok"])]
    lines += ["## Failed, queued or incomplete experiments", ""]
    if len(bad):
        lines += [f"- `{r.name}` ({r.rev}): {r.status}" + (f", state {r.state}" if r.state.lower() != r.status else "")
                  + f" - see `dvc queue logs {r.name}`" for r in bad.itertuples()]
        for r in bad.itertuples():
            print(f"warning: experiment {r.name} ({r.rev}) is {r.status}; see `dvc queue logs {r.name}`",
                  file=sys.stderr)
    else:
        lines += ["None."]
    other = exps[exps.comparison == "other"]
    if len(other):
        lines += ["", "Not part of a comparison: " + ", ".join(f"`{n}`" for n in other.name)]
    with atomic_path(summary) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return tables


# ------------------------------------------------------------------ command line

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m woof.sweep", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queue", help="queue (and run) DVC experiments for the comparisons")
    q.add_argument("comparisons", nargs="*", default=["lora"], help=f"{' '.join(COMPARISONS)} or all")
    q.add_argument("--ranks", type=int, nargs="+", default=RANKS)
    q.add_argument("--lrs", type=float, nargs="+", default=LRS)
    q.add_argument("--freeze-blocks", type=int, nargs="+", default=FREEZE_BLOCKS)
    q.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS)
    q.add_argument("--backbone", default=BACKBONE)
    q.add_argument("--backbone-targets", default=BACKBONE_TARGETS)
    q.add_argument("--backbone-weights", default=None, help="local weights file (default: timm download)")
    q.add_argument("--copy-path", action="append", default=[], help="untracked path the experiments need")
    q.add_argument("--dry-run", action="store_true", help="print the dvc commands only")
    q.add_argument("--run", action="store_true", help="then start the workers (`dvc queue start`) and wait")
    q.add_argument("-j", "--jobs", type=int, default=1, help="queue workers (more than 1 has raced in DVC)")
    w = sub.add_parser("wait", help="wait until the DVC queue has nothing queued or running")
    w.add_argument("--timeout-h", type=float, default=48)
    w.add_argument("-j", "--jobs", type=int, default=1, help="workers to start again if they all died")
    c = sub.add_parser("collect", help="tables and figures from dvc.api.exp_show")
    c.add_argument("--num", type=int, default=1, help="experiments of the last NUM commits (-1: all)")
    c.add_argument("--metrics-dir", default="metrics")
    c.add_argument("--plots-dir", default="plots")
    c.add_argument("--summary", default="sweep.md")
    args = ap.parse_args(argv)

    if args.cmd == "queue":
        comparisons = list(COMPARISONS) if args.comparisons == ["all"] else args.comparisons
        queue(comparisons, dry_run=args.dry_run, run=args.run, jobs=args.jobs, copy_paths=args.copy_path,
              ranks=args.ranks, lrs=args.lrs, freeze_blocks=args.freeze_blocks, fractions=args.fractions,
              backbone=args.backbone, backbone_targets=args.backbone_targets,
              backbone_weights=args.backbone_weights)
    elif args.cmd == "wait":
        wait(args.timeout_h * 3600, jobs=args.jobs)
    elif args.cmd == "collect":
        tables = collect(exp_show(num=args.num), args.metrics_dir, args.plots_dir, args.summary)
        print(Path(args.summary).read_text())
        if not tables:
            print("no experiment found: queue some with `python -m woof.sweep queue`", file=sys.stderr)


if __name__ == "__main__":
    main()
