"""Sweeps and comparisons with DVC experiments.

    python -m woof.sweep queue [lora probe freeze scratch fraction backbone | all] [--dry-run] [--run -j 1]
    python -m woof.sweep wait               # until nothing is queued or running (--run already waits)
    python -m woof.sweep collect            # dvc exp show --csv -> metrics/sweep*.csv, plots/sweep*.png, sweep.md

`queue --run -j N` is complete on its own: it queues, starts N workers and waits for the queue.
The pull-request report is woof/pr_report.py.

Every variant is a `dvc exp run --queue -n NAME -S key=value ...`: DVC re-runs only the stages
whose params changed, so a LoRA grid point reuses the cached data and train_full stages. Results
are read back from `dvc exp show --csv` only; nothing is re-run to build a table or a figure.

DVC pitfalls handled here:
  * a queued experiment runs in a copy made from git: untracked files are not there (we warn
    about them; pass --copy-path to copy one, e.g. a local weights file), and `dvc` must be on
    the workers' PATH (we put this Python's bin folder first).
  * `dvc exp run --run-all` and several queue workers have hung or raced: we start the queue with
    `dvc queue start -j N` (default 1) and poll `dvc queue status`. Worker logs:
    .dvc/tmp/exps/celery/dvc-exp-worker-*.out, and per experiment `dvc queue logs NAME`
    (.dvc/tmp/exps/run/<rev>/<rev>.out).
  * a failed experiment shows up in `dvc exp show` with State "Failed" and "!" for its metrics;
    collect lists it (status column, sweep.md), it is never dropped silently.
"""
import argparse
import ast
import io
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

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
        return "'" + v + "'"  # regexes: quoted, so [ ] \ are not Hydra syntax
    if isinstance(v, float):  # 1.0 stays a float in params.yaml, not the int 1
        s = f"{v:g}"
        return s if any(c in s for c in ".en") else s + ".0"
    return str(v)


def grid(comparison, ranks=RANKS, lrs=LRS, freeze_blocks=FREEZE_BLOCKS, fractions=FRACTIONS,
         backbone=BACKBONE, backbone_targets=BACKBONE_TARGETS, backbone_weights=None):
    """[(experiment name, {param: value})] for one comparison."""
    if comparison == "lora":
        return [(f"lora-r{r}-lr{lr:g}", {"lora.rank": r, "lora.alpha": ALPHA_PER_RANK * r, "lora.lr": lr})
                for r in ranks for lr in lrs]
    if comparison == "probe":
        return [("probe", {"full.trainable": ["head"]})]
    if comparison == "freeze":
        return [(f"freeze-{k}", {"full.freeze_blocks": k}) for k in freeze_blocks]
    if comparison == "scratch":
        return [("scratch", {"full.pretrained": False})]
    if comparison == "fraction":
        return [(f"fraction-{f:g}", {"data.train_fraction": f}) for f in fractions]
    if comparison == "backbone":
        # weights=None: timm's own pretrained weights for that backbone (a local file otherwise).
        return [(f"backbone-{backbone}", {"model.name": backbone, "model.weights": backbone_weights,
                                          "lora.targets": backbone_targets})]
    raise ValueError(f"unknown comparison {comparison!r}; choose from {COMPARISONS}")


def queue_commands(comparisons, copy_paths=(), **grid_kwargs):
    """The `dvc exp run --queue` argument lists for the comparisons."""
    cmds = []
    for comparison in comparisons:
        for name, overrides in grid(comparison, **grid_kwargs):
            cmd = ["dvc", "exp", "run", "--queue", "-n", name]
            for path in copy_paths:
                cmd += ["-C", path]
            for key, v in overrides.items():
                cmd += ["-S", f"{key}={_value(v)}"]
            cmds.append(cmd)
    return cmds


def untracked_files(cwd=None):
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=cwd,
                         capture_output=True, text=True, check=True).stdout
    return [line[3:] for line in out.splitlines() if line.startswith("??")]


def queue(comparisons, dry_run=False, run=False, jobs=1, copy_paths=(), timeout_h=48, poll_s=10, cwd=None,
          **grid_kwargs):
    """Queue (and with run=True, run and wait for) the experiments of the comparisons."""
    cmds = queue_commands(comparisons, copy_paths, **grid_kwargs)
    if dry_run:
        for cmd in cmds:
            print(shlex.join(cmd))
        return cmds
    missing = [f for f in untracked_files(cwd) if f not in copy_paths]
    if missing:
        print("warning: queued experiments see only files tracked by git or DVC; untracked here: "
              + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
              + " (commit or `dvc add` them, or pass --copy-path)", file=sys.stderr)
    existing = set(parse_exp_show(dvc("exp", "show", "--csv", cwd=cwd))["name"].dropna())
    for cmd in cmds:
        name = cmd[cmd.index("-n") + 1]
        if name in existing:
            print(f"skip {name}: already an experiment of this commit (`dvc exp remove {name}` to redo)")
            continue
        print(shlex.join(cmd))
        dvc(*cmd[1:], cwd=cwd)
    if run:
        run_queue(jobs, timeout_h * 3600, poll_s, cwd=cwd)
    return cmds


def run_queue(jobs=1, timeout_s=48 * 3600, poll_s=10, cwd=None):
    """`dvc queue start -j jobs`, then wait until nothing is queued or running."""
    print(f"dvc queue start -j {jobs}")
    dvc("queue", "start", "-j", str(jobs), cwd=cwd)
    return wait(timeout_s, poll_s, cwd=cwd)


def wait(timeout_s=48 * 3600, poll_s=10, cwd=None):
    """Poll `dvc queue status` until no experiment is queued or running; return the last status."""
    print("waiting for the DVC queue (worker logs: .dvc/tmp/exps/celery/dvc-exp-worker-*.out; "
          "one experiment: `dvc queue logs NAME`)", flush=True)
    start = time.time()
    while True:
        status = dvc("queue", "status", cwd=cwd)
        states = [line.split()[-1] for line in status.splitlines()[1:]
                  if line.strip() and not line.startswith("Worker")]
        if not any(s in ("Queued", "Running") for s in states):
            break
        if time.time() - start > timeout_s:
            raise TimeoutError(f"queue still busy after {timeout_s} s:\n{status}")
        time.sleep(poll_s)
    print(status)
    return status


# ------------------------------------------------------------------ reading dvc exp show --csv

# column -> (file, key): DVC names a column by its key, prefixed with "file:" when another file,
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


def _cell(v):
    """'!' and '' are DVC's missing values; lists come as "['head']"; numbers as text."""
    if v is None or (isinstance(v, float) and pd.isna(v)) or v in ("", "!", "-"):
        return None
    if isinstance(v, str) and v[:1] == "[":
        try:
            return ",".join(map(str, ast.literal_eval(v)))
        except (ValueError, SyntaxError):
            return v
    try:
        return float(v) if any(c in v for c in ".eE") or v.lower() in ("nan", "inf") else int(v)
    except ValueError:
        return {"True": True, "False": False, "true": True, "false": False}.get(v, v)


def parse_exp_show(csv_text):
    """One row per baseline/experiment of `dvc exp show --csv` with the FIELDS columns.

    status: "baseline" (the commit), "workspace", "ok", "failed" (State Failed, or it ran but a
    metric we need is missing), "queued", "running"."""
    raw = pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)
    rows = []
    for r in raw.to_dict("records"):
        row = {"name": r.get("Experiment") or r["rev"], "rev": r["rev"], "typ": r["typ"],
               "state": r.get("State", "")}
        for field, (file, key) in FIELDS.items():
            col = f"{file}:{key}" if f"{file}:{key}" in r else key
            row[field] = _cell(r.get(col))
        if r["rev"] == "workspace":
            row["status"] = "workspace"
        elif r["typ"] == "baseline":
            row["status"] = "baseline"
        elif row["state"] in ("Queued", "Running"):
            row["status"] = row["state"].lower()
        elif row["state"] == "Failed":
            row["status"] = "failed"
        else:
            row["status"] = "ok"
        rows.append(row)
    df = pd.DataFrame(rows, columns=["name", "rev", "typ", "state", *FIELDS, "status"])
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


def collect(csv_text, metrics_dir="metrics", plots_dir="plots", summary="sweep.md"):
    """Write every table and figure from `dvc exp show --csv` text. Returns {comparison: table}."""
    df = parse_exp_show(csv_text)
    base = _baseline(df)
    df["comparison"] = [comparison_of(r, base) if r["status"] not in ("baseline", "workspace") else ""
                        for r in df.to_dict("records")]
    exps = df[~df.status.isin(["baseline", "workspace"])]
    zero_shot = _reference(df, base, "zero_shot_top1")
    tables, lines = {}, ["# Sweeps and comparisons", "",
                         f"From `dvc exp show --csv` (baseline {base.get('name', '?')}); "
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
    c = sub.add_parser("collect", help="tables and figures from `dvc exp show --csv`")
    c.add_argument("--csv", help="a saved `dvc exp show --csv` output instead of running it")
    c.add_argument("--all-commits", action="store_true", help="experiments of every commit, not just HEAD")
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
        wait(args.timeout_h * 3600)
    elif args.cmd == "collect":
        if args.csv:
            text = Path(args.csv).read_text()
        else:
            text = dvc("exp", "show", "--csv", "--precision", "6", *(["-A"] if args.all_commits else []))
        tables = collect(text, args.metrics_dir, args.plots_dir, args.summary)
        print(Path(args.summary).read_text())
        if not tables:
            print("no experiment found: queue some with `python -m woof.sweep queue`", file=sys.stderr)


if __name__ == "__main__":
    main()
