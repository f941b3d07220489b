"""The compare stage's logic: one table of every method's accuracy and cost, the paired tests,
the figures, and a report.md whose discussion is generated from those numbers only.

Inputs: metrics/evaluate.json, metrics/train_{full,lora}.json and plots/train_{full,lora}.csv,
plots/per_class.csv are required; plots/predictions/ (paired tests), metrics/cost.json,
metrics/attention.json and metrics/data.json are used when present. The headline split is test
when data.split made one (nothing was trained or chosen on it), else val. Accuracies are
fractions in [0, 1] in every input and in JSON; text and figures show percent.
"""
import math
from pathlib import Path

import pandas as pd

from woof.io import pyplot, read_json, save_png, write_json

plt = pyplot()  # Agg before seaborn or pyplot draws anything
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LABELS = {"zero_shot": "Zero-shot", "full": "Full fine-tuning", "lora": "LoRA"}
SPLIT_NAMES = {"test": "clean test", "val": "validation"}
TIE_POINTS = 1.0  # |top-1 difference| in points below which we call two methods equivalent
COLUMNS = ["method", "split", "top1", "top1_lo", "top1_hi", "top5", "loss", "val_top1",
           "train_minutes", "train_images_per_s",
           "trainable_params", "total_params", "trainable_pct", "peak_memory_mb", "checkpoint_mb"]
NAN = float("nan")


def _exists(path):
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first (dvc repro)")
    return Path(path)


def _need(d, key, path):
    if key not in d:
        raise KeyError(f"{path} has no {key!r}")
    return d[key]


def _row(method, ev, ev_path, split, train=None, train_path=None, checkpoint_key="model_mb"):
    """One method's row: accuracies on the headline split (test when there is one) and on val."""
    head, val = _need(ev, split, ev_path), _need(ev, "val", ev_path)
    row = dict(method=method, split=split, top1=_need(head, "top1", ev_path),
               top1_lo=head.get("top1_ci", [NAN, NAN])[0], top1_hi=head.get("top1_ci", [NAN, NAN])[1],
               top5=head.get("top5", NAN), loss=head.get("loss", NAN), n=head.get("n", NAN),
               val_top1=val["top1"], val_top1_lo=val.get("top1_ci", [NAN, NAN])[0],
               val_top1_hi=val.get("top1_ci", [NAN, NAN])[1], val_n=val.get("n", NAN))
    if train is None:  # zero-shot: nothing trained, nothing saved
        row.update(train_minutes=0.0, train_images_per_s=NAN, trainable_params=0,
                   peak_memory_mb=NAN, peak_memory_kind=None, checkpoint_mb=NAN)
        return row
    row.update(train_minutes=_need(train, "train_minutes", train_path),
               train_images_per_s=train.get("train_images_per_s", NAN),
               trainable_params=_need(train, "trainable_params", train_path),
               total_params=_need(train, "total_params", train_path),
               peak_memory_mb=train.get("peak_memory_mb", NAN),
               # "rss" (CPU: the whole process, cached dataset included) or "cuda_allocated"
               peak_memory_kind=train.get("peak_memory_kind"),
               checkpoint_mb=_need(train, checkpoint_key, train_path))
    return row


def headline_split(ev):
    """test when the data has a clean test split, else val (data.split=official)."""
    return "test" if all("test" in v for v in ev.values() if isinstance(v, dict)) else "val"


def collect(metrics_dir="metrics", plots_dir="plots"):
    """One row per method present (zero_shot, full, lora) as a DataFrame."""
    m = Path(metrics_dir)
    ev_path = m / "evaluate.json"
    ev = read_json(ev_path)
    split = headline_split(ev)
    full, lora = read_json(m / "train_full.json"), read_json(m / "train_lora.json")
    for name in ("train_full.csv", "train_lora.csv", "per_class.csv"):  # fail before writing anything
        _exists(Path(plots_dir) / name)
    rows = [_row("zero_shot", _need(ev, "zero_shot", ev_path), ev_path, split)]
    rows.append(_row("full", _need(ev, "full", ev_path), ev_path, split, full, m / "train_full.json"))
    # LoRA's checkpoint is its adapter: the frozen backbone is shared with every other task.
    rows.append(_row("lora", _need(ev, "lora", ev_path), ev_path, split, lora, m / "train_lora.json",
                     "adapter_mb"))
    df = pd.DataFrame(rows)
    # The zero-shot model is the same architecture, its ImageNet head cut to the task's classes.
    full_total = df.loc[df.method == "full", "total_params"].iloc[0]
    df["total_params"] = df["total_params"].fillna(full_total).astype("int64")
    df["trainable_pct"] = 100.0 * df["trainable_params"] / df["total_params"]
    cost_path = m / "cost.json"
    if cost_path.exists():
        cost = read_json(cost_path)
        for key in ("train_flops", "inference_flops"):
            df[key] = [cost.get(meth, {}).get(key, NAN) for meth in df.method]
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


PAIRS = (("lora", "full"), ("full", "zero_shot"), ("lora", "zero_shot"))


def paired_tests(predictions_dir, splits=("val", "test")):
    """{split: {"a_vs_b": woof.stats.compare_paired(a, b)}} from the per-image predictions the
    evaluate stage wrote ({split}_{model}.csv), matched by file name."""
    from woof.stats import compare_paired
    out = {}
    for split in splits:
        paths = {m: Path(predictions_dir) / f"{split}_{m}.csv" for m in ("zero_shot", "full", "lora")}
        if not all(p.exists() for p in paths.values()):
            continue
        correct = {}
        for m, p in paths.items():
            d = pd.read_csv(p).set_index("file")
            correct[m] = d.actual == d.predicted
        files = correct["full"].index
        for m, c in correct.items():
            if not c.index.equals(files):
                raise ValueError(f"{paths[m]} lists other images than {paths['full']}: rerun evaluate")
        out[split] = {f"{a}_vs_{b}": compare_paired(correct[a].to_numpy(), correct[b].to_numpy())
                      for a, b in PAIRS}
    return out


def _fmt(x, spec):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown_table(df):
    """The results table in Markdown: accuracies in %, parameters with thousands separators."""
    split = df.split.iloc[0]
    cols = [("Method", lambda r: LABELS.get(r.method, r.method)),
            (f"{split.capitalize()} top-1 (%)", lambda r: _fmt(100 * r.top1, ".2f")),
            ("95 % CI", lambda r: f"{_fmt(100 * r.top1_lo, '.1f')}-{_fmt(100 * r.top1_hi, '.1f')}"),
            (f"{split.capitalize()} top-5 (%)", lambda r: _fmt(100 * r.top5, ".2f")),
            (f"{split.capitalize()} loss", lambda r: _fmt(r.loss, ".3f"))]
    if split != "val":
        cols.append(("Val top-1 (%)", lambda r: _fmt(100 * r.val_top1, ".2f")))
    cols += [
("Train (min)", lambda r: _fmt(r.train_minutes, ".1f")),
            ("Train (img/s)", lambda r: _fmt(r.train_images_per_s, ".1f")),
            ("Trainable params", lambda r: _fmt(int(r.trainable_params), ",")),
            ("Total params", lambda r: _fmt(int(r.total_params), ",")),
            ("Trainable (%)", lambda r: _fmt(r.trainable_pct, ".2f")),
            ("Peak memory (MB)", lambda r: _fmt(r.peak_memory_mb, ".0f")),
            ("Checkpoint (MB)", lambda r: _fmt(r.checkpoint_mb, ".2f"))]
    if "train_flops" in df:
        cols += [("Train GFLOPs/step", lambda r: _fmt(r.train_flops / 1e9, ".1f")),
                 ("Inference GFLOPs", lambda r: _fmt(r.inference_flops / 1e9, ".2f"))]
    table = pd.DataFrame([[f(r) for _, f in cols] for r in df.itertuples()], columns=[c for c, _ in cols])
    return table.to_markdown(index=False, disable_numparse=True,
                             colalign=["left"] + ["right"] * (len(cols) - 1)) + "\n"


def _by_method(df):
    return {r["method"]: r for r in df.to_dict("records")}


def _clean(x):
    if isinstance(x, float):  # JSON has no NaN; 6 decimals keep `dvc metrics diff` readable
        return None if math.isnan(x) else round(x, 6)
    return x.item() if hasattr(x, "item") else x  # numpy scalars


def headline(df):
    """A few deltas that `dvc metrics diff` should show first (top-1 deltas as fractions)."""
    r = _by_method(df)
    full, lora, zs = r["full"], r["lora"], r["zero_shot"]
    return {"lora_minus_full_top1": lora["top1"] - full["top1"],
            "full_minus_zero_shot_top1": full["top1"] - zs["top1"],
            "lora_minus_zero_shot_top1": lora["top1"] - zs["top1"],
            "lora_trainable_pct": lora["trainable_pct"],
            "lora_speedup": (full["train_minutes"] / lora["train_minutes"]) if lora["train_minutes"] else NAN,
            "lora_checkpoint_ratio": lora["checkpoint_mb"] / full["checkpoint_mb"]}


def write_compare_json(df, path="metrics/compare.json", paired=None):
    """Per-method rows, the headline deltas and the paired tests ({split: {"a_vs_b": ...}})."""
    out = {m: {k: _clean(v) for k, v in row.items() if k not in ("method", "peak_memory_kind")}
           for m, row in _by_method(df).items()}
    out.update({k: _clean(v) for k, v in headline(df).items()})
    out["paired"] = {split: {pair: {k: [_clean(x) for x in v] if isinstance(v, list) else _clean(v)
                                    for k, v in t.items()} for pair, t in tests.items()}
                     for split, tests in (paired or {}).items()}
    write_json(path, out)
    return out


# ---------------------------------------------------------------- figures

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
    ax.set_xticks(range(len(df)), [LABELS.get(m, m) for m in df.method])
    lo = 100 * d.lo.min()
    ax.set(ylim=(max(0, lo - 8), 100.5), ylabel="top-1 (%), 95 % CI",
           title="ImageWoof top-1 per method and split")
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def plot_params(df, path):
    trained = df[df.trainable_params > 0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(x=trained.trainable_params, y=100 * trained.top1, hue=trained.method.map(LABELS),
                    s=120, ax=ax, legend=False)
    for r in trained.itertuples():
        label = f"{LABELS.get(r.method, r.method)}\n{100 * r.top1:.1f} %, {r.trainable_params:,.0f} params"
        ax.annotate(label, (r.trainable_params, 100 * r.top1),
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
    save_png(fig, path)


def load_curves(plots_dir="plots"):
    return pd.concat([pd.read_csv(_exists(Path(plots_dir) / f"train_{m}.csv")).assign(method=LABELS[m])
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
    save_png(fig, path)


def plot_per_class(per_class, path, split="val"):
    """per_class: the columns of plots/per_class.csv (split, class, method, accuracy as a fraction)."""
    per_class = per_class[per_class.split == split]
    d = per_class.assign(accuracy=100 * per_class.accuracy,
                         method=per_class.method.map(lambda m: LABELS.get(m, m)))
    fig, ax = plt.subplots(figsize=(9, 0.2 * d.method.nunique() * d["class"].nunique() + 1.5))
    sns.barplot(d, y="class", x="accuracy", hue="method", ax=ax, palette="muted")
    for c in ax.containers:
        ax.bar_label(c, fmt="%.0f", fontsize=7, padding=2)
    ax.set(xlim=(0, 106), xlabel=f"{SPLIT_NAMES[split]} accuracy (%)", ylabel="",
           title=f"Per-class {SPLIT_NAMES[split]} accuracy ({len(d) // max(1, d.method.nunique())} classes)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False, title=None)
    fig.tight_layout()
    save_png(fig, path)


def make_figures(df, plots_dir="plots", out_dir="plots"):
    """Write the four compare_*.png figures; return their paths by kind."""
    out = {k: Path(out_dir) / f"compare_{k}.png" for k in ("accuracy", "params", "curves", "per_class")}
    plot_accuracy(df, out["accuracy"])
    plot_params(df, out["params"])
    plot_curves(load_curves(plots_dir), out["curves"])
    plot_per_class(pd.read_csv(_exists(Path(plots_dir) / "per_class.csv")), out["per_class"],
                   df.split.iloc[0])
    return out


# ---------------------------------------------------------------- report

def _pts(x):
    return f"{100 * abs(x):.1f} point{'' if round(100 * abs(x), 1) == 1 else 's'}"


def _p(p):
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def paired_sentences(name_a, name_b, t, split_name):
    """What a paired comparison (woof.stats.compare_paired) says, in two sentences."""
    lo, hi = t["difference_ci"]
    first = (f"On the {t['n']:,} {split_name} images they disagree on {t['a_only'] + t['b_only']:,}: only "
             f"{name_a} is right on {t['a_only']:,}, only {name_b} on {t['b_only']:,} (difference "
             f"{100 * t['difference']:+.1f} points, paired 95 % bootstrap CI {100 * lo:+.1f} to {100 * hi:+.1f}).")
    if t["significant"]:
        better = name_a if t["difference"] > 0 else name_b
        second = (f"McNemar's exact test gives {_p(t['p_value'])}: the difference is significant at the "
                  f"5 % level, {better} is better on these images.")
    else:
        second = (f"McNemar's exact test gives {_p(t['p_value'])}: not significant at the 5 % level, so these "
                  "images cannot tell the two apart.")
    return [first, second]


def discussion(df, paired=None, tie_points=TIE_POINTS):
    """Three paragraphs (accuracy, cost, when to use LoRA), each sentence conditional on the numbers.
    paired: {"a_vs_b": woof.stats.compare_paired} on the headline split (compare.json "paired")."""
    r = _by_method(df)
    full, lora, zs = r["full"], r["lora"], r["zero_shot"]
    split_name = SPLIT_NAMES[df.split.iloc[0]]
    d = lora["top1"] - full["top1"]
    acc = f"{100 * lora['top1']:.2f} % vs {100 * full['top1']:.2f} % {split_name} top-1"
    if d == 0:
        verdict = f"LoRA and full fine-tuning reach the same top-1 ({acc})."
    elif abs(100 * d) <= tie_points:
        ahead = "LoRA" if d > 0 else "full fine-tuning"
        verdict = f"LoRA matches full fine-tuning within {tie_points:g} point ({acc}; {ahead} ahead by {_pts(d)})."
    else:
        verdict = f"{'LoRA' if d > 0 else 'Full fine-tuning'} wins by {_pts(d)} ({acc})."
    para1, noisy = [verdict], False
    if paired and "lora_vs_full" in paired:
        para1 += paired_sentences("LoRA", "full fine-tuning", paired["lora_vs_full"], split_name)
        noisy = not paired["lora_vs_full"]["significant"]
    base = []
    for m in ("full", "lora"):
        g = r[m]["top1"] - zs["top1"]
        where = "above" if g > 0 else "below" if g < 0 else "level with"
        t = (paired or {}).get(f"{m}_vs_zero_shot")
        sig = "" if t is None else f" ({_p(t['p_value'])}, {'significant' if t['significant'] else 'not significant'})"
        base.append(f"{LABELS[m] if m == 'lora' else LABELS[m].lower()} is {_pts(g)} {where}{sig}")
    para1.append("Against the zero-shot baseline (the pretrained ImageNet head restricted to "
                 f"the task's classes, {100 * zs['top1']:.2f} %): " + "; ".join(base) + ".")

    cost = [f"LoRA trains {lora['trainable_pct']:.2f} % of the parameters "
            f"({int(lora['trainable_params']):,} of {int(lora['total_params']):,}) "
            f"against {full['trainable_pct']:.0f} % for full fine-tuning."]
    tl, tf = lora["train_minutes"], full["train_minutes"]
    faster = bool(tl and tf and tf / tl >= 1.05)  # 5 %: below that, call the times equal
    if tl and tf:
        cost.append(f"It trained in {tl:.1f} min against {tf:.1f} min, "
                    + (f"{tf / tl:.2f}x faster." if faster else
                       f"{tl / tf:.2f}x slower." if tl / tf >= 1.05 else "about the same time."))
    cost += _memory(full, lora)
    cl, cf = lora["checkpoint_mb"], full["checkpoint_mb"]
    smaller = cl < cf
    cost.append(f"The LoRA adapter takes {cl:.2f} MB on disk against {cf:.2f} MB for the full model "
                f"({cf / cl:.0f}x smaller)." if smaller else
                f"The LoRA adapter takes {cl:.2f} MB, not smaller than the {cf:.2f} MB full model.")

    # With a paired test, "ahead" and "behind" mean significantly so; without one, beyond the tie band.
    known = bool(paired and "lora_vs_full" in paired)
    ahead = (not noisy and d > 0) if known else 100 * d > tie_points
    behind = (not noisy and d < 0) if known else 100 * d < -tie_points
    when = []
    if not behind:  # LoRA at least as accurate
        if ahead:
            when.append(f"LoRA is the better choice here on accuracy alone ({_pts(d)} ahead).")
        if smaller:
            when.append(f"{'It is also' if when else 'Here LoRA is'} the better choice whenever several task-specific variants must be "
                        f"stored or served from one shared backbone: each extra task costs {cl:.2f} MB "
                        f"instead of {cf:.2f} MB, at "
                        + ("no top-1 cost." if d >= 0 else f"a top-1 cost of {_pts(d)}."))
        if faster:
            when.append(f"{'It also' if when else 'LoRA'} trained {tf / tl:.1f}x faster on this hardware, "
                        "which favours it when training time is the constraint.")
        if not when:
            when.append("LoRA is competitive on accuracy here but saved neither storage nor training time, "
                        "so these numbers give no reason to prefer it.")
    else:
        when.append(f"Full fine-tuning is the better choice when its {_pts(d)} of top-1 matter more than "
                    "storage; " + (f"LoRA remains the choice when many variants must be kept "
                                   f"({cl:.2f} MB each vs {cf:.2f} MB)." if smaller else
                                   "LoRA saves no storage here either."))
    return [" ".join(para1), " ".join(cost), " ".join(when)]


def _memory(full, lora):
    """The peak-memory sentence, worded for what train.py measured (peak_memory_kind)."""
    ml, mf = lora["peak_memory_mb"], full["peak_memory_mb"]
    if not (ml == ml and mf == mf and mf > 0):  # NaN != NaN: not measured
        return []
    kl, kf = lora.get("peak_memory_kind"), full.get("peak_memory_kind")
    less = "less" if ml < mf else "more"
    if kl != kf:
        return [f"Peak memory was measured differently for the two runs ({kf or 'unrecorded'} vs "
                f"{kl or 'unrecorded'}), so it is not compared."]
    if kf == "cuda_allocated":
        return [f"Peak GPU memory held by tensors was {ml:.0f} MB against {mf:.0f} MB "
                f"({abs(1 - ml / mf) * 100:.0f} % {less})."]
    # RSS (or unrecorded, as in older metrics): the whole process, including the cached dataset
    # both runs load, so a ratio would understate the method's difference; the gap in MB does not.
    return [f"Peak process memory (RSS, which includes the cached dataset both runs hold) was "
            f"{ml:.0f} MB against {mf:.0f} MB, {abs(mf - ml):.0f} MB {less}."]
