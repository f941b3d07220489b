"""The compare stage's logic: one table of every method's accuracy and cost, the figures, and a
report.md whose discussion is generated from those numbers only.

Inputs: metrics/evaluate.json, metrics/train_{full,lora}.json and
plots/train_{full,lora}.csv, plots/per_class.csv are required; metrics/train_probe.json (with
evaluate.json["probe"]), metrics/cost.json, metrics/attention.json and metrics/data.json are used
when present. Accuracies are fractions in [0, 1] in every input and in JSON; text and
figures show percent.
"""
import math
import os
from pathlib import Path

import pandas as pd

from woof.io import atomic_path, pyplot, read_json, save_png, write_json

plt = pyplot()  # Agg before seaborn or pyplot draws anything
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LABELS = {"zero_shot": "Zero-shot", "linear_probe": "Linear probe", "probe": "Linear probe",
          "full": "Full fine-tuning", "lora": "LoRA"}
TIE_POINTS = 1.0  # |top-1 difference| in points below which we call two methods equivalent
COLUMNS = ["method", "top1", "top5", "loss", "train_minutes", "train_images_per_s",
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


def _row(method, ev, ev_path, train=None, train_path=None, checkpoint_key="model_mb"):
    row = dict(method=method, top1=_need(ev, "top1", ev_path), top5=ev.get("top5", NAN),
               loss=ev.get("loss", NAN), n=ev.get("n", NAN))
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


def collect(metrics_dir="metrics", plots_dir="plots"):
    """One row per method present (zero_shot, linear_probe, full, lora) as a DataFrame."""
    m = Path(metrics_dir)
    ev_path = m / "evaluate.json"
    ev = read_json(ev_path)
    full, lora = read_json(m / "train_full.json"), read_json(m / "train_lora.json")
    for name in ("train_full.csv", "train_lora.csv", "per_class.csv"):  # fail before writing anything
        _exists(Path(plots_dir) / name)
    rows = [_row("zero_shot", _need(ev, "zero_shot", ev_path), ev_path)]
    if (m / "train_probe.json").exists() and "probe" in ev:
        probe = read_json(m / "train_probe.json")
        rows.append(_row("linear_probe", ev["probe"], ev_path, probe, m / "train_probe.json",
                         "adapter_mb" if "adapter_mb" in probe else "model_mb"))
    rows.append(_row("full", _need(ev, "full", ev_path), ev_path, full, m / "train_full.json"))
    # LoRA's checkpoint is its adapter: the frozen backbone is shared with every other task.
    rows.append(_row("lora", _need(ev, "lora", ev_path), ev_path, lora, m / "train_lora.json",
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


def _fmt(x, spec):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown_table(df):
    """The results table in Markdown: accuracies in %, parameters with thousands separators."""
    cols = [("Method", lambda r: LABELS.get(r.method, r.method)),
            ("Top-1 (%)", lambda r: _fmt(100 * r.top1, ".2f")),
            ("Top-5 (%)", lambda r: _fmt(100 * r.top5, ".2f")),
            ("Val loss", lambda r: _fmt(r.loss, ".3f")),
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
    lines = ["| " + " | ".join(c for c, _ in cols) + " |",
             "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(cols))) + "|"]
    for r in df.itertuples():
        lines.append("| " + " | ".join(f(r) for _, f in cols) + " |")
    return "\n".join(lines) + "\n"


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


def write_compare_json(df, path="metrics/compare.json"):
    out = {m: {k: _clean(v) for k, v in row.items() if k not in ("method", "peak_memory_kind")}
           for m, row in _by_method(df).items()}
    out.update({k: _clean(v) for k, v in headline(df).items()})
    write_json(path, out)
    return out


# ---------------------------------------------------------------- figures

def plot_accuracy(df, path):
    d = df.melt(id_vars="method", value_vars=["top1", "top5"], var_name="metric", value_name="acc")
    d["acc"] = 100 * d["acc"]
    d["Method"] = d.method.map(LABELS)
    d["metric"] = d.metric.map({"top1": "top-1", "top5": "top-5"})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.barplot(d, x="Method", y="acc", hue="metric", ax=ax, palette="muted")
    for c in ax.containers:
        ax.bar_label(c, fmt="%.1f", fontsize=9, padding=2)
    zs = 100 * df.loc[df.method == "zero_shot", "top1"].iloc[0]
    ax.axhline(zs, color="gray", ls="--", lw=1, label=f"zero-shot top-1 ({zs:.1f} %)")
    ax.set(ylim=(0, 118), xlabel="", ylabel="validation accuracy (%)",
           title="ImageWoof validation accuracy per method")
    ax.set_yticks(range(0, 101, 20))
    ax.legend(loc="upper center", ncol=3, fontsize=9, frameon=False)  # above the bars, not over them
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
    ax.set(xlabel="trainable parameters (log scale)", ylabel="validation top-1 (%)",
           title="Accuracy against trainable parameters")
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def load_curves(plots_dir="plots"):
    parts = []
    for method in ("full", "lora", "probe"):
        path = Path(plots_dir) / f"train_{method}.csv"
        if method == "probe" and not path.exists():  # the linear probe is optional
            continue
        parts.append(pd.read_csv(_exists(path)).assign(method=LABELS[method]))
    return pd.concat(parts, ignore_index=True)


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


def plot_per_class(per_class, path):
    """per_class: the columns of plots/per_class.csv (class, method, accuracy as a fraction)."""
    d = per_class.assign(accuracy=100 * per_class.accuracy,
                         method=per_class.method.map(lambda m: LABELS.get(m, m)))
    fig, ax = plt.subplots(figsize=(9, 0.2 * d.method.nunique() * d["class"].nunique() + 1.5))
    sns.barplot(d, y="class", x="accuracy", hue="method", ax=ax, palette="muted")
    for c in ax.containers:
        ax.bar_label(c, fmt="%.0f", fontsize=7, padding=2)
    ax.set(xlim=(0, 106), xlabel="validation accuracy (%)", ylabel="",
           title="Per-class validation accuracy")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False, title=None)
    fig.tight_layout()
    save_png(fig, path)


def make_figures(df, plots_dir="plots", out_dir="plots"):
    """Write the four compare_*.png figures; return their paths by kind."""
    out = {k: Path(out_dir) / f"compare_{k}.png" for k in ("accuracy", "params", "curves", "per_class")}
    plot_accuracy(df, out["accuracy"])
    plot_params(df, out["params"])
    plot_curves(load_curves(plots_dir), out["curves"])
    plot_per_class(pd.read_csv(_exists(Path(plots_dir) / "per_class.csv")), out["per_class"])
    return out


# ---------------------------------------------------------------- report

def _pts(x):
    return f"{100 * abs(x):.1f} point{'' if round(100 * abs(x), 1) == 1 else 's'}"


def discussion(df, tie_points=TIE_POINTS):
    """Three paragraphs (accuracy, cost, when to use LoRA), each sentence conditional on df."""
    r = _by_method(df)
    full, lora, zs = r["full"], r["lora"], r["zero_shot"]
    d = lora["top1"] - full["top1"]
    acc = f"{100 * lora['top1']:.2f} % vs {100 * full['top1']:.2f} % top-1"
    if d == 0:
        verdict = f"LoRA and full fine-tuning reach the same top-1 ({acc})."
    elif abs(100 * d) <= tie_points:
        ahead = "LoRA" if d > 0 else "full fine-tuning"
        verdict = f"LoRA matches full fine-tuning within {tie_points:g} point ({acc}; {ahead} ahead by {_pts(d)})."
    else:
        verdict = f"{'LoRA' if d > 0 else 'Full fine-tuning'} wins by {_pts(d)} ({acc})."
    n, noisy = full.get("n"), False
    if isinstance(n, (int, float)) and n == n and n > 0 and d:
        # Standard error of the difference of two accuracies on n images (independent approximation).
        se = math.sqrt(sum(p * (1 - p) for p in (full["top1"], lora["top1"])) / n)
        noisy = abs(d) <= 2 * se
        noise = "within" if noisy else "beyond"
        verdict += (f" On {int(n):,} validation images that gap is {abs(d) / se:.1f} standard errors "
                    f"(standard error {_pts(se)}), {noise} what sampling noise alone explains.")
    base = []
    for m in [k for k in ("linear_probe", "full", "lora") if k in r]:
        g = r[m]["top1"] - zs["top1"]
        where = "above" if g > 0 else "below" if g < 0 else "level with"
        base.append(f"{LABELS[m] if m == 'lora' else LABELS[m].lower()} is {_pts(g)} {where}")
    para1 = [verdict, "Against the zero-shot baseline (the pretrained ImageNet head restricted to "
             f"the task's classes, {100 * zs['top1']:.2f} %): " + "; ".join(base) + "."]
    if "linear_probe" in r:
        p = r["linear_probe"]
        para1.append(f"The linear probe reaches {100 * p['top1']:.2f} % training {p['trainable_pct']:.2f} % "
                     f"of the parameters, {_pts(p['top1'] - lora['top1'])} "
                     f"{'above' if p['top1'] > lora['top1'] else 'below'} LoRA.")

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

    when = []
    if 100 * d >= -tie_points:  # LoRA at least as accurate, up to the tie band
        if 100 * d > tie_points:
            when.append(f"LoRA is the better choice here on accuracy alone ({_pts(d)} ahead"
                        + (", though within sampling noise)." if noisy else ")."))
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


def _hardware(trains):
    """Where the models trained (train.py's `hardware`); else this machine, labelled as such."""
    full, lora = (t.get("hardware") for t in trains)
    if full and full == lora:
        return f"{full} (from metrics/train_*.json)"
    if full or lora:
        return f"Full fine-tuning on {full or 'unrecorded hardware'}, LoRA on {lora or 'unrecorded hardware'}"
    from woof.train import machine  # the description the training runs record
    return f"Not recorded by the training runs; this report was written on {machine()}"


def _section(params, name):
    sec = (params or {}).get(name) or {}
    fmt = lambda v: (", ".join(map(str, v)) if isinstance(v, list) else  # noqa: E731
                     str(v).lower() if isinstance(v, bool) else v)  # YAML spelling: true/false
    return ", ".join(f"`{k}={fmt(v)}`" for k, v in sec.items() if not isinstance(v, dict))


def _attention_text(att):
    """metrics/attention.json (schema: woof.attention.attention_metrics) as a table and a sentence."""
    models = [k for k, v in att.items() if isinstance(v, dict) and k not in ("corr", "rollout_corr")]
    area = att.get("center_area", 0.5)
    lines = [f"Attention statistics over {att.get('num_images', '?')} validation images "
             "(`metrics/attention.json`). Entropy is normalised to [0, 1] (1 = uniform over the patches); "
             f"centre mass is the share of attention inside the central square covering {area:.0%} of "
             f"the image (a uniform map scores {area:g}).", "",
             "| Model | CLS entropy | CLS centre mass | Rollout entropy | Rollout centre mass |",
             "|:---|---:|---:|---:|---:|"]
    for m in models:
        a = att[m]
        lines.append(f"| {m} | {a['cls_entropy']:.3f} | {a['center_mass']:.3f} | "
                     f"{a['rollout_entropy']:.3f} | {a['rollout_center_mass']:.3f} |")
    pairs = [f"{pair.replace('_', ' vs ')}: {c:.2f} (CLS), {att.get('rollout_corr', {}).get(pair, NAN):.2f} (rollout)"
             for pair, c in att.get("corr", {}).items()]
    if pairs:
        lines += ["", "Pearson correlation of the maps between models, mean over the images: "
                  + "; ".join(pairs) + "."]
    return "\n".join(lines)


def _memory_note(df):
    kinds = set(df.peak_memory_kind.dropna())
    if kinds == {"cuda_allocated"}:
        return "Peak memory: GPU memory held by tensors (`torch.cuda.max_memory_allocated`)."
    if kinds <= {"rss"}:  # also metrics that do not say: train.py measured RSS on CPU before
        return "Peak memory: resident memory of the whole training process, the cached dataset included."
    return "Peak memory: measured differently per method (" + ", ".join(sorted(kinds)) + ")."


def _setup(df, params, data, trains):
    """The Setup bullet points: data, model, each method's params, precision, hardware."""
    dp = params.get("data") or {}
    nc = data.get("num_classes", 10)
    extra = [f"{data['skipped_images']} unreadable image(s) skipped" if data.get("skipped_images") else "",
             f"training fraction {dp['train_fraction']}" if dp.get("train_fraction") not in (None, 1) else "",
             f"{dp['image_size']} px" if dp.get("image_size") else ""]
    n_val = data.get("val_images", df.n.iloc[0])
    lines = [f"**Data.** ImageWoof ({nc} dog breeds from ImageNet): {_fmt(data.get('train_images', NAN), ',')} "
             f"training and {_fmt(n_val, ',')} validation images" + "".join(f", {e}" for e in extra if e) + ".",
             f"**Model.** `{(params.get('model') or {}).get('name', '?')}` pretrained on ImageNet, "
             f"{int(df.total_params.iloc[0]):,} parameters with the {nc}-class head; the zero-shot baseline "
             f"is its ImageNet head restricted to the {nc} classes, without training."
             + (" Full fine-tuning starts from random weights (`full.pretrained=false`)."
                if (params.get("full") or {}).get("pretrained") is False else "")]
    for sec, title in (("full", "Full fine-tuning"), ("lora", "LoRA"), ("train", "Training")):
        if _section(params, sec):
            lines.append(f"**{title}.** {_section(params, sec)}")
    if trains[0].get("precision"):
        lines.append(f"**Precision used** (metrics/train_full.json). {trains[0]['precision']}")
    return lines + [f"**Hardware.** {_hardware(trains)}."]


CAPTIONS = {"accuracy": "Validation accuracy per method; dashed: zero-shot top-1.",
            "params": "Top-1 against trainable parameters (log scale).",
            "curves": "Training and validation curves of both methods.",
            "per_class": "Per-class validation accuracy.",
            "attention_cls": "Last-layer CLS attention (mean over heads).",
            "attention_rollout": "Gradient-weighted attention rollout for the true class (Chefer et al. 2021)."}


def write_report(path="report.md", df=None, params=None, metrics_dir="metrics", plots_dir="plots",
                 figures=None):
    """The experiments section as Markdown; figures: {kind: png path} from make_figures."""
    df = collect(metrics_dir, plots_dir) if df is None else df
    m = Path(metrics_dir)
    trains = [read_json(m / f"train_{k}.json") for k in ("full", "lora")]
    data = read_json(m / "data.json") if (m / "data.json").exists() else {}

    def image(kind, png):  # links relative to the report, so they work on GitHub and locally
        cap = CAPTIONS.get(kind, kind)
        return [f"![{cap}]({Path(os.path.relpath(png, Path(path).parent)).as_posix()})", "", f"*{cap}*", ""]

    text = ["# Experiments: full fine-tuning vs LoRA on ImageWoof", "",
            "Generated by the `compare` stage (`dvc repro`) from `metrics/` and `plots/`; do not edit.", "",
            "## Setup", "", *[f"- {s}" for s in _setup(df, params or {}, data, trains)], "",
            "## Results", "", markdown_table(df),
            "Accuracy on the validation split; checkpoint is the saved model for full fine-tuning and "
            "the adapter file alone for LoRA. " + _memory_note(df), ""]
    if figures:
        text += ["## Figures", ""]
        for kind, png in figures.items():
            text += image(kind, png)
    att_json = m / "attention.json"
    att = read_json(att_json) if att_json.exists() else None
    if att is not None:
        text += ["## Where the models look", ""]
        if "skipped" in att:  # e.g. a CNN backbone; its PNGs are placeholders, not worth showing
            text += [f"No attention maps: {att['skipped']}.", ""]
        else:
            for kind in ("attention_cls", "attention_rollout"):
                png = Path(plots_dir) / f"{kind}.png"
                if png.exists():
                    text += image(kind, png)
            text += [_attention_text(att), ""]
    text += ["## Discussion", "", *[p + "\n" for p in discussion(df) if p]]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(text))
    return "\n".join(text)
