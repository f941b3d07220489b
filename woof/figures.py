"""Every figure of the compare stage, drawn from the numbers woof.compare computed: the pipeline's
three models (plots/compare_*.png) and the programme's record (plots/programme/*.png). Both are
committed (`cache: false`) so that the paper rebuilds from a clone without training."""
from pathlib import Path

import pandas as pd

from woof.errors import reading
from woof.io import atomic_path, pyplot, read_live, save_figure

plt = pyplot()  # Agg before seaborn or pyplot draws anything
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from woof.compare import fraction_points, freeze_points, lora_runs  # noqa: E402
from woof.labels import SPLIT_NAMES, label  # noqa: E402
from woof.record import FAMILIES, best  # noqa: E402



# ---------------------------------------------------------------- the pipeline's three models

def plot_accuracy(df, path):
    """Top-1 per method on val and on the headline split, with 95 % Wilson intervals."""
    rows = []
    for r in df.itertuples():
        rows.append(("validation", r.method, r.val_top1, r.val_top1_lo, r.val_top1_hi))
        if r.split != "val":
            rows.append((SPLIT_NAMES[r.split], r.method, r.top1, r.top1_lo, r.top1_hi))
    d = pd.DataFrame(rows, columns=["split", "method", "acc", "lo", "hi"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    splits = list(dict.fromkeys(d.split))
    width = 0.8 / len(splits)
    for i, (split, part) in enumerate(d.groupby("split", sort=False)):
        x = [list(df.method).index(m) + (i - (len(splits) - 1) / 2) * width for m in part.method]
        yerr = [100 * (part.acc - part.lo), 100 * (part.hi - part.acc)]
        bars = ax.bar(x, 100 * part.acc, width, yerr=yerr, capsize=4, label=split)
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=6)
    ax.set_xticks(range(len(df)), [label(m, True) for m in df.method])
    lo = 100 * d.lo.min()
    ax.set(ylim=(max(0, lo - 8), 100.5), ylabel="top-1 (%), 95 % CI",
           title="ImageWoof top-1 per method and split")
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_params(df, path):
    trained = df[df.trainable_params > 0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(x=trained.trainable_params, y=100 * trained.top1, hue=trained.method.map(lambda m: label(m, True)),
                    s=120, ax=ax, legend=False)
    for r in trained.itertuples():
        text = f"{label(r.method, True)}\n{100 * r.top1:.1f} %, {r.trainable_params:,.0f} params"
        ax.annotate(text, (r.trainable_params, 100 * r.top1),
                    textcoords="offset points", xytext=(8, -4), fontsize=9)
    zs = 100 * df.loc[df.method == "zero_shot", "top1"].iloc[0]
    ax.axhline(zs, color="gray", ls="--", lw=1, label=f"zero-shot (0 trainable): {zs:.1f} %")
    ax.set_xscale("log")
    lo, hi = trained.trainable_params.min(), trained.trainable_params.max()
    ax.set_xlim(lo / 3, hi * 30)  # room for the labels right of the points
    ys = list(100 * trained.top1) + [zs]
    pad = max(max(ys) - min(ys), 1.0) * 0.15
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.set(xlabel="trainable parameters (log scale)", ylabel=f"{SPLIT_NAMES[df.split.iloc[0]]} top-1 (%)",
           title="Accuracy against trainable parameters")
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def load_curves(live_root="dvclive"):
    """Both trainings' per-epoch curves, from dvclive (their one writer)."""
    return pd.concat([read_live(Path(live_root) / f"train_{m}").assign(method=label(m, True))
                      for m in ("full", "lora")], ignore_index=True)


def plot_curves(curves, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, what, title, unit in ((axes[0], "loss", "Loss", "cross-entropy loss"),
                                  (axes[1], "acc", "Accuracy", "accuracy (%)")):
        d = curves.melt(id_vars=["epoch", "method"], value_vars=[f"train_{what}", f"val_{what}"],
                        var_name="split", value_name="v")
        d["split"] = d.split.str.split("_").str[0]
        if what == "acc":
            d["v"] = 100 * d["v"]
        sns.lineplot(d, x="epoch", y="v", hue="method", style="split", markers=True, ax=ax,
                     legend=ax is axes[1])
        ax.set(xlabel="epoch", ylabel=unit, title=f"{title} per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.suptitle("Training curves per method (solid: train, dashed: validation)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_per_class(per_class, path, split="val"):
    """per_class: the columns of plots/per_class.csv (split, class, method, accuracy as a fraction)."""
    per_class = per_class[per_class.split == split]
    d = per_class.assign(accuracy=100 * per_class.accuracy,
                         method=per_class.method.map(lambda m: label(m, True)))
    fig, ax = plt.subplots(figsize=(9, 0.2 * d.method.nunique() * d["class"].nunique() + 1.5))
    sns.barplot(d, y="class", x="accuracy", hue="method", ax=ax, palette="muted")
    for c in ax.containers:
        ax.bar_label(c, fmt="%.0f", fontsize=7, padding=2)
    ax.set(xlim=(0, 106), xlabel=f"{SPLIT_NAMES[split]} accuracy (%)", ylabel="",
           title=f"Per-class {SPLIT_NAMES[split]} accuracy ({len(d) // max(1, d.method.nunique())} classes)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False, title=None)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- the programme

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
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = df[df.status == "ok"]
    pretrained = ok[ok.block.isin([b for f, blocks in FAMILIES.items() if f != "scratch" for b in blocks])]
    bottom = 100 * pretrained.test_top1_lo.min() - 1 if len(pretrained) else 0
    below = []
    for family in FAMILIES:
        d = ok[ok.block.isin(FAMILIES[family])]
        low = d[100 * d.test_top1 < bottom]
        below += [f"{label(family)}: {100 * v:.1f} %" for v in low.test_top1]
        d = d[100 * d.test_top1 >= bottom]
        if len(d):
            _errorbar(ax, d.trainable_params, d, label(family), fmt="o", ms=5)
        b = best(df, family) if family in ("full", "lora") else None
        if b is not None and 100 * b["test_top1"] >= bottom:
            ax.annotate(f"val-best {label(family)}", (b["trainable_params"], 100 * b["test_top1"]), fontsize=7,
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
    save_figure(fig, path)


def plot_rank_lr(df, path):
    """LoRA val and test top-1 against rank, one line per lr; full fine-tuning's lr curve beside."""
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
    save_figure(fig, path)


def plot_fractions(df, refs, path):
    """Test top-1 against the share of training images, for full, LoRA and from scratch."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    run = df.set_index("name")
    for family, points in fraction_points(df, refs).groupby("family", sort=False):
        _errorbar(ax, 100 * points.fraction, run.loc[points["name"]], label(family), fmt="o-", ms=5)
    _zero_shot(ax, df)
    ax.set_xscale("log")
    ax.set_xticks([10, 20, 50, 100], ["10 %", "20 %", "50 %", "100 %"])
    ax.set(xlabel="share of the training images (log scale)", ylabel="clean test top-1 (%), 95 % CI",
           title="How much data does pretraining save?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_freeze(df, refs, blocks, path):
    """Test top-1 against the number of frozen blocks: 0 is full fine-tuning, all is the probe."""
    points = freeze_points(df, refs, blocks)
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
    save_figure(fig, path)


def plot_cost(df, path):
    """Training minutes and peak memory against test top-1, every trained run."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, col, xlabel in ((axes[0], "train_minutes", "training minutes"),
                           (axes[1], "peak_memory_mb", "peak memory (MB, RSS on CPU)")):
        for family in FAMILIES:
            d = df[df.block.isin(FAMILIES[family]) & (df.status == "ok")]
            if len(d):
                ax.scatter(d[col], 100 * d.test_top1, label=label(family), s=25)
        ax.set(xlabel=xlabel, ylabel="clean test top-1 (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle("What each run cost")
    fig.tight_layout()
    save_figure(fig, path)


def _ok(df, blocks=None):
    d = df[(df.status == "ok") & (df.block != "baseline")]
    return d if blocks is None else d[d.block.isin(blocks)]


def pipeline_figures(df, plots_dir="plots", out_dir="plots", live_root="dvclive"):
    """The four compare_*.png figures; return their paths by kind."""
    out = {k: Path(out_dir) / f"compare_{k}.png" for k in ("accuracy", "params", "curves", "per_class")}
    plot_accuracy(df, out["accuracy"])
    plot_params(df, out["params"])
    plot_curves(load_curves(live_root), out["curves"])
    with reading(Path(plots_dir) / "per_class.csv", "run the evaluate stage (dvc repro evaluate)"):
        per_class = pd.read_csv(Path(plots_dir) / "per_class.csv")
    plot_per_class(per_class, out["per_class"], df.split.iloc[0])
    return out


def programme_figures(df, summary, out_dir="plots/programme"):
    """The programme's figures, each once the record has enough for it (a partial programme skips
    a figure that would show one point)."""
    refs, blocks = summary["references"], summary["blocks"]
    figures = {"frontier": (lambda p: plot_frontier(df, p), len(_ok(df)) >= 2),
               "rank_lr": (lambda p: plot_rank_lr(df, p),
                           len(_ok(df, FAMILIES["lora"])) >= 2 or len(_ok(df, FAMILIES["full"])) >= 2),
               "fractions": (lambda p: plot_fractions(df, refs, p), len(_ok(df, ["fraction"])) >= 1),
               "freeze": (lambda p: plot_freeze(df, refs, blocks, p), len(_ok(df, ["freeze", "probe"])) >= 1),
               "cost": (lambda p: plot_cost(df, p), len(_ok(df)) >= 3)}
    with atomic_path(out_dir, is_dir=True) as tmp, sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        for name, (draw, enough) in figures.items():
            if enough:
                draw(tmp / f"{name}.png")
