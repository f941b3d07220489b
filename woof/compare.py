"""The answer, computed once: every number and verdict the paper and the README state, from the
pipeline's metrics and the programme's record, into one results file (metrics/compare.json).

Two sources, kept apart unless they are the same data:
- the pipeline (`dvc repro`): zero-shot, full fine-tuning and LoRA at params.yaml's values, read
  from metrics/{data,evaluate,train_full,train_lora,cost,attention,drift}.json and plots/;
- the programme (woof.record): every configuration, selection on val, numbers on clean test.
Each run records the sha256 of the archive and of the weights it learnt from; `provenance` says
whether the pipeline's numbers come from the same ones as the record's. The answer pairs only
models evaluated on the same images. Accuracies are fractions everywhere in JSON.
"""
import math
from pathlib import Path

import pandas as pd
from scipy.stats import ttest_ind_from_stats

from woof.io import CORRUPTED, PREDICTIONS, at, read_json
from woof.labels import LABELS, count, mean_std
from woof.record import (FAMILIES, all_runs, best, cnn_kind, ema_runs, family, from_bits, programme,
                         reference_runs, select, split_seed, still_to_run, val_best)
from woof.stats import ALPHA, compare_paired, holm, mcnemar, mean_ci, paired_scores

NAN = float("nan")
PIPELINE = ("zero_shot", "full", "lora")
PAIRS = (("lora", "full"), ("full", "zero_shot"), ("lora", "zero_shot"))
TIE_POINTS = 1.0  # |top-1 difference| in points below which two methods are called level
SAME_TIME = 1.05  # a speed ratio below this is "about the same time"


def _need(d, key, path):
    if key not in d:
        raise KeyError(f"{path} has no {key!r}: rerun the stage that writes it (dvc repro)")
    return d[key]


def _optional(path):
    return read_json(path) if Path(path).exists() else None


# ---------------------------------------------------------------- the pipeline's three models

def headline_split(ev):
    """test when the data has a clean test split, else val (data.split=official)."""
    return "test" if all("test" in v for v in ev.values() if isinstance(v, dict)) else "val"


def method_row(method, ev, split, train=None, checkpoint_key="model_mb"):
    """One model's accuracies on the headline split (test when there is one) and on val, and its
    training cost (none for zero-shot)."""
    head, val = ev[split], ev["val"]
    row = dict(method=method, split=split, top1=head["top1"], top1_lo=head["top1_ci"][0],
               top1_hi=head["top1_ci"][1], top5=head.get("top5", NAN), loss=head.get("loss", NAN),
               n=head.get("n", NAN), val_top1=val["top1"], val_top1_lo=val["top1_ci"][0],
               val_top1_hi=val["top1_ci"][1], val_n=val.get("n", NAN))
    if train is None:  # zero-shot: nothing trained, nothing saved
        return {**row, "train_minutes": 0.0, "train_images_per_s": NAN, "trainable_params": 0,
                "peak_memory_mb": NAN, "peak_memory_kind": None, "checkpoint_mb": NAN}
    return {**row, **{k: train.get(k, NAN) for k in ("train_minutes", "train_images_per_s", "trainable_params",
                                                     "total_params", "peak_memory_mb", "peak_memory_kind")},
            "hardware": train.get("hardware"), "precision": train.get("precision"), "compile": train.get("compile"),
            # LoRA's checkpoint is its adapter: the frozen backbone is shared with every other task.
            "checkpoint_mb": train[checkpoint_key]}


def collect(metrics_dir="metrics"):
    """One row per pipeline model as a DataFrame (zero_shot, full, lora)."""
    m = Path(metrics_dir)
    ev = read_json(m / "evaluate.json")
    for method in PIPELINE:
        _need(ev, method, m / "evaluate.json")
    split = headline_split(ev)
    rows = [method_row("zero_shot", ev["zero_shot"], split)]
    rows += [method_row(k, ev[k], split, read_json(m / f"train_{k}.json"), "adapter_mb" if k == "lora" else "model_mb")
             for k in ("full", "lora")]
    df = pd.DataFrame(rows)
    # The zero-shot model is the same architecture, its ImageNet head cut to the task's classes.
    df["total_params"] = df["total_params"].fillna(df.loc[df.method == "full", "total_params"].iloc[0]).astype("int64")
    df["trainable_pct"] = 100.0 * df["trainable_params"] / df["total_params"]
    # Against the plain model's size (LoRA's adapters are extra parameters, not part of it).
    df["trainable_share"] = df["trainable_params"] / df.loc[df.method == "full", "total_params"].iloc[0]
    return df


def paired_tests(predictions_dir, splits=("val", "test")):
    """{split: {"a_vs_b": woof.stats.compare_paired}} from the per-image predictions the evaluate
    stage wrote ({split}_{model}.csv), matched by file name."""
    out = {}
    for split in splits:
        paths = {m: Path(predictions_dir) / f"{split}_{m}.csv" for m in PIPELINE}
        if not all(p.exists() for p in paths.values()):
            continue
        correct = {}
        for m, p in paths.items():
            d = pd.read_csv(p).set_index("file")
            correct[m] = d.actual == d.predicted
        for m, c in correct.items():
            if not c.index.equals(correct["full"].index):
                raise ValueError(f"{paths[m]} lists other images than {paths['full']}: rerun evaluate")
        out[split] = {f"{a}_vs_{b}": compare_paired(correct[a].to_numpy(), correct[b].to_numpy()) for a, b in PAIRS}
    return out


def verdicts(r, paired):
    """The pipeline's decisions the paper words: who is ahead of whom, and by how much it matters.
    With a paired test "ahead" means significantly so; without one, beyond TIE_POINTS."""
    full, lora = r["full"], r["lora"]
    d = lora["top1"] - full["top1"]
    t = paired.get("lora_vs_full")
    ahead = (t["significant"] and d > 0) if t else 100 * d > TIE_POINTS
    behind = (t["significant"] and d < 0) if t else 100 * d < -TIE_POINTS
    tl, tf = lora["train_minutes"], full["train_minutes"]
    ratio = tf / tl if tl and tf else NAN
    ml, mf = lora["peak_memory_mb"], full["peak_memory_mb"]
    return {"lora_minus_full": d, "level": abs(100 * d) <= TIE_POINTS, "lora_ahead": bool(ahead),
            "lora_behind": bool(behind), "lora_speedup": ratio,
            "speed": ("faster" if ratio >= SAME_TIME else "slower" if 1 / ratio >= SAME_TIME else "same")
            if ratio == ratio else None,
            "memory_comparable": bool(ml == ml and mf == mf and mf > 0
                                      and lora.get("peak_memory_kind") == full.get("peak_memory_kind")),
            "memory_saved_mb": mf - ml,
            "adapter_smaller": lora["checkpoint_mb"] < full["checkpoint_mb"],
            "checkpoint_ratio_inverse": full["checkpoint_mb"] / lora["checkpoint_mb"],
            "vs_zero_shot": {m: r[m]["top1"] - r["zero_shot"]["top1"] for m in ("full", "lora")}}


def headline(r):
    """A few deltas that `dvc metrics diff` should show first (top-1 deltas as fractions)."""
    full, lora, zs = r["full"], r["lora"], r["zero_shot"]
    return {"lora_minus_full_top1": lora["top1"] - full["top1"],
            "full_minus_zero_shot_top1": full["top1"] - zs["top1"],
            "lora_minus_zero_shot_top1": lora["top1"] - zs["top1"],
            "lora_trainable_pct": lora["trainable_pct"],
            "lora_speedup": (full["train_minutes"] / lora["train_minutes"]) if lora["train_minutes"] else NAN,
            "lora_checkpoint_ratio": lora["checkpoint_mb"] / full["checkpoint_mb"]}


# ---------------------------------------------------------------- the programme's record

def paired(correct, a, b, split="test"):
    """compare_paired of two recorded runs on the same images, or None when either is missing."""
    if a not in correct or b not in correct or split not in correct[a] or split not in correct[b]:
        return None
    (ca, fa), (cb, fb) = correct[a][split], correct[b][split]
    if fa != fb:
        raise ValueError(f"runs {a} and {b} were evaluated on different {split} images")
    return compare_paired(ca, cb)


def seeds(df, name):
    """Mean and std over seed 0 (the grid run `name`) and its recorded reruns at other seeds."""
    d = df[(df.name.map(lambda n: split_seed(n)[0]) == name) & (df.status == "ok")]
    out = {"runs": list(d.name), "n": len(d)}
    for col in ("val_top1", "test_top1"):
        out[col] = {"mean": float(d[col].mean()), "std": float(d[col].std(ddof=1)) if len(d) > 1 else None}
    return out


def welch(a, b):
    """Welch's t-test between two configurations' seed means of test top-1 (None until both have
    reruns; NaN when neither has any spread)."""
    if a["n"] < 2 or b["n"] < 2:
        return None
    ma, mb = a["test_top1"], b["test_top1"]
    return float(ttest_ind_from_stats(ma["mean"], ma["std"], a["n"], mb["mean"], mb["std"], b["n"],
                                      equal_var=False).pvalue)


def lora_runs(df, blocks=("lora-rank",)):
    """The successful LoRA runs of `blocks`, with the rank and lr they ran at as columns."""
    d = df[df.block.isin(blocks) & (df.status == "ok")].copy()
    d["rank"] = [int(o["lora.rank"]) for o in d.overrides]
    d["lr"] = [o.get("lora.lr") for o in d.overrides]
    return d


def saturation_rank(df, correct, split="val"):
    """The smallest LoRA rank (at the rank block's lr, fixed alpha/r) whose val top-1 is not
    significantly below the best rank's (McNemar, 5 %): where more rank stops helping."""
    d = lora_runs(df)
    if not len(d):
        return None
    top = d.sort_values("val_top1", ascending=False).iloc[0]
    for r in d.sort_values("rank").itertuples():
        if r.name == top["name"]:
            return int(r.rank)
        if r.name in correct and top["name"] in correct \
                and mcnemar(correct[r.name][split][0], correct[top["name"]][split][0])["p_value"] >= ALPHA:
            return int(r.rank)
    return int(top["rank"])


def freeze_points(df, refs, blocks):
    """(frozen blocks, run) of the freezing curve's successful runs: 0 is full fine-tuning at the
    default lr, which the freeze runs share; `blocks` (all of them) is the val-best linear probe."""
    ok = df[df.status == "ok"]
    points = [(0, refs["full"])]
    points += [(o["full.freeze_blocks"], n) for n, o, b in zip(ok.name, ok.overrides, ok.block) if b == "freeze"]
    probe = best(df, "probe")
    if probe is not None:
        points.append((blocks, probe["name"]))
    return sorted((k, n) for k, n in points if n in set(ok.name))


def fraction_points(df, refs):
    """The data-fraction curves' successful runs as (family, share of the training images, run);
    a family's 100 % point is its reference run."""
    ok = df[df.status == "ok"]
    rows = []
    for fam, whole in refs.items():
        d = ok[(ok.name == whole) | ok.name.str.fullmatch(rf"fraction[\d.]+-{fam}")]
        rows += [(fam, o.get("data.train_fraction", 1.0), n) for n, o in zip(d.name, d.overrides)]
    return pd.DataFrame(rows, columns=["family", "fraction", "name"]).sort_values(["family", "fraction"])


def throughput_defaults(df, correct, refs):
    """What train.precision=auto + train.compile=true cost in accuracy and gain in time, per
    method: paired differences (fast - fp32 eager) on val and test, and the minutes' ratio."""
    ok = df[df.status == "ok"].set_index("name")
    out = {}
    for method in ("full", "lora"):
        fast, ref = f"fast-{method}", refs[method]
        if fast in ok.index and ref in ok.index:
            out[method] = {"fast": fast, "reference": ref, "precision": ok.loc[fast, "precision"],
                           "speedup": float(ok.loc[ref, "train_minutes"] / ok.loc[fast, "train_minutes"]),
                           **{split: paired(correct, fast, ref, split) for split in ("val", "test")}}
    return out


def cnn_summary(df, correct, vit_lora_vs_full=None):
    """The CNN backbone's answer: the val-best run of each of its methods (selection on val), each
    against its own zero-shot head and LoRA against full, paired on the same clean test images as
    the ViT's (the files are the same: preprocessing differs, the images do not)."""
    runs = {r.name: r for r in programme() if r.block == "cnn"}
    ok = df[df.name.isin(list(runs)) & (df.status == "ok")]
    zs = "cnn-zero-shot"
    if zs not in set(ok.name):
        return None
    kinds = [cnn_kind(runs[n]) for n in ok.name]
    out = {"zero_shot": {"name": zs, **numbers(ok[ok.name == zs].iloc[0].to_dict())}, "best": {},
           "runs": {"ok": len(ok), "missing": len(runs) - len(ok)}}
    for kind in ("full", "lora", "probe"):
        b = val_best(ok[[k == kind for k in kinds]])
        if b is not None:
            out["best"][kind] = {"name": b["name"], **numbers(b), "vs_zero_shot": paired(correct, b["name"], zs)}
    full, lora = out["best"].get("full"), out["best"].get("lora")
    t = out["lora_vs_full"] = paired(correct, lora["name"], full["name"]) if full and lora else None
    # whether the ViT's verdict (the same significance and direction) holds on this backbone
    out["vit_verdict_holds"] = _says(t) == _says(vit_lora_vs_full) if t and vit_lora_vs_full else None
    return out


# The second round (issue 33): full fine-tuning with layer decay (EMA run included) and DoRA,
# against the first round's val-best full fine-tuning and LoRA and each other.
SECOND = ("llrd", "dora")
SECOND_PAIRS = (("llrd", "full"), ("lora", "llrd"), ("dora", "lora"), ("dora", "full"), ("dora", "llrd"))


def second_round(df, correct, best_runs, lora_vs_full):
    """Each second-round family's val-best run so far, paired on the same clean test images (a
    val-best of an incomplete grid is provisional: "recorded" says how much of it has run), and
    whether layer decay changes the LoRA-vs-full verdict: its significance or its direction."""
    ok = set(df.name[df.status == "ok"])
    names = {fam: b["name"] for fam, b in best_runs.items()}
    grids = {fam: [r.name for r in all_runs(df) if r.block in FAMILIES[fam]] for fam in SECOND}
    tests = {f"{a}_vs_{b}": paired(correct, names[a], names[b]) for a, b in SECOND_PAIRS if a in names and b in names}
    after = tests.get("lora_vs_llrd")
    dora, lora = (best_runs.get(fam, {}).get("seeds", {}).get("runs", []) for fam in ("dora", "lora"))
    return {"recorded": {fam: {"ok": sum(n in ok for n in g), "of": len(g)} for fam, g in grids.items()},
            "paired": tests, "ema": ema_effect(df, correct), "dora_vs_lora_by_seed": by_seed(correct, dora, lora),
            "llrd_changes_verdict": None if not (lora_vs_full and after) else _says(lora_vs_full) != _says(after)}


def by_seed(correct, a_runs, b_runs):
    """Two configurations' runs at the same seed, on the same images: the images each gets right
    alone, per split and seed; how alike the two methods train, beyond the val-best pair's test."""
    b_at = {split_seed(n)[1]: n for n in b_runs}
    return [{"seed": k, **{s: paired(correct, a, b_at[k], s) for s in ("val", "test")}}
            for a in a_runs if (k := split_seed(a)[1]) in b_at]


def ema_effect(df, correct):
    """The EMA run against the layer-decay run whose configuration it repeats: whether the EMA
    helps on val (where it is chosen) and, paired on the clean test images, what it changes; None
    until the EMA run is recorded."""
    ema = ema_runs(df)
    rows = df[df.status == "ok"].set_index("name")
    if not ema or ema[0].name not in rows.index:
        return None
    base = select(df, FAMILIES["llrd"])["name"]
    e, b = numbers(rows.loc[ema[0].name]), numbers(rows.loc[base])
    return {"name": ema[0].name, "base": base, "decay": ema[0].overrides["full.ema_decay"],
            **{k: e[k] for k in ("val_top1", "test_top1", "test_top1_lo", "test_top1_hi")},
            "base_val_top1": b["val_top1"], "base_test_top1": b["test_top1"],
            "helps_on_val": e["val_top1"] > b["val_top1"], "vs_base": paired(correct, ema[0].name, base)}


def answer_tests(prog):
    """The paired tests the answer rests on, val-best against val-best on the clean test images:
    LoRA against full, the second round's and LoRA against full on the CNN. Made together, they
    are also read with Holm's correction: each gets `p_holm`, `significant_holm` and `family` (how
    many were made) in place. -> their paths in the programme's results, in the order reports list them."""
    paths = ["lora_vs_full", *(f"second_round.paired.{k}" for k in prog["second_round"]["paired"]), "cnn.lora_vs_full"]
    tests = {p: t for p in paths if (t := at(prog, p))}
    for t, p_adj in zip(tests.values(), holm([t["p_value"] for t in tests.values()])):
        t.update(p_holm=p_adj, significant_holm=p_adj < ALPHA, family=len(tests))
    return list(tests)


def _says(t):
    """What a sentence says of a paired test: (significant, which way when it is)."""
    return t["significant"], (t["difference"] > 0) if t["significant"] else None


def numbers(row):
    keys = ("val_top1", "val_top1_lo", "val_top1_hi", "test_top1", "test_top1_lo", "test_top1_hi",
            "test_top5", "corrupted_top1", "train_minutes", "train_images_per_s", "trainable_params", "peak_memory_mb")
    return {k: (None if pd.isna(row.get(k)) else float(row[k])) for k in keys}


def summarize(df, correct, params, blocks):
    """The programme's answer: the val-best run of each family with its seeds and paired tests,
    the LoRA-vs-full test, the rank curve, freezing, data fractions and the throughput defaults."""
    refs = reference_runs(params)
    zs = df[(df.name == "zero-shot") & (df.status == "ok")]
    out = {"runs": {"ok": int((df.status == "ok").sum()), "failed": int((df.status == "failed").sum()),
                    "missing": still_to_run(df)},
           "zero_shot": numbers(zs.iloc[0].to_dict()) if len(zs) else None, "best": {}, "references": refs}
    for fam in FAMILIES:
        b = best(df, fam)
        if b is not None:
            out["best"][fam] = {"name": b["name"], "overrides": b["overrides"], **numbers(b),
                                "seeds": seeds(df, b["name"]),
                                # against the untrained head, on the same images
                                "vs_zero_shot": {s: paired(correct, b["name"], "zero-shot", s) for s in ("test", "val")}}
    bf, bl = out["best"].get("full"), out["best"].get("lora")
    out["lora_vs_full"] = paired(correct, bl["name"], bf["name"]) if bf and bl else None
    out["lora_vs_full_seeds_p"] = welch(bl["seeds"], bf["seeds"]) if bf and bl else None
    out["lora_saturation_rank"] = saturation_rank(df, correct)
    ranks = lora_runs(df).sort_values("rank")
    out["lora_ranks"] = [{"rank": int(r), "name": n, "val_top1": float(v), "test_top1": float(t)}
                         for r, n, v, t in zip(ranks["rank"], ranks.name, ranks.val_top1, ranks.test_top1)]
    out["lora_rank_spread"] = {s: float(ranks[f"{s}_top1"].max() - ranks[f"{s}_top1"].min()) if len(ranks) else None
                               for s in ("val", "test")}
    out["throughput_defaults"] = throughput_defaults(df, correct, refs)
    out["cnn"] = cnn_summary(df, correct, out["lora_vs_full"])
    out["second_round"] = second_round(df, correct, out["best"], out["lora_vs_full"])
    out["answer_tests"] = answer_tests(out)
    run = df.set_index("name")
    out["blocks"] = blocks
    out["freezing"] = [{"frozen_blocks": k, "name": n, **numbers(run.loc[n]),
                        "vs_full": None if n == refs["full"] else {s: paired(correct, n, refs["full"], s)
                                                                   for s in ("test", "val")}}
                       for k, n in freeze_points(df, refs, blocks)]
    out["fractions"] = [{"family": f, "fraction": x, "name": n, **numbers(run.loc[n]),
                         "vs_all_images": None if n == refs[f] else paired(correct, n, refs[f])}
                        for f, x, n in fraction_points(df, refs).itertuples(index=False)]
    return out


def runs_table(df, summary):
    """Every run as Markdown (metrics/programme.md), the val-best of each method marked."""
    chosen = {v["name"] for v in summary["best"].values()}

    def fmt(values, spec, scale=1):
        return ["" if pd.isna(v) else format(scale * v, spec) for v in values]

    t = pd.DataFrame({
        "run": [f"**{n}** (best {LABELS[family(b)]})" if n in chosen else n for n, b in zip(df.name, df.block)],
        "changed params": [", ".join(f"{k}={v}" for k, v in o.items()) or "defaults" for o in df.overrides],
        "status": [s if s == "ok" else f"{s}: {e}" for s, e in zip(df.status, df.error.astype(object).fillna(""))],
        "val top-1 (%)": fmt(df.val_top1, ".2f", 100), "test top-1 (%)": fmt(df.test_top1, ".2f", 100),
        "test 95 % CI": [f"{100 * lo:.1f}-{100 * hi:.1f}" if not pd.isna(lo) else ""
                         for lo, hi in zip(df.test_top1_lo, df.test_top1_hi)],
        "trainable params": [count(v) if not pd.isna(v) else "" for v in df.trainable_params],
        "minutes": fmt(df.train_minutes, ".1f"), "img/s": fmt(df.train_images_per_s, ".0f"),
        "peak MB": fmt(df.peak_memory_mb, ",.0f")})
    lines = [t.to_markdown(index=False, disable_numparse=True, colalign=["left"] * 3 + ["right"] * (len(t.columns) - 3))]
    seeded = [(f, v["seeds"]) for f, v in summary["best"].items() if v["seeds"]["n"] > 1]
    if seeded:
        lines += ["", "Seeds of the val-best configurations (mean ± std over seeds):", ""]
        lines += [f"- {LABELS[f]} ({s['n']} seeds, {', '.join(s['runs'])}): val {mean_std(s['val_top1'])} %, "
                  f"test {mean_std(s['test_top1'])} %" for f, s in seeded]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- beyond clean top-1

def best_alpha(alphas, val):
    """The val-best a of a WiSE-FT path (ties to the larger a: the nearer the fine-tuned model)."""
    return max(range(len(alphas)), key=lambda i: (round(val[i], 12), alphas[i]))


def beyond(metrics_dir="metrics", per_image_path=CORRUPTED):
    """Robustness, calibration and the WiSE-FT path of the pipeline's models, with their paired
    tests; None before the robustness and calibrate stages have run.

    Each clean test image has K corrupted copies; a model's score on an image is the share of its
    copies it gets right, and models are compared by a bootstrap (CI) and a sign-flip permutation
    test (p) over the images (woof.stats.paired_scores), not over the N x K pairs."""
    m = Path(metrics_dir)
    rob, cal, path = (_optional(m / f) for f in ("robustness.json", "calibration.json", "interpolation.json"))
    if not (rob and cal and path and Path(per_image_path).exists()):
        return None
    per = read_json(per_image_path)
    n = rob["images"]
    score = {k: from_bits(v).reshape(-1, n).mean(0) for k, v in per["corrupted"].items()}  # (n,) share right
    clean = {k: from_bits(v).astype(float) for k, v in per["test"].items()}
    models = {}
    for k, r in rob["models"].items():
        mean, lo, hi = mean_ci(score[k])
        models[k] = {"clean": r["clean"], "corrupted": mean, "corrupted_ci": [lo, hi], "by_severity": r["by_severity"],
                     "worst": r["by_severity"][-1], "retained": mean / r["clean"] if r["clean"] else NAN,
                     "by_corruption": {c: sum(v) / len(v) for c, v in r["by_corruption"].items()}}
    tests = {f"{a}_vs_{b}": paired_scores(score[a], score[b]) for a, b in PAIRS}
    # What fine-tuning lost: an image's clean correctness minus its corrupted score.
    tests["drop_lora_vs_full"] = paired_scores(clean["lora"] - score["lora"], clean["full"] - score["full"])
    calibration = {k: {"temperature": c["temperature"],
                       **{s: {q: c[s][q] for q in ("ece", "ece_scaled", "nll", "nll_scaled")} for s in ("val", "test")}}
                   for k, c in cal.items()}
    a = path["alphas"]
    ends = [a.index(0), a.index(1)]
    wise = {}
    for k, acc in path["models"].items():
        i = best_alpha(a, acc["val"])
        inner = [j for j in range(len(a)) if j not in ends]
        wise[k] = {"best_alpha": a[i], **{f"best_{s}": acc[s][i] for s in acc},
                   **{f"end_{s}": acc[s][ends[1]] for s in acc},
                   "interior_beats_ends": {s: bool(inner) and max(acc[s][j] for j in inner) > max(acc[s][j] for j in ends)
                                           for s in acc},
                   "best_vs_end": compare_paired(from_bits(per["path_test"][k][i]), from_bits(per["path_test"][k][ends[1]]))}
    return {"images": n, "copies": len(per["corrupted"]["full"]) // n, "corruptions": rob["corruptions"],
            "severities": rob["severities"], "fingerprint": rob["fingerprint"], "models": models, "paired": tests,
            "lora_keeps_more": bool(tests["drop_lora_vs_full"]["significant"]
                                    and tests["drop_lora_vs_full"]["difference"] < 0),
            "calibration": calibration, "calibration_bins": len(next(iter(cal.values()))["test"]["bins"]["before"]["count"]),
            "path": {"alphas": a, "path_severity": path["path_severity"], "models": wise}}


# ---------------------------------------------------------------- both, and whether they are the same data

def provenance(data, trains, record):
    """The archive and weights behind the pipeline's numbers and behind the record's, and whether
    they are the same bytes (only then may a sentence set the two side by side)."""
    pipeline = {"archive_sha256": data.get("archive_sha256"),
                "weights_sha256": trains["full"].get("pretrained_weights_sha256")}
    # The record's runs of the pipeline's backbone (another backbone has its own weights file).
    ok = record[(record.status == "ok") & pd.Series([not o.get("model.name") for o in record.overrides],
                                                    index=record.index, dtype=bool)] \
        if record is not None else None
    programme = {k: sorted(set(ok[k].dropna())) if ok is not None and k in ok else [] for k in pipeline}
    # None without a record to set beside the pipeline's numbers.
    same = all(programme[k] == [v] for k, v in pipeline.items()) if any(programme.values()) else None
    return {"pipeline": pipeline, "programme": programme, "same_data": same}


def _clean(x):
    """JSON-ready: no NaN (null), numpy scalars as Python, 6 decimals so `dvc metrics diff` reads well."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    x = x.item() if hasattr(x, "item") else x
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, 6)
    return x


def build(metrics_dir="metrics", predictions_dir=PREDICTIONS, params=None, record=None, correct=None,
          robustness_path=CORRUPTED):
    """Everything the paper states, as one JSON-ready dict (metrics/compare.json). record and
    correct: woof.record.load's (None: no programme)."""
    m = Path(metrics_dir)
    df = collect(m)
    r = {row["method"]: row for row in df.to_dict("records")}
    split = df.split.iloc[0]
    tests = paired_tests(predictions_dir)
    data, cost = _optional(m / "data.json") or {}, _optional(m / "cost.json") or {}
    trains = {k: read_json(m / f"train_{k}.json") for k in ("full", "lora")}
    out = {k: {c: v for c, v in row.items() if c != "method"} for k, row in r.items()}
    out.update(headline(r))
    out["split"] = split
    out["paired"] = tests
    out["verdicts"] = verdicts(r, tests.get(split, {}))
    out["data"], out["cost"] = data, cost
    out["attention"], out["drift"] = _optional(m / "attention.json"), _optional(m / "drift.json")
    if out["drift"] and "full" in out["drift"] and "lora" in out["drift"]:
        out["verdicts"]["drift_full_over_lora"] = out["drift"]["full"]["overall"] / out["drift"]["lora"]["overall"]
    # The images the backbone saw in pretraining: all but the ImageNet-val-origin ones.
    n = {s: data.get(f"{s}_images") for s in ("train", "val", "test")}
    out["seen_share"] = (n["train"] + n["val"]) / sum(n.values()) if n["test"] else None
    out["provenance"] = provenance(data, trains, record)
    out["beyond"] = beyond(m, robustness_path)
    # each method's training-step speed and memory per backbone (`python -m woof.bench methods --json`)
    out["method_costs"] = _optional(m / "bench_methods.json")
    has_record = record is not None and (record.status == "ok").any()
    out["programme"] = summarize(record, correct, params, _need(cost, "blocks", m / "cost.json")) if has_record else None
    for b in (out["programme"] or {}).get("best", {}).values():
        b["trainable_share"] = b["trainable_params"] / r["full"]["total_params"]
    return _clean(out)
