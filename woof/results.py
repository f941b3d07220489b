"""The experiment programme's answer, from its record only (metrics/experiments.csv and
metrics/experiments/<name>.json); nothing is re-run.

Writes metrics/programme.json (the val-best configuration of each method with its test numbers,
the paired test between the best LoRA and the best full fine-tuning, seeds as mean ± std, the
rank at which LoRA stops improving), metrics/programme.md (every run, best per method marked; in
git, for GitHub) and the figures under plots/programme/ (DVC-cached). Selection is on val; test
is only reported.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from woof.io import atomic_path, pyplot, read_json, save_png, write_json
from woof.stats import compare_paired, mcnemar

FAMILIES = {  # what a method is, for the figures and the selection: the blocks its runs are in
    "full": ("full-lr",), "lora": ("lora-rank", "lora-lr"), "probe": ("probe",),
    "freeze": ("freeze",), "scratch": ("scratch",)}
# Each family's reference run on every training image: params.yaml's full and LoRA configurations
# (full is also the freezing curve's k = 0: the freeze runs share its lr) and the from-scratch run;
# the 100 % points of the fraction curves.
DEFAULTS = {"full": "full-lr5e-05", "lora": "lora-r8", "scratch": "scratch"}
LABELS = {"zero_shot": "zero-shot", "full": "full fine-tuning", "lora": "LoRA", "probe": "linear probe",
          "freeze": "frozen first k blocks", "scratch": "from scratch"}


def load(record_path, details_dir):
    """The record with its overrides parsed, and each successful run's per-image correctness."""
    from woof.programme import read_record
    df = read_record(record_path)
    df["overrides"] = [json.loads(o) if isinstance(o, str) and o else {} for o in df.overrides]
    correct = {}
    for name in df.loc[df.status == "ok", "name"]:
        path = Path(details_dir) / f"{name}.json"
        if path.exists():
            d = read_json(path)
            correct[name] = {s: (np.frombuffer(c.encode(), np.uint8) == ord("1"), d["files_sha"][s])
                             for s, c in d.get("correct", {}).items()}
    return df, correct


def best(df, family):
    """The val-best successful run of a family (ties: fewer trainable parameters)."""
    from woof.programme import val_best
    return val_best(df[df.block.isin(FAMILIES[family])])


def paired(correct, a, b, split="test"):
    """compare_paired of two recorded runs on the same images, or None when either is missing."""
    if a not in correct or b not in correct or split not in correct[a] or split not in correct[b]:
        return None
    (ca, fa), (cb, fb) = correct[a][split], correct[b][split]
    if fa != fb:
        raise ValueError(f"runs {a} and {b} were evaluated on different {split} images")
    return compare_paired(ca, cb)


def seeds(df, name):
    """Mean and std over seed 0 (the grid run `name`) and its recorded -seed<k> reruns."""
    d = df[((df.name == name) | df.name.str.startswith(f"{name}-seed")) & (df.status == "ok")]
    out = {"runs": list(d.name), "n": len(d)}
    for col in ("val_top1", "test_top1"):
        out[col] = {"mean": float(d[col].mean()), "std": float(d[col].std(ddof=1)) if len(d) > 1 else None}
    return out


def lora_runs(df, blocks=("lora-rank",)):
    """The successful LoRA runs of `blocks`, with the rank and lr they ran at as columns."""
    d = df[df.block.isin(blocks) & (df.status == "ok")].copy()
    d["rank"] = [int(o["lora.rank"]) for o in d.overrides]
    d["lr"] = [o.get("lora.lr") for o in d.overrides]
    return d


def saturation_rank(df, correct, split="val"):
    """The smallest LoRA rank (at the default lr, fixed alpha/r) whose val top-1 is not
    significantly below the best rank's (McNemar, 5 %): where more rank stops helping."""
    d = lora_runs(df)
    if not len(d):
        return None
    top = d.sort_values("val_top1", ascending=False).iloc[0]
    for r in d.sort_values("rank").itertuples():
        if r.name == top["name"]:
            return int(r.rank)
        t = mcnemar(correct[r.name][split][0], correct[top["name"]][split][0]) \
            if r.name in correct and top["name"] in correct else None
        if t is not None and t["p_value"] >= 0.05:
            return int(r.rank)
    return int(top["rank"])


def summarize(df, correct):
    from woof.programme import still_to_run
    zs = df[(df.name == "zero-shot") & (df.status == "ok")]
    out = {"runs": {"ok": int((df.status == "ok").sum()), "failed": int((df.status == "failed").sum()),
                    "missing": still_to_run(df)},
           "zero_shot": _numbers(zs.iloc[0].to_dict()) if len(zs) else None, "best": {}}
    for family in FAMILIES:
        b = best(df, family)
        if b is not None:
            out["best"][family] = {"name": b["name"], "overrides": b["overrides"], **_numbers(b),
                                   "seeds": seeds(df, b["name"]),
                                   # against the untrained head, on the same images
                                   "vs_zero_shot": {s: paired(correct, b["name"], "zero-shot", s)
                                                    for s in ("test", "val")}}
    bf, bl = out["best"].get("full"), out["best"].get("lora")
    out["lora_vs_full"] = paired(correct, bl["name"], bf["name"]) if bf and bl else None
    out["lora_saturation_rank"] = saturation_rank(df, correct)
    ranks = lora_runs(df).sort_values("rank")
    out["lora_ranks"] = [{"rank": int(r), "name": n, "val_top1": float(v), "test_top1": float(t)}
                         for r, n, v, t in zip(ranks["rank"], ranks.name, ranks.val_top1, ranks.test_top1)]
    out["throughput_defaults"] = throughput_defaults(df, correct)
    run = df.set_index("name")
    full = DEFAULTS["full"]
    out["freezing"] = [{"frozen_blocks": k, "name": n, **_numbers(run.loc[n]),
                        "vs_full": None if n == full else {s: paired(correct, n, full, s) for s in ("test", "val")}}
                       for k, n in freeze_points(df)]
    out["fractions"] = [{"family": f, "fraction": x, "name": n, **_numbers(run.loc[n]),
                         "vs_all_images": None if n == DEFAULTS[f] else paired(correct, n, DEFAULTS[f])}
                        for f, x, n in fraction_points(df).itertuples(index=False)]
    return out


def freeze_points(df, blocks=12):
    """(frozen blocks, run) of the freezing curve's successful runs: 0 is full fine-tuning at the
    default lr, which the freeze runs share; `blocks` (all of them) is the val-best linear probe."""
    ok = df[df.status == "ok"]
    points = [(0, DEFAULTS["full"])]
    points += [(o["full.freeze_blocks"], n) for n, o, b in zip(ok.name, ok.overrides, ok.block) if b == "freeze"]
    probe = best(df, "probe")
    if probe is not None:
        points.append((blocks, probe["name"]))
    return sorted((k, n) for k, n in points if n in set(ok.name))


def fraction_points(df):
    """The data-fraction curves' successful runs as (family, share of the training images, run);
    a family's 100 % point is its default configuration."""
    ok = df[df.status == "ok"]
    rows = []
    for family, whole in DEFAULTS.items():
        d = ok[(ok.name == whole) | ok.name.str.fullmatch(rf"fraction[\d.]+-{family}")]
        rows += [(family, o.get("data.train_fraction", 1.0), n) for n, o in zip(d.name, d.overrides)]
    return pd.DataFrame(rows, columns=["family", "fraction", "name"]).sort_values(["family", "fraction"])


# The precision block's runs against the fp32 eager runs with otherwise the same params.
THROUGHPUT_PAIRS = {"full": ("fast-full", DEFAULTS["full"]), "lora": ("fast-lora", DEFAULTS["lora"])}


def throughput_defaults(df, correct):
    """What train.precision=auto + train.compile=true cost in accuracy and gain in time, per
    method: paired differences (fast - fp32 eager) on val and test, and the minutes' ratio."""
    ok = df[df.status == "ok"].set_index("name")
    out = {}
    for method, (fast, ref) in THROUGHPUT_PAIRS.items():
        if fast in ok.index and ref in ok.index:
            out[method] = {"fast": fast, "reference": ref, "precision": ok.loc[fast, "precision"],
                           "speedup": float(ok.loc[ref, "train_minutes"] / ok.loc[fast, "train_minutes"]),
                           **{split: paired(correct, fast, ref, split) for split in ("val", "test")}}
    return out


def _numbers(row):
    keys = ("val_top1", "val_top1_lo", "val_top1_hi", "test_top1", "test_top1_lo", "test_top1_hi",
            "test_top5", "train_minutes", "train_images_per_s", "trainable_params", "peak_memory_mb")
    return {k: (None if pd.isna(row.get(k)) else float(row[k])) for k in keys}


# ------------------------------------------------------------------ tables and figures

def runs_table(df, summary):
    """Every run as Markdown (DataFrame.to_markdown), the val-best of each method marked."""
    chosen = {v["name"] for v in summary["best"].values()}

    def fmt(values, spec, scale=1):
        return ["" if pd.isna(v) else format(scale * v, spec) for v in values]

    t = pd.DataFrame({
        "run": [f"**{n}** (best {LABELS[f]})" if n in chosen else n
                for n, f in zip(df.name, [_family(b) for b in df.block])],
        "changed params": [", ".join(f"{k}={v}" for k, v in o.items()) or "defaults" for o in df.overrides],
        "status": [s if s == "ok" else f"{s}: {e}" for s, e in zip(df.status, df.error.fillna(""))],
        "val top-1 (%)": fmt(df.val_top1, ".2f", 100), "test top-1 (%)": fmt(df.test_top1, ".2f", 100),
        "test 95 % CI": [f"{100 * lo:.1f}-{100 * hi:.1f}" if not pd.isna(lo) else ""
                         for lo, hi in zip(df.test_top1_lo, df.test_top1_hi)],
        "trainable params": fmt(df.trainable_params, ",.0f"), "minutes": fmt(df.train_minutes, ".1f"),
        "img/s": fmt(df.train_images_per_s, ".0f"), "peak MB": fmt(df.peak_memory_mb, ",.0f")})
    lines = [t.to_markdown(index=False, disable_numparse=True,
                           colalign=["left"] * 3 + ["right"] * (len(t.columns) - 3))]
    seeded = [(f, v["seeds"]) for f, v in summary["best"].items() if v["seeds"]["n"] > 1]
    if seeded:
        lines += ["", "Seeds of the val-best configurations (mean ± std over seeds):", ""]
        lines += [f"- {LABELS[f]} ({s['n']} seeds, {', '.join(s['runs'])}): val "
                  f"{_mean_std(s['val_top1'])}, test {_mean_std(s['test_top1'])}" for f, s in seeded]
    return "\n".join(lines) + "\n"


def _mean_std(m):
    return f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f} %" if m["std"] is not None else f"{100 * m['mean']:.2f} %"


def _family(block):
    return next((f for f, blocks in FAMILIES.items() if block in blocks),
                "zero_shot" if block == "baseline" else block)


def _plt():
    plt = pyplot()
    import seaborn as sns  # after pyplot(): Agg first
    sns.set_theme(style="whitegrid", context="paper")
    return plt


def _errorbar(ax, x, rows, label, **kw):
    y = 100 * rows.test_top1
    yerr = [y - 100 * rows.test_top1_lo, 100 * rows.test_top1_hi - y]
    ax.errorbar(x, y, yerr=yerr, capsize=3, label=label, **kw)


def _zero_shot(ax, df):
    zs = df[(df.name == "zero-shot") & (df.status == "ok")]
    if len(zs):
        ax.axhline(100 * zs.test_top1.iloc[0], color="gray", ls="--", lw=1,
                   label=f"zero-shot ({100 * zs.test_top1.iloc[0]:.1f} %)")


def plot_frontier(df, path):
    """Test top-1 (95 % CI) against trainable parameters: the cost/accuracy frontier. The axis
    spans the pretrained methods; a run far below it (from scratch) is named in the corner."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = df[df.status == "ok"]
    pretrained = ok[ok.block.isin([b for f, blocks in FAMILIES.items() if f != "scratch" for b in blocks])]
    bottom = 100 * pretrained.test_top1_lo.min() - 1 if len(pretrained) else 0
    below = []
    for family in FAMILIES:
        d = ok[ok.block.isin(FAMILIES[family])]
        low = d[100 * d.test_top1 < bottom]
        below += [f"{LABELS[family]}: {100 * v:.1f} %" for v in low.test_top1]
        d = d[100 * d.test_top1 >= bottom]
        if len(d):
            _errorbar(ax, d.trainable_params, d, LABELS[family], fmt="o", ms=5)
        b = best(df, family) if family in ("full", "lora") else None
        if b is not None and 100 * b["test_top1"] >= bottom:
            ax.annotate(f"val-best {LABELS[family]}", (b["trainable_params"], 100 * b["test_top1"]), fontsize=7,
                        textcoords="offset points", xytext=(-10, 14 if family == "full" else -18), ha="right",
                        arrowprops=dict(arrowstyle="-", color="gray", lw=0.5))
    _zero_shot(ax, df)
    if len(pretrained):
        ax.set_ylim(bottom=bottom)
    if below:
        ax.text(0.01, 0.98, "below the axis: " + ", ".join(below), transform=ax.transAxes, ha="left", va="top",
                fontsize=7, color="gray")
    ax.set_xscale("log")
    ax.set(xlabel="trainable parameters (log scale)", ylabel="clean test top-1 (%), 95 % CI",
           title="Accuracy against trainable parameters (every run, full training set)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_rank_lr(df, path):
    """LoRA val and test top-1 against rank, one line per lr; full fine-tuning's lr curve beside."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    d = lora_runs(df, FAMILIES["lora"])
    if len(d):
        for lr, part in d.groupby("lr", sort=True):
            part = part.sort_values("rank")
            name = f"lr {lr:g}"
            line, = a.plot(part["rank"], 100 * part.val_top1, "o-", label=f"{name}, val")
            a.plot(part["rank"], 100 * part.test_top1, "s--", color=line.get_color(), label=f"{name}, test")
        a.set_xscale("log", base=2)
    a.set(xlabel="LoRA rank r (alpha = 2r)", ylabel="top-1 (%)", title="LoRA: rank and learning rate")
    a.legend(fontsize=7, ncol=2)
    f = df[(df.block == "full-lr") & (df.status == "ok")].copy()
    if len(f):
        f["lr"] = [o["full.lr"] for o in f.overrides]
        f = f.sort_values("lr")
        b.plot(f.lr, 100 * f.val_top1, "o-", label="val")
        b.plot(f.lr, 100 * f.test_top1, "s--", label="test")
        b.set_xscale("log")
        b.set_xticks(list(f.lr), [f"{v:g}" for v in f.lr])
        b.minorticks_off()
    b.set(xlabel="learning rate (log scale)", ylabel="top-1 (%)", title="Full fine-tuning: learning rate")
    b.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_fractions(df, path):
    """Test top-1 against the share of training images, for full, LoRA and from scratch."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    run = df.set_index("name")
    for family, points in fraction_points(df).groupby("family", sort=False):
        _errorbar(ax, 100 * points.fraction, run.loc[points["name"]], LABELS[family], fmt="o-", ms=5)
    _zero_shot(ax, df)
    ax.set_xscale("log")
    ax.set_xticks([10, 20, 50, 100], ["10 %", "20 %", "50 %", "100 %"])
    ax.set(xlabel="share of the training images (log scale)", ylabel="clean test top-1 (%), 95 % CI",
           title="How much data does pretraining save?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_freeze(df, path, blocks=12):
    """Test top-1 against the number of frozen blocks: 0 is full fine-tuning, all is the probe."""
    plt = _plt()
    points = freeze_points(df, blocks)
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ks, sub = [k for k, _ in points], df.set_index("name").loc[[n for _, n in points]]
        _errorbar(ax, ks, sub, "test (95 % CI)", fmt="o-")
        ax.plot(ks, 100 * sub.val_top1, "s--", label="val")
    _zero_shot(ax, df)
    ax.set(xlabel=f"frozen blocks (0: full fine-tuning, {blocks}: linear probe)", ylabel="top-1 (%)",
           title="Partial freezing")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_cost(df, path):
    """Training minutes and peak memory against test top-1, every trained run."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, label in ((axes[0], "train_minutes", "training minutes"),
                           (axes[1], "peak_memory_mb", "peak memory (MB, RSS on CPU)")):
        for family in FAMILIES:
            d = df[df.block.isin(FAMILIES[family]) & (df.status == "ok")]
            if len(d):
                ax.scatter(d[col], 100 * d.test_top1, label=LABELS[family], s=25)
        ax.set(xlabel=label, ylabel="clean test top-1 (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle("What each run cost")
    fig.tight_layout()
    save_png(fig, path)


def _ok(df, blocks=None):
    d = df[(df.status == "ok") & (df.block != "baseline")]
    return d if blocks is None else d[d.block.isin(blocks)]


# name -> (draw, whether the record has enough for it yet: a partial programme skips a figure
# that would show one point)
FIGURES = {"frontier": (plot_frontier, lambda df: len(_ok(df)) >= 2),
           "rank_lr": (plot_rank_lr, lambda df: len(_ok(df, FAMILIES["lora"])) >= 2 or len(_ok(df, ["full-lr"])) >= 2),
           "fractions": (plot_fractions, lambda df: len(_ok(df, ["fraction"])) >= 1),
           "freeze": (plot_freeze, lambda df: len(_ok(df, ["freeze", "probe"])) >= 1),
           "cost": (plot_cost, lambda df: len(_ok(df)) >= 3)}


def main(record_path="metrics/experiments.csv", details_dir="metrics/experiments", out_dir="plots/programme",
         summary_path="metrics/programme.json", table_path="metrics/programme.md"):
    """Everything from the record; an absent record gives an empty summary, not an error."""
    out_dir = Path(out_dir)
    if not Path(record_path).exists():
        write_json(summary_path, {"runs": {"ok": 0, "failed": 0}, "note": f"no record at {record_path}"})
        with atomic_path(table_path) as tmp:
            tmp.write_text(f"No experiment record ({record_path}): run `make programme`.\n")
        with atomic_path(out_dir, is_dir=True):
            pass  # an empty figure folder: nothing to draw
        print(f"no record at {record_path}: run `make programme`")
        return None
    df, correct = load(record_path, details_dir)
    summary = summarize(df, correct)
    with atomic_path(out_dir, is_dir=True) as tmp:
        for name, (plot, enough) in FIGURES.items():
            if enough(df):
                plot(df, tmp / f"{name}.png")
    table = runs_table(df, summary)
    with atomic_path(table_path) as tmp:
        tmp.write_text(table)
    write_json(summary_path, summary)
    print(table)
    return summary
