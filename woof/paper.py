"""The paper: words only. Every number, verdict and figure comes from the compare stage's results
file (metrics/compare.json, woof.compare) and its figures; this module computes nothing, it says
what it finds there, once, and woof.document typesets it as report.md and report.pdf. The same
answer is written into README.md between the RESULTS markers (`readme_block`).
"""
from pathlib import Path

from woof.document import Doc, Figure, Heading, Para, Table
from woof.prose import attention, comparison_words, introduction, limitations, method, related_work, setup
from woof.io import at, atomic_path, read_json
from woof.labels import SPLIT_NAMES, count, label, mean_std, pct, pct_ci, points, pvalue

# ---------------------------------------------------------------- the content

TITLE = "LoRA or Full Fine-Tuning? A Clean-Test Comparison on ImageWoof with ViT-Tiny"


def build(results_path="metrics/compare.json", plots_dir="plots", params=None):
    """The paper from the compare stage's results (and params.yaml for the configuration's words)."""
    res, p = read_json(results_path), Path(plots_dir)
    params = params or {}
    split = res["split"]
    prog = res.get("programme")
    ctx = dict(res=res, r={m: res[m] for m in ("zero_shot", "full", "lora")}, split=split,
               paired=res["paired"].get(split, {}), paired_all=res["paired"], v=res["verdicts"],
               data=res.get("data") or {}, cost=res.get("cost") or {}, att=res.get("attention"),
               drift=res.get("drift"), prog=prog if prog and prog.get("best") else None, params=params, plots=p,
               same_data=res["provenance"]["same_data"], beyond=res.get("beyond"))
    blocks = [*introduction(ctx), *related_work(), *method(ctx), *setup(ctx), *results(ctx), *attention(ctx),
              *beyond_top1(ctx), *discussion(ctx), *limitations(ctx), *conclusion(ctx)]
    return Doc(TITLE, abstract(ctx), blocks)


def _answer(ctx):
    """(LoRA row, full row, paired test, where they come from): the programme's val-best runs
    when it has both, else the pipeline's default-config runs."""
    prog = ctx["prog"]
    if prog and "full" in prog["best"] and "lora" in prog["best"] and prog.get("lora_vs_full"):
        b = prog["best"]
        return b["lora"], b["full"], prog["lora_vs_full"], "programme"
    r = ctx["r"]
    conv = lambda m: {"test_top1": r[m]["top1"], "test_top1_lo": r[m]["top1_lo"], "test_top1_hi": r[m]["top1_hi"],  # noqa: E731
                      "trainable_params": r[m]["trainable_params"], "trainable_pct": r[m]["trainable_pct"],
                      "trainable_share": r[m]["trainable_share"], "name": m}
    return conv("lora"), conv("full"), ctx["paired"].get("lora_vs_full"), "pipeline"


def _zero_shot(ctx, source):
    """The zero-shot model's top-1 from the same source as the answer (the same images and data)."""
    return ctx["prog"]["zero_shot"]["test_top1"] if source == "programme" else ctx["r"]["zero_shot"]["top1"]


def _verdict(t, a="LoRA", b="full fine-tuning"):
    if t is None:
        return "no paired test is available"
    if not t["significant"]:
        return f"McNemar's exact test finds no significant difference ({pvalue(t['p_value'])})"
    return f"the difference is significant ({pvalue(t['p_value'])}) in favour of {a if t['difference'] > 0 else b}"


def abstract(ctx):
    lora, full, t, source = _answer(ctx)
    d = ctx["data"]
    if source == "programme":
        runs = ctx["prog"]["runs"]
        which = (f"the validation-best configuration of each method among the {runs['ok']} runs of our programme"
                 + (f" recorded so far ({runs['missing']} still to run)" if runs.get("missing") else ""))
    else:
        which = "the default configuration of each method"
    test_n = d.get("test_images") or ctx["r"]["full"]["n"]
    seen = ctx["res"]["seen_share"]
    return (f"Should one fine-tune every weight of a pretrained Vision Transformer or train a low-rank adapter? "
            f"We compare full fine-tuning and LoRA [@hu2022lora] for an ImageNet-pretrained ViT-Tiny on ImageWoof, "
            f"ten dog breeds cut out of ImageNet, on a two-core CPU. Since {pct(seen, 0)} of ImageWoof's images are ImageNet "
            f"training images the backbone has already seen, we report accuracy on a clean test split of the "
            f"{count(test_n)} ImageNet-validation-origin images, choose every hyperparameter on the validation split, "
            f"and compare models with paired tests. For {which}, LoRA reaches "
            f"{pct_ci(lora['test_top1'], lora['test_top1_lo'], lora['test_top1_hi'])} clean-test top-1 against "
            f"{pct_ci(full['test_top1'], full['test_top1_lo'], full['test_top1_hi'])} for full fine-tuning, and "
            f"{_verdict(t)}. {seeds_sentence(lora, full, ctx)}{zero_shot_sentence(ctx)} {lora_size_sentence(lora, ctx)}"
            f"{second_round_sentence(ctx)}"
            f"{provenance_sentence(ctx)}{beyond_sentence(ctx)}")


def beyond_sentence(ctx):
    """The abstract's sentence on robustness and calibration ("" before those stages ran)."""
    b = ctx["beyond"]
    if not b:
        return ""
    m, c = b["models"], b["calibration"]
    return (f" On the same images under {len(b['corruptions'])} synthetic corruptions at {len(b['severities'])} severities, "
            f"full fine-tuning scores {pct(m['full']['corrupted'])}, LoRA {pct(m['lora']['corrupted'])} and the zero-shot "
            f"head {pct(m['zero_shot']['corrupted'])} (LoRA against full fine-tuning {_test_words(b['paired']['lora_vs_full'])}); "
            f"temperature scaling takes test calibration error from {pct(c['full']['test']['ece'])} to "
            f"{pct(c['full']['test']['ece_scaled'])} (full) and from {pct(c['lora']['test']['ece'])} to "
            f"{pct(c['lora']['test']['ece_scaled'])} (LoRA).")


def seeds_sentence(lora, full, ctx):
    """Both val-best configurations' test top-1 over their seeds, and Welch's t-test between the
    seed means, which weighs the gap against seed-to-seed variation ("" until both have reruns)."""
    sl, sf = lora.get("seeds", {}), full.get("seeds", {})
    p = (ctx["prog"] or {}).get("lora_vs_full_seeds_p", None) if sl and sf else None
    if sl.get("n", 0) < 2 or sf.get("n", 0) < 2 or "lora_vs_full_seeds_p" not in (ctx["prog"] or {}):
        return ""
    ml, mf = sl["test_top1"], sf["test_top1"]
    return (f"Over {sl['n']} and {sf['n']} seeds the two score {mean_std(ml)} % and {mean_std(mf)} % on clean test "
            f"(Welch's t-test between the seed means: {pvalue(p)}). ")


def changes_verdict(sr):
    """Whether layer decay changes the LoRA-vs-full verdict, as the abstract, section 5 and the README say it."""
    return ("changes" if sr.get("llrd_changes_verdict") else "does not change") + " the verdict"


def second_round_sentence(ctx):
    """The second round for the abstract and the conclusion: full fine-tuning with layer decay and
    DoRA against the first round's val-best runs, and LoRA against full on the CNN ("" before any
    of their runs)."""
    prog = ctx["prog"] or {}
    sr, best, cnn = prog.get("second_round") or {}, prog.get("best", {}), prog.get("cnn") or {}
    tests, said = sr.get("paired", {}), []
    if tests.get("llrd_vs_full") and tests.get("lora_vs_llrd"):
        ema = " and an EMA of its weights" if (sr.get("ema") or {}).get("helps_on_val") else ""
        said.append(f"Full fine-tuning with layer-wise learning-rate decay{ema}, the standard ViT recipe, reaches "
                    f"{pct(best['llrd']['test_top1'])}, {_difference(tests['llrd_vs_full'])} against plain full "
                    f"fine-tuning; LoRA against it: {_difference(tests['lora_vs_llrd'])}, so layer decay "
                    + changes_verdict(sr))
    t = tests.get("dora_vs_lora")
    if t:
        said.append("DoRA and LoRA are right on exactly the same test images" if t["a_only"] == t["b_only"] == 0
                    else f"DoRA against LoRA: {_difference(t)}")
    if cnn.get("lora_vs_full"):
        said.append(f"on a CNN, MobileOne-S0, LoRA against full fine-tuning: {_difference(cnn['lora_vs_full'])}, "
                    + ("the same verdict" if cnn.get("vit_verdict_holds") else "another verdict than the ViT's"))
    if not said:
        return ""
    partial = any(r["ok"] < r["of"] for r in sr.get("recorded", {}).values())
    said[0] = said[0][0].upper() + said[0][1:]
    return " " + "; ".join(said) + (" (provisional: not every run of the second round is recorded)" if partial else "") + "."


def lora_size_sentence(lora, ctx):
    """How much that LoRA trains, and what an adapter file weighs (the pipeline's rank: the
    programme keeps no checkpoints)."""
    r = ctx["r"]
    return (f"That LoRA trains {count(lora['trainable_params'])} parameters, "
            f"{pct(lora['trainable_share'])} of the model's "
            f"{count(r['full']['total_params'])}; the pipeline's rank-{ctx['params'].get('lora', {}).get('rank', '?')} "
            f"adapter file is {r['lora']['checkpoint_mb']:.2f} MB against {r['full']['checkpoint_mb']:.1f} MB for a full model.")


def zero_shot_sentence(ctx):
    """Whether fine-tuning beat the untrained ImageNet head, on the clean split and on val: for the
    models the abstract compares (the programme's val-best runs, else the pipeline's)."""
    source = _answer(ctx)[3]
    zs = pct(_zero_shot(ctx, source))  # the zero-shot run on the same images as the tests below
    prog = ctx.get("prog")
    if source == "programme":
        tests = {s: [prog["best"][m]["vs_zero_shot"].get(s) for m in ("full", "lora")] for s in ("test", "val")}
    else:
        tests = {s: [ctx["paired_all"].get(s, {}).get(f"{m}_vs_zero_shot") for m in ("full", "lora")]
                 for s in ("test", "val")}
    head = tests[ctx["split"]]
    if None in head:
        return f"The zero-shot ImageNet head restricted to the ten breeds scores {zs}."
    ps = " and ".join(pvalue(t["p_value"]) for t in head)
    won = [t["significant"] and t["difference"] > 0 for t in head]
    if all(won):
        text = f"Both beat the zero-shot ImageNet head ({zs}) significantly ({ps})."
    elif not any(won):
        text = f"Neither beats the zero-shot ImageNet head ({zs}) significantly on this split (McNemar {ps})"
        val = tests["val"]
        if ctx["split"] != "val" and None not in val and all(t["significant"] and t["difference"] > 0 for t in val):
            text += (", although both do on the validation split that the backbone has largely seen "
                     f"({' and '.join(pvalue(t['p_value']) for t in val)})")
        text += "."
    else:
        text = (f"Against the zero-shot ImageNet head ({zs}) only "
                f"{'full fine-tuning' if won[0] else 'LoRA'} is significantly better ({ps}).")
    return text


def provenance_sentence(ctx):
    """Said plainly when the pipeline's numbers and the programme's come from other bytes."""
    if ctx["same_data"] is not False or ctx["prog"] is None:  # None: no record of this backbone to compare
        return ""
    p = ctx["res"]["provenance"]
    return (f" The pipeline's own runs in this report used another archive or other weights than the programme "
            f"(archive sha256 {str(p['pipeline']['archive_sha256'])[:12]} against "
            f"{', '.join(s[:12] for s in p['programme']['archive_sha256']) or 'unrecorded'}), so their numbers are "
            "shown apart and never paired with the programme's.")


def results(ctx):
    r, split, paired = ctx["r"], ctx["split"], ctx["paired"]
    name = SPLIT_NAMES[split]
    rows = [[label(m, True), pct_ci(row["top1"], row["top1_lo"], row["top1_hi"]), pct(row["val_top1"]),
             count(row["trainable_params"]), "-" if not row["train_minutes"] else f"{row['train_minutes']:.1f}",
             "-" if row["checkpoint_mb"] is None else f"{row['checkpoint_mb']:.2f}"] for m, row in r.items()]
    blocks = [Heading("Results"),
              Table(["method", f"{name} top-1 [95 % CI]", "val top-1", "trainable params", "train min", "checkpoint MB"],
                    rows, f"The pipeline's default configurations on the {name} split ({count(r['full']['n'])} images). "
                          "LoRA's checkpoint is its adapter; the backbone is shared.")]
    if paired:
        prow = [[f"{label(a, True)} vs {label(b, True)}", f"{100 * t['difference']:+.1f}",
                 f"{100 * t['difference_ci'][0]:+.1f} to {100 * t['difference_ci'][1]:+.1f}",
                 str(t["a_only"]), str(t["b_only"]), pvalue(t["p_value"])]
                for pair, t in paired.items() for a, b in [pair.split("_vs_")]]
        blocks.append(Table(["comparison", "difference (points)", "95 % CI", "only first right", "only second right", "McNemar"],
                            prow, f"Paired comparisons on the same {name} images."))
    blocks.append(Para(pipeline_discussion(ctx)[0]))
    for key, caption in (("accuracy", "Top-1 per method on validation and on the clean test split, 95 % Wilson intervals."),
                         ("curves", "Training and validation loss and accuracy per epoch."),
                         ("per_class", f"Per-class accuracy on the {name} split.")):
        path = ctx["plots"] / f"compare_{key}.png"
        if path.exists():
            blocks.append(Figure(path.as_posix(), caption, {"accuracy": 55, "curves": 85, "per_class": 50}[key]))
    prog = ctx["prog"]
    if prog is None:
        blocks.append(Para("The experiment programme's record (`metrics/experiments.csv`) is absent or has no finished "
                           "run, so the rank, learning-rate, data-fraction and freezing studies are not shown."))
    else:
        blocks += programme_results(ctx)
    blocks += cost_results(ctx)
    return blocks


def programme_results(ctx):
    prog, plots = ctx["prog"], ctx["plots"]
    rows = []
    for family, b in prog["best"].items():
        s = b["seeds"]
        seeds = f"{mean_std(s['test_top1'])} ({s['n']})" if s["n"] > 1 else "-"
        rows.append([label(family), f"`{b['name']}`", pct(b["val_top1"]),
                     pct_ci(b["test_top1"], b["test_top1_lo"], b["test_top1_hi"]), seeds,
                     count(b["trainable_params"]), f"{b['train_minutes']:.1f}"])
    blocks = [Heading("The experiment programme", 2),
              Para(f"The programme has run {prog['runs']['ok']} configurations"
                   + (f" ({prog['runs']['failed']} failed, listed in the record)" if prog["runs"]["failed"] else "")
                   + (f"; {prog['runs']['missing']} are still to run, so the figures show a partial programme"
                      if prog["runs"].get("missing") else "")
                   + ". The table below lists the validation-best run of each method with its clean-test numbers."),
              Table(["method", "val-best run", "val top-1", "test top-1 [95 % CI]", "test mean ± std (seeds)",
                     "trainable", "min"], rows, "Validation-best configuration of each method (selection on val, "
                                               "numbers on the clean test split).")]
    t = prog.get("lora_vs_full")
    if t:
        blocks.append(Para(f"Between the two validation-best configurations, {' '.join(_paired_sentence(t))}"))
    if prog.get("lora_saturation_rank") and len(prog.get("lora_ranks", [])) >= 3:
        blocks.append(Para(f"At a fixed scale alpha/r = 2, LoRA's validation accuracy stops improving at rank "
                           f"{prog['lora_saturation_rank']}: no larger rank is significantly better on val (McNemar, 5 %)."))
    blocks += freezing_paragraph(prog.get("freezing") or [])
    blocks += fractions_paragraph(prog.get("fractions") or [])
    blocks += throughput_paragraph(prog.get("throughput_defaults") or {})
    blocks += second_round_paragraph(prog)
    blocks += method_costs_table(ctx["res"].get("method_costs"))
    blocks += cnn_paragraph(prog.get("cnn"))
    figs = {"frontier": "Clean-test top-1 (95 % CI) against trainable parameters for every run on the full training set.",
            "rank_lr": "Left: LoRA validation (solid) and test (dashed) top-1 against rank at alpha = 2r, one line per "
                       "learning rate. Right: full fine-tuning against learning rate.",
            "fractions": "Clean-test top-1 against the share of training images for full fine-tuning, LoRA and training "
                         "from scratch.",
            "freeze": "Top-1 against the number of frozen blocks (0: full fine-tuning; all: linear probe).",
            "cost": "Training minutes and peak memory (process RSS) against clean-test top-1."}
    for key, caption in figs.items():
        path = plots / "programme" / f"{key}.png"
        if path.exists():
            blocks.append(Figure(path.as_posix(), caption, 80 if key in ("rank_lr", "cost") else 55))
    return blocks


def _difference(t):
    lo, hi = t["difference_ci"]
    return (f"{100 * t['difference']:+.1f} points (95 % CI {100 * lo:+.1f} to {100 * hi:+.1f}, McNemar "
            f"{pvalue(t['p_value'])}{holm_note(t)})")


def holm_note(t):
    """A significant answer test's p after Holm's correction for the tests made with it (compare's
    answer_tests); "" for any other test, whose p Holm can only raise."""
    if not t.get("significant") or "p_holm" not in t:
        return ""
    return f"; {pvalue(t['p_holm'])} after Holm's correction for the {t['family']} tests of the answer"


def freezing_paragraph(points):
    """Where partial freezing and the linear probe sit: each against full fine-tuning at the
    freeze runs' lr (frozen blocks 0), paired on the clean test images."""
    ref = next((p for p in points if p["frozen_blocks"] == 0), None)
    others = [p for p in points if p["vs_full"] and p["vs_full"].get("test")]
    if ref is None or not others:
        return []

    def sits(p):
        return (f"{pct_ci(p['test_top1'], p['test_top1_lo'], p['test_top1_hi'])}, "
                f"{_difference(p['vs_full']['test'])}, val {pct(p['val_top1'], 2)}")
    frozen = [f"k = {p['frozen_blocks']} {sits(p)}" for p in others if p["name"].startswith("freeze-")]
    probe = [f"the linear probe (`{p['name']}`, the val-best of its learning rates; all {p['frozen_blocks']} blocks "
             f"frozen) {sits(p)}" for p in others if not p["name"].startswith("freeze-")]
    text = (f"**Freezing and probing.** Against full fine-tuning at its default learning rate (`{ref['name']}`, "
            f"{pct_ci(ref['test_top1'], ref['test_top1_lo'], ref['test_top1_hi'])} on the clean test split, val "
            f"{pct(ref['val_top1'], 2)}), paired on the same test images: ")
    if frozen:
        text += "freezing the patch embedding and the first k blocks at the same learning rate gives " + "; ".join(frozen)
    text += ("; " if frozen and probe else "") + "; ".join(probe) + "."
    return [Para(text)]


def fractions_paragraph(points):
    """How much data pretraining saves: each method's clean-test top-1 at every recorded share of
    the training images, and what the smallest share costs against all of them."""
    if not any(p["fraction"] < 1 for p in points):
        return []
    names = {"full": "full fine-tuning", "lora": "LoRA", "scratch": "from scratch"}
    by = {}
    for p in points:
        by.setdefault(p["family"], []).append(p)
    share = lambda p: f"{100 * p['fraction']:g} %"  # noqa: E731
    text = ("**Data fractions.** Clean-test top-1 by share of the training images: "
            + "; ".join(f"{names[f]} " + ", ".join(f"{pct(p['test_top1'])} ({share(p)})" for p in ps)
                        for f, ps in by.items()) + ".")
    for f, ps in by.items():
        small = ps[0]  # sorted by fraction
        if small["vs_all_images"]:
            text += f" Against all the images, {names[f]} on {share(small)} of them moves by {_difference(small['vs_all_images'])}."
    scratch = next((p for p in by.get("scratch", []) if p["fraction"] == 1.0), None)
    if scratch and "full" in by:
        small = by["full"][0]
        text += (f" From scratch on every training image the ViT reaches {pct(scratch['test_top1'])}, against "
                 f"{pct(small['test_top1'])} for full fine-tuning of the pretrained one on {share(small)} of them.")
    elif "scratch" in by:
        text += " The from-scratch run on every training image is not recorded yet."
    return [Para(text)]


def throughput_paragraph(fast):
    """What the pipeline's throughput defaults cost: the precision block against fp32 eager."""
    names = {"full": "full fine-tuning", "lora": "LoRA"}
    parts = []
    for m, f in fast.items():
        if f.get("test"):
            parts.append(f"{names[m]} moves by {_difference(f['test'])} on test and "
                         f"{100 * f['val']['difference']:+.2f} on val, training {f['speedup']:.2f}x as fast")
    if not parts:
        return []
    precision = next(iter(fast.values()))["precision"]
    return [Para(f"**Precision and compilation.** The pipeline's defaults train compiled in {precision} "
                 f"(`train.precision: auto`, `train.compile: true`); the programme's runs stay in fp32 eager. "
                 f"Against the same configuration in fp32 eager, " + "; ".join(parts) + ".")]


def second_round_paragraph(prog):
    """Layer decay and DoRA (issue 33): each one's val-best run so far against the first round's
    val-best full fine-tuning and LoRA, paired on the same clean test images."""
    sr, best = prog.get("second_round"), prog["best"]
    if not sr:
        return []
    text = ["**The second round.** Two objections to the first: that full fine-tuning of a ViT is run with layer-wise "
            "learning-rate decay [@bao2022beit] (and often an EMA of its weights), and that DoRA [@liu2024dora] is the "
            "stronger low-rank method."]
    for fam, vs in (("llrd", (("llrd_vs_full", "plain full fine-tuning"), ("lora_vs_llrd", None))),
                    ("dora", (("dora_vs_lora", "LoRA"), ("dora_vs_full", "full fine-tuning"),
                              ("dora_vs_llrd", "full fine-tuning with layer decay")))):
        rec, b = sr["recorded"][fam], best.get(fam)
        if b is None:
            text.append(f"{label(fam, True)}: none of its {rec['of']} runs is recorded yet.")
            continue
        part = (f"{label(fam, True)} ({rec['ok']} of {rec['of']} runs recorded"
                + ("; the val-best so far is provisional" if rec["ok"] < rec["of"] else "") + f"): `{b['name']}` reaches "
                f"{pct(b['val_top1'], 2)} on val and {pct_ci(b['test_top1'], b['test_top1_lo'], b['test_top1_hi'])} on the "
                "clean test split")
        tests = [(sr["paired"].get(k), who) for k, who in vs]
        part += "".join(f"; against {who}'s val-best, {_difference(t)}" if who else
                        f"; LoRA against it, {_difference(t)}" for t, who in tests if t)
        text.append(part + ".")
        if fam == "dora" and len(sr.get("dora_vs_lora_by_seed") or []) > 1:
            text.append(same_seed_sentence(sr["dora_vs_lora_by_seed"]))
        if fam == "llrd" and sr.get("ema"):
            text.append(ema_sentence(sr["ema"]))
    if sr.get("llrd_changes_verdict") is not None:
        text.append(f"Layer decay {changes_verdict(sr)} between LoRA and full fine-tuning.")
    return [Para(" ".join(text))]


def same_seed_sentence(pairs):
    """How far DoRA and LoRA at the same seed disagree, image by image (compare's by_seed)."""
    most = {s: max(p[s]["a_only"] + p[s]["b_only"] for p in pairs) for s in ("val", "test")}
    n = {s: pairs[0][s]["n"] for s in ("val", "test")}
    alike = all(most[s] <= 0.01 * n[s] for s in most)  # 1 % of the images: far inside either interval
    return (f"Trained with the same seed, exactly one of DoRA and LoRA is right on at most {most['test']} of the "
            f"{count(n['test'])} test images and {most['val']} of the {count(n['val'])} val images, over their "
            f"{len(pairs)} seeds" + (": at this rank and learning rate DoRA is practically LoRA, image by image."
                                     if alike else "."))


def ema_sentence(e):
    """What an EMA of the weights did to the val-best layer-decay configuration."""
    verdict = ("helps on val, so it is layer decay's val-best configuration" if e["helps_on_val"] else
               "does not help on val, so the val-best stays the run without it")
    return (f"The same configuration with an EMA of its weights (decay {e['decay']:g}, `{e['name']}`) reaches "
            f"{pct(e['val_top1'], 2)} on val against {pct(e['base_val_top1'], 2)} without, and "
            f"{pct_ci(e['test_top1'], e['test_top1_lo'], e['test_top1_hi'])} on the clean test split: the EMA {verdict}"
            + (f"; paired against the run without it, {_difference(e['vs_base'])}." if e.get("vs_base") else "."))


def method_costs_table(costs):
    """Each method's training step per backbone, measured in one bench run."""
    if not costs:
        return []
    rows = []
    for model, by_row in costs["models"].items():
        full = by_row.get("full fine-tuning")
        for name, r in by_row.items():
            rows.append([model, name, count(r["trainable"]), f"{r['images_per_s']:.1f}",
                         f"{full['step_ms'] / r['step_ms']:.2f}x" if full else "-", f"{r['peak_mb']:.0f}"])
    return [Table(["backbone", "method", "trainable", "images/s", "vs full", "peak tensor MB"], rows,
                  f"One training step of each method per backbone (batch {costs['batch_size']}, fp32 eager, median of "
                  f"{costs['steps']} steps, `python -m woof.bench {costs['suite']}`, {costs['machine']}, "
                  f"{costs['threads']} threads, {costs['date']}); adapters on the ViT's linear layers and on "
                  "MobileOne's 1x1 convolutions, rank 8.")]


def cnn_paragraph(cnn):
    """The second backbone: MobileOne-S0's val-best run of each method, against its own zero-shot
    head and LoRA against full, and whether the ViT's verdict holds on it."""
    if not cnn or not cnn["best"]:
        return []
    zs = cnn["zero_shot"]
    text = [f"**A CNN backbone.** MobileOne-S0 [@vasu2023mobileone] (fused, 224 px; LoRA on its 1x1 convolutions) starts at "
            f"{pct_ci(zs['test_top1'], zs['test_top1_lo'], zs['test_top1_hi'])} zero-shot on the clean test split "
            f"(val {pct(zs['val_top1'], 2)})"
            + (f"; {cnn['runs']['ok']} of its runs are recorded, {cnn['runs']['missing']} still to run." if cnn["runs"]["missing"]
               else ".")]
    for kind, b in cnn["best"].items():
        text.append(f"Its val-best {label(kind)} (`{b['name']}`, val {pct(b['val_top1'], 2)}) reaches "
                    f"{pct_ci(b['test_top1'], b['test_top1_lo'], b['test_top1_hi'])}, "
                    f"{_difference(b['vs_zero_shot'])} against its zero-shot head.")
    t = cnn.get("lora_vs_full")
    if t:
        text.append(f"LoRA against full fine-tuning on the CNN: {_difference(t)}; "
                    + ("the ViT's verdict holds on this backbone." if cnn.get("vit_verdict_holds")
                       else "the verdict differs from the ViT's."))
    return [Para(" ".join(text))]


def _paired_sentence(t):
    lo, hi = t["difference_ci"]
    return [f"LoRA is right alone on {t['a_only']} images and full fine-tuning alone on {t['b_only']} (difference "
            f"{100 * t['difference']:+.1f} points, 95 % CI {100 * lo:+.1f} to {100 * hi:+.1f});",
            _verdict(t) + "."]


def cost_results(ctx):
    cost, r = ctx["cost"], ctx["r"]
    blocks = [Heading("Cost", 2)]
    if cost:
        names = {"full": "full fine-tuning", "lora": "LoRA", "linear_probe": "linear probe", "frozen": "frozen-k"}

        def measured(k):  # what the pipeline's own trainings took, for the two methods it trains
            row = r.get(k)
            return ["-"] * 3 if row is None else [f"{row['train_minutes']:.1f}", f"{row['train_images_per_s']:.1f}",
                                                  f"{row['checkpoint_mb']:.2f}"]
        rows = [[names.get(k, k), count(v["trainable_params"]), f"{v['train_flops'] / 1e9:.1f}",
                 f"{v['weights_mb']:.1f}", f"{v['grads_mb']:.1f}", f"{v['optimizer_mb']:.1f}", f"{v['activations_mb']:.1f}",
                 *measured(k)]
                for k, v in cost.items() if isinstance(v, dict) and "train_flops" in v]
        blocks.append(Table(["method", "trainable", "train GFLOPs/step", "weights MB", "grads MB", "AdamW MB",
                             "activations MB", "train min", "img/s", "checkpoint MB"],
                            rows, "Cost per method: FLOPs per training step and the memory split, counted by the cost "
                                  "stage (`metrics/cost.json`); minutes, training images/s and the saved checkpoint "
                                  "(LoRA: its adapter) measured in the pipeline's runs."))
    lenet = cost.get("lenet5")
    if lenet:
        names = {"full": "full fine-tuning", "lora": "LoRA r=2 on fc1-fc3", "linear_probe": "probe (fc3 only)"}
        rows = [[names.get(k, k), count(v["trainable_params"]), f"{v['train_flops'] / 1e3:,.0f}",
                 f"{v['inference_flops'] / 1e3:,.0f}", f"{v['grads_mb'] * 1024:.1f}", f"{v['optimizer_mb'] * 1024:.1f}",
                 f"{v['activations_mb'] * 1024:.1f}"] for k, v in lenet.items()]
        total = next(iter(lenet.values()))["total_params"]
        blocks += [Para(f"**A worked example.** The same accounting on LeNet-5 ({count(total)} parameters, one 28x28 grey "
                        "image) can be checked by hand: AdamW keeps 8 bytes per trainable parameter, gradients 4, and "
                        "freezing all but the last layer removes the weight gradients and the backward below it."),
                   Table(["LeNet-5", "trainable", "train kFLOPs/step", "inference kFLOPs", "grads KB", "AdamW KB",
                          "activations KB"], rows, "The LeNet-5 worked example (`metrics/cost.json`, `lenet5`).")]
    tf, tl = r["full"]["train_minutes"], r["lora"]["train_minutes"]
    blocks.append(Para(f"Measured in the pipeline, full fine-tuning trained in {tf:.1f} min at "
                       f"{r['full']['train_images_per_s']:.1f} img/s and LoRA in {tl:.1f} min at "
                       f"{r['lora']['train_images_per_s']:.1f} img/s; LoRA's adapter file is "
                       f"{r['lora']['checkpoint_mb']:.2f} MB against {r['full']['checkpoint_mb']:.1f} MB for the model."))
    return blocks


def _pts(x):
    return f"{100 * abs(x):.1f} point{'' if round(100 * abs(x), 1) == 1 else 's'}"


def paired_sentences(name_a, name_b, t, split_name):
    """What a paired comparison (woof.stats.compare_paired) says, in two sentences."""
    lo, hi = t["difference_ci"]
    first = (f"On the {t['n']:,} {split_name} images they disagree on {t['a_only'] + t['b_only']:,}: only "
             f"{name_a} is right on {t['a_only']:,}, only {name_b} on {t['b_only']:,} (difference "
             f"{points(t['difference'])} points, paired 95 % bootstrap CI {points(lo)} to {points(hi)}).")
    if t["significant"]:
        second = (f"McNemar's exact test gives {pvalue(t['p_value'])}: the difference is significant at the "
                  f"5 % level, {name_a if t['difference'] > 0 else name_b} is better on these images.")
    else:
        second = (f"McNemar's exact test gives {pvalue(t['p_value'])}: not significant at the 5 % level, so these "
                  "images cannot tell the two apart.")
    return [first, second]


def pipeline_discussion(ctx):
    """Three paragraphs on the pipeline's own two models (accuracy, cost, when to use LoRA), each
    sentence following a verdict of the compare stage."""
    r, v, paired = ctx["r"], ctx["v"], ctx["paired"]
    full, lora, zs = r["full"], r["lora"], r["zero_shot"]
    split_name = SPLIT_NAMES[ctx["split"]]
    d = v["lora_minus_full"]
    acc = f"{100 * lora['top1']:.2f} % vs {100 * full['top1']:.2f} % {split_name} top-1"
    if d == 0:
        verdict = f"LoRA and full fine-tuning reach the same top-1 ({acc})."
    elif v["level"]:
        verdict = f"LoRA matches full fine-tuning within 1 point ({acc}; {'LoRA' if d > 0 else 'full fine-tuning'} ahead by {_pts(d)})."
    else:
        verdict = f"{'LoRA' if d > 0 else 'Full fine-tuning'} wins by {_pts(d)} ({acc})."
    para1 = [verdict]
    if "lora_vs_full" in paired:
        para1 += paired_sentences("LoRA", "full fine-tuning", paired["lora_vs_full"], split_name)
    base = []
    for m in ("full", "lora"):
        g = v["vs_zero_shot"][m]
        where = "above" if g > 0 else "below" if g < 0 else "level with"
        t = paired.get(f"{m}_vs_zero_shot")
        sig = "" if t is None else f" ({pvalue(t['p_value'])}, {'significant' if t['significant'] else 'not significant'})"
        base.append(f"{label(m)} is {_pts(g)} {where}{sig}")
    para1.append("Against the zero-shot baseline (the pretrained ImageNet head restricted to "
                 f"the task's classes, {100 * zs['top1']:.2f} %): " + "; ".join(base) + ".")

    cost = [f"LoRA trains {lora['trainable_pct']:.2f} % of the parameters ({count(lora['trainable_params'])} of "
            f"{count(lora['total_params'])}) against {full['trainable_pct']:.0f} % for full fine-tuning."]
    tl, tf, speed = lora["train_minutes"], full["train_minutes"], v["speed"]
    if speed:
        cost.append(f"It trained in {tl:.1f} min against {tf:.1f} min, "
                    + {"faster": f"{v['lora_speedup']:.2f}x faster.", "slower": f"{1 / v['lora_speedup']:.2f}x slower.",
                       "same": "about the same time."}[speed])
    if v["memory_comparable"] and full.get("peak_memory_kind") == "cuda_allocated":
        cost.append(f"Peak GPU memory held by tensors was {lora['peak_memory_mb']:.0f} MB against "
                    f"{full['peak_memory_mb']:.0f} MB ({abs(v['memory_saved_mb'] / full['peak_memory_mb']) * 100:.0f} % "
                    f"{'less' if v['memory_saved_mb'] > 0 else 'more'}).")
    elif v["memory_comparable"]:
        # RSS: the whole process, including the cached dataset both runs hold, so a ratio would
        # understate the method's difference; the gap in MB does not.
        cost.append(f"Peak process memory (RSS, which includes the cached dataset both runs hold) was "
                    f"{lora['peak_memory_mb']:.0f} MB against {full['peak_memory_mb']:.0f} MB, "
                    f"{abs(v['memory_saved_mb']):.0f} MB {'less' if v['memory_saved_mb'] > 0 else 'more'}.")
    cl, cf = lora["checkpoint_mb"], full["checkpoint_mb"]
    cost.append(f"The LoRA adapter takes {cl:.2f} MB on disk against {cf:.2f} MB for the full model "
                f"({v['checkpoint_ratio_inverse']:.0f}x smaller)." if v["adapter_smaller"] else
                f"The LoRA adapter takes {cl:.2f} MB, not smaller than the {cf:.2f} MB full model.")

    when = []
    if not v["lora_behind"]:
        if v["lora_ahead"]:
            when.append(f"LoRA is the better choice here on accuracy alone ({_pts(d)} ahead).")
        if v["adapter_smaller"]:
            when.append(f"{'It is also' if when else 'Here LoRA is'} the better choice whenever several task-specific "
                        f"variants must be stored or served from one shared backbone: each extra task costs {cl:.2f} MB "
                        f"instead of {cf:.2f} MB, at " + ("no top-1 cost." if d >= 0 else f"a top-1 cost of {_pts(d)}."))
        if speed == "faster":
            when.append(f"{'It also' if when else 'LoRA'} trained {v['lora_speedup']:.1f}x faster on this hardware, "
                        "which favours it when training time is the constraint.")
        if not when:
            when.append("LoRA is competitive on accuracy here but saved neither storage nor training time, "
                        "so these numbers give no reason to prefer it.")
    else:
        when.append(f"Full fine-tuning is the better choice when its {_pts(d)} of top-1 matter more than storage; "
                    + (f"LoRA remains the choice when many variants must be kept ({cl:.2f} MB each vs {cf:.2f} MB)."
                       if v["adapter_smaller"] else "LoRA saves no storage here either."))
    return [" ".join(para1), " ".join(cost), " ".join(when)]


# ---------------------------------------------------------------- beyond clean top-1

def _test_words(t):
    """A paired_scores / compare_paired result as "+1.2 points [0.3, 2.0], p = 0.01"."""
    lo, hi = t["difference_ci"]
    return f"{points(t['difference'])} points [{points(lo)}, {points(hi)}], {pvalue(t['p_value'])}"


def beyond_top1(ctx):
    """Robustness to corruptions, calibration and the WiSE-FT path of the pipeline's three models."""
    b = ctx["beyond"]
    if not b:
        return []
    m, t = b["models"], b["paired"]
    names = ", ".join(c.replace("_", " ") for c in b["corruptions"])
    worst = max(b["severities"])
    rob = [f"We corrupt the {count(b['images'])} clean test images with {len(b['corruptions'])} common corruptions "
           f"({names}) at {len(b['severities'])} severities, in the manner of ImageNet-C [@hendrycks2019benchmarking], "
           f"with torchvision: {b['copies']} copies of each image, deterministic, so every model sees the same bytes. "
           f"The zero-shot head falls from {pct(m['zero_shot']['clean'])} to {pct(m['zero_shot']['worst'])} at severity "
           f"{worst}. Over all copies the zero-shot head scores {pct_ci(m['zero_shot']['corrupted'], *m['zero_shot']['corrupted_ci'])}, "
           f"full fine-tuning {pct_ci(m['full']['corrupted'], *m['full']['corrupted_ci'])} and LoRA "
           f"{pct_ci(m['lora']['corrupted'], *m['lora']['corrupted_ci'])}. The copies of one image are not independent, "
           f"so each model's score on an image is the share of its {b['copies']} copies it gets right, and models are "
           f"compared over the {count(b['images'])} images: a paired bootstrap for the interval and a sign-flip "
           f"permutation test for p. LoRA against full fine-tuning: {_test_words(t['lora_vs_full'])}; full fine-tuning "
           f"against the zero-shot head: {_test_words(t['full_vs_zero_shot'])}; LoRA against it: "
           f"{_test_words(t['lora_vs_zero_shot'])}."]
    rows = [[label(k, True), pct(x["clean"]), pct_ci(x["corrupted"], *x["corrupted_ci"]), pct(x["worst"]),
             f"{100 * x['retained']:.0f} %"] for k, x in m.items()]
    blocks = [Heading("Beyond clean top-1"), Heading("Robustness to corruptions", 2), Para(" ".join(rob)),
              Table(["model", "clean test", "corrupted, mean [95 % CI]", f"severity {worst}", "kept of clean"], rows,
                    f"Top-1 on the clean test images and on their {b['copies']} corrupted copies each.")]
    if (ctx["plots"] / "robustness/severity.png").exists():
        blocks.append(Figure((ctx["plots"] / "robustness/severity.png").as_posix(),
                             "Top-1 against corruption severity (0: clean), the mean over corruptions and each one.", 95))
    c = b["calibration"]
    cal = [[label(k, True), f"{x['temperature']:.2f}", f"{100 * x['val']['ece']:.1f} % -> {100 * x['val']['ece_scaled']:.1f} %",
            f"{100 * x['test']['ece']:.1f} % -> {100 * x['test']['ece_scaled']:.1f} %",
            f"{x['test']['nll']:.3f} -> {x['test']['nll_scaled']:.3f}"] for k, x in c.items()]
    under = [label(k) for k, x in c.items() if x["temperature"] < 0.9]
    over = [label(k) for k, x in c.items() if x["temperature"] > 1.1]
    near = [label(k) for k, x in c.items() if 0.9 <= x["temperature"] <= 1.1]
    ls = {k: (ctx["params"].get(k) or {}).get("label_smoothing") for k in ("full", "lora")}
    words = [f"Expected calibration error ({b['calibration_bins']} equal-width confidence bins) and a temperature T "
             "fitted on validation by negative log-likelihood [@guo2017calibration], reported on the clean test split."]
    if under:
        words.append(f"T < 1 for {' and '.join(under)}: their probabilities are too soft, not too sharp"
                     + (f", as the label smoothing they were trained with ({ls['full']}) tends to make them"
                        if ls["full"] and ls["full"] == ls["lora"] and set(under) >= {label('full'), label('lora')} else "")
                     + ".")
    if over:
        words.append(f"T > 1 for {' and '.join(over)}: overconfident.")
    if near:
        words.append(f"T is within 0.1 of 1 for {' and '.join(near)}: nearly calibrated as it is.")
    best = min(c, key=lambda k: c[k]["test"]["ece_scaled"])
    words.append(f"After scaling, test ECE is at most {pct(max(x['test']['ece_scaled'] for x in c.values()))} "
                 f"(lowest: {label(best)}).")
    blocks += [Heading("Calibration", 2), Para(" ".join(words)),
               Table(["model", "T", "val ECE before -> after T", "test ECE before -> after T", "test NLL before -> after T"], cal,
                     "Calibration before and after temperature scaling (T fitted on validation).")]
    if (ctx["plots"] / "reliability.png").exists():
        blocks.append(Figure((ctx["plots"] / "reliability.png").as_posix(), "Reliability diagrams on the clean test split, "
                             "before and after temperature scaling; the diagonal is perfect calibration.", 85))
    w = b["path"]
    path = [f"Between the pretrained weights and each fine-tuned model lies the straight path theta(a) = (1 - a) theta_0 "
            f"+ a theta_ft (WiSE-FT [@wortsman2022robust]; for LoRA, the merged update scaled by a), at a in "
            f"{{{', '.join(f'{a:g}' for a in w['alphas'])}}}, chosen on validation."]
    for k, x in w["models"].items():
        inner = x["interior_beats_ends"]
        path.append(f"For {label(k)} validation picks a = {x['best_alpha']:g} ({pct(x['best_val'])} val, "
                    f"{pct(x['best_test'])} clean test, {pct(x['best_corrupted'])} corrupted at severity {w['path_severity']}; "
                    f"the fine-tuned end scores {pct(x['end_test'])} and {pct(x['end_corrupted'])})"
                    + (f", against the end on the same test images {_test_words(x['best_vs_end'])}"
                       if x["best_alpha"] != 1 else "")
                    + "; a point between scores " + ("above" if inner["test"] else "no higher than") + " both ends on clean test "
                    + "and " + ("above" if inner["corrupted"] else "no higher than") + " them on corrupted images.")
    blocks += [Heading("The path between the pretrained and the fine-tuned model", 2), Para(" ".join(path))]
    if (ctx["plots"] / "robustness/path.png").exists():
        blocks.append(Figure((ctx["plots"] / "robustness/path.png").as_posix(),
                             "Top-1 along the WiSE-FT path on validation, clean test and corrupted test images.", 80))
    return blocks


def robustness_discussion(ctx):
    """Does LoRA keep more of the pretrained model's robustness than full fine-tuning? In words."""
    b = ctx["beyond"]
    if not b:
        return None
    m, d = b["models"], b["paired"]["drop_lora_vs_full"]
    drop = {k: m[k]["clean"] - m[k]["corrupted"] for k in m}
    answer = ("yes: its drop is significantly smaller" if b["lora_keeps_more"] else
              "no: its drop is significantly larger" if d["significant"] else
              "not measurably: the difference between the two drops is within noise")
    return (f"**Does LoRA keep more of the pretrained model's robustness?** Here, {answer}. From clean to corrupted "
            f"images the zero-shot head loses {100 * drop['zero_shot']:.1f} points, full fine-tuning "
            f"{100 * drop['full']:.1f} and LoRA {100 * drop['lora']:.1f}; LoRA's drop minus full fine-tuning's, paired over "
            f"the same images, is {_test_words(d)}. Both fine-tuned models stay "
            + ("above" if min(m['full']['corrupted'], m['lora']['corrupted']) > m['zero_shot']['corrupted'] else "near")
            + " the zero-shot head under corruption, so on these in-distribution breeds fine-tuning did not trade "
              "robustness for clean accuracy" + ("." if min(m['full']['corrupted'], m['lora']['corrupted'])
                                                   > m['zero_shot']['corrupted'] else " measurably.")
            + " These corruptions are synthetic and the backbone is small; the large out-of-distribution gaps reported "
              "for LoRA on ImageNet-A-like shifts are a different test.")


def discussion(ctx):
    lora, full, t, source = _answer(ctx)
    paras = pipeline_discussion(ctx)
    which = ["**Which method gave the best results?** Comparing "
             + ("the validation-best configurations of the programme" if source == "programme" else
                "the default configurations")
             + f", LoRA reaches {pct(lora['test_top1'])} and full fine-tuning {pct(full['test_top1'])} on the clean test "
             f"split; {_verdict(t)}."]
    if t is not None and not t["significant"]:
        which.append("On these images the two are therefore not distinguishable, and the choice between them rests on cost.")
    elif t is not None:
        which.append("The better method wins on the same images, not just on average.")
    moved = ctx.get("drift")
    if moved and "full" in moved and "lora" in moved:
        f, lo = moved["full"], moved["lora"]
        which.append(f"**How far did each move?** Full fine-tuning changed the backbone's weight matrices by "
                     f"{pct(f['overall'], 2)} on average (relative Frobenius norm ||W - W0|| / ||W0||, at most "
                     f"{pct(f['max'], 1)} in one matrix), LoRA by {pct(lo['overall'], 2)} (at most {pct(lo['max'], 1)}): "
                     + (f"{ctx['v']['drift_full_over_lora']:.1f}x less" if f["overall"] > lo["overall"] else
                        f"{1 / ctx['v']['drift_full_over_lora']:.1f}x more") + " for LoRA.")
    if ctx["att"] and "corr" in ctx["att"]:
        c = ctx["att"]["corr"]
        closer = c["pretrained_lora"] > c["pretrained_full"]
        which.append(f"LoRA's attention maps stay {'closer to' if closer else 'further from'} the pretrained model's "
                     f"({c['pretrained_lora']:.2f} correlation against {c['pretrained_full']:.2f} for full fine-tuning)"
                     + (", although its weights moved more: a larger change in fewer directions can leave "
                        "where the model looks nearly as it was." if closer and moved and
                        moved["lora"]["overall"] > moved["full"]["overall"] else "."))
    # On the answer's own images: the programme's zero-shot run beside its val-best runs.
    gain = ({m: b["vs_zero_shot"]["test"]["difference"] for m, b in (("full", full), ("lora", lora))}
            if source == "programme" else ctx["v"]["vs_zero_shot"])
    which.append(f"Both start from a strong point: the zero-shot head already scores {pct(_zero_shot(ctx, source))}, "
                 f"so fine-tuning adds {points(gain['full'])} (full) and {points(gain['lora'])} (LoRA) points. "
                 + zero_shot_sentence(ctx))
    blocks = [Heading("Discussion"), Para(" ".join(which))]
    if moved and (ctx["plots"] / "drift.png").exists():
        blocks.append(Figure((ctx["plots"] / "drift.png").as_posix(), "Mean relative change of the weight matrices "
                             "of each block from the pretrained model (log scale).", 55))
    robust = robustness_discussion(ctx)
    return blocks + ([Para(robust)] if robust else []) + [Para("**When is LoRA useful?** " + paras[1] + " " + paras[2])]


def conclusion(ctx):
    lora, full, t, source = _answer(ctx)
    return [Heading("Conclusion"),
            Para(f"On ImageWoof with ViT-Tiny, LoRA ({pct(lora['test_top1'])} clean-test top-1) and full fine-tuning "
                 f"({pct(full['test_top1'])}) end {'close' if t is None or not t['significant'] else 'apart'}: {_verdict(t)}. "
                 f"{seeds_sentence(lora, full, ctx)}{lora_size_sentence(lora, ctx)}{second_round_sentence(ctx)} "
                 "The pipeline that produced these numbers reruns "
                 "with one command, and every sentence above follows them.")]


# ---------------------------------------------------------------- the README's results block

README_START, README_END = "<!-- results: written by the paper stage from metrics/compare.json -->", "<!-- /results -->"


def seeds_cell(s):
    return f"{mean_std(s['test_top1'])} % ({s['n']} seeds)" if s["n"] > 1 else "-"


def readme_block(results_path="metrics/compare.json"):
    """The answer in one short table for README.md: each method's val-best run (marked provisional
    while its grid is incomplete), its clean-test top-1 with CI and seeds, and the paired tests
    between LoRA and full fine-tuning and of the second round."""
    res = read_json(results_path)
    prog = res.get("programme")
    if not prog or not prog.get("best"):
        return "No programme record yet: `make programme` runs it, `dvc repro paper` then fills this table.\n"
    sr = prog.get("second_round") or {}
    partial = {fam: f" (provisional: {r['ok']} of {r['of']} runs)"
               for fam, r in sr.get("recorded", {}).items() if r["ok"] < r["of"]}
    rows = ["| method | val-best run | val top-1 | clean-test top-1 [95 % CI] | over seeds | trainable |",
            "|---|---|---:|---:|---:|---:|"]
    for fam, b in prog["best"].items():
        rows.append(f"| {label(fam)}{partial.get(fam, '')} | `{b['name']}` | {pct(b['val_top1'])} | "
                    f"{pct_ci(b['test_top1'], b['test_top1_lo'], b['test_top1_hi'])} | "
                    f"{seeds_cell(b['seeds'])} | {count(b['trainable_params'])} |")
    zs = prog["zero_shot"]
    rows.append(f"| zero-shot | `zero-shot` | {pct(zs['val_top1'])} | "
                f"{pct_ci(zs['test_top1'], zs['test_top1_lo'], zs['test_top1_hi'])} | - | 0 |")
    cnn = prog.get("cnn")  # the second backbone, MobileOne-S0, on the same test images
    for kind, b in ({**(cnn or {}).get("best", {}), "zero_shot": (cnn or {}).get("zero_shot")}).items():
        if b:
            rows.append(f"| CNN {label(kind)} | `{b['name']}` | {pct(b['val_top1'])} | "
                        f"{pct_ci(b['test_top1'], b['test_top1_lo'], b['test_top1_hi'])} | - | "
                        f"{count(b['trainable_params'])} |")
    text = [f"{prog['runs']['ok']} runs of the programme (selection on val, numbers on the "
            f"{count(res['data'].get('test_images', 0))} clean test images):", "", *rows, ""]
    tests = []
    for path in prog.get("answer_tests", []):
        t, words = at(prog, path), comparison_words(path)
        verdict = ("not significant at 5 %" if not t["significant"] else
                   "significant at 5 %" + ("" if t["significant_holm"] else ", not after the correction"))
        tests.append(f"- {words[0].upper()}{words[1:]}: {_difference(t)}, {verdict}.")
    if tests:
        text += ["Val-best against val-best, paired on the same test images:", "", *tests, ""]
    if sr.get("llrd_changes_verdict") is not None:
        text.append(f"Layer decay {changes_verdict(sr)} between LoRA and full fine-tuning"
                    + (" (provisional)." if "llrd" in partial else "."))
    return "\n".join(text).rstrip("\n") + "\n"


def write_readme(readme="README.md", results_path="metrics/compare.json"):
    """Rewrite README.md's results block (between the markers) in place; a README without the
    markers is left alone."""
    path = Path(readme)
    text = path.read_text() if path.exists() else ""
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    with atomic_path(path) as tmp:
        tmp.write_text(f"{head}{README_START}\n{readme_block(results_path)}{README_END}{tail}")
    return True
