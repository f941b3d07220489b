"""The paper: one document model rendered twice, as report.md (the GitHub view) and, through
Typst, as report.pdf. Every number comes from metrics/ and every sentence that states a result is
generated from those numbers, so no sentence is written twice and none outlives its number.

Blocks are plain dataclasses; text uses a small Markdown subset that both renderers understand:
**bold**, *emphasis*, `code`, [text](url) and citations [@key] or [@a; @b].
"""
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from woof.io import atomic_path, read_json

# ---------------------------------------------------------------- the document model


@dataclass
class Heading:
    text: str
    level: int = 1


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list


@dataclass
class Table:
    header: list
    rows: list
    caption: str
    align: str = ""  # one letter per column, l/r; default: first left, the rest right


@dataclass
class Figure:
    path: str | list  # one image, or several side by side
    caption: str
    width: int = 100  # percent of the text width in the PDF (of all images together)

    @property
    def paths(self):
        return [self.path] if isinstance(self.path, str) else list(self.path)


@dataclass
class Equation:
    typst: str     # Typst math
    markdown: str  # the same in GitHub's LaTeX math


@dataclass
class Doc:
    title: str
    abstract: str
    blocks: list = field(default_factory=list)


# ---------------------------------------------------------------- references (one source: refs.bib is written from it)

REFERENCES = {
    "hu2022lora": dict(kind="inproceedings", author="Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and Wang, Shean and Wang, Lu and Chen, Weizhu",
                       title="{LoRA}: Low-Rank Adaptation of Large Language Models", booktitle="ICLR", year="2022"),
    "dosovitskiy2021vit": dict(kind="inproceedings", author="Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, Alexander and others",
                               title="An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", booktitle="ICLR", year="2021"),
    "steiner2022augreg": dict(kind="article", author="Steiner, Andreas and Kolesnikov, Alexander and Zhai, Xiaohua and Wightman, Ross and Uszkoreit, Jakob and Beyer, Lucas",
                              title="How to train your {ViT}? Data, Augmentation, and Regularization in Vision Transformers", journal="TMLR", year="2022"),
    "houlsby2019adapters": dict(kind="inproceedings", author="Houlsby, Neil and Giurgiu, Andrei and Jastrzebski, Stanislaw and others",
                                title="Parameter-Efficient Transfer Learning for {NLP}", booktitle="ICML", year="2019"),
    "jia2022vpt": dict(kind="inproceedings", author="Jia, Menglin and Tang, Luming and Chen, Bor-Chun and Cardie, Claire and Belongie, Serge and Hariharan, Bharath and Lim, Ser-Nam",
                       title="Visual Prompt Tuning", booktitle="ECCV", year="2022"),
    "kalajdzievski2023rslora": dict(kind="article", author="Kalajdzievski, Damjan", title="A Rank Stabilization Scaling Factor for Fine-Tuning with {LoRA}",
                                    journal="arXiv:2312.03732", year="2023"),
    "yosinski2014transferable": dict(kind="inproceedings", author="Yosinski, Jason and Clune, Jeff and Bengio, Yoshua and Lipson, Hod",
                                     title="How transferable are features in deep neural networks?", booktitle="NeurIPS", year="2014"),
    "kornblith2019better": dict(kind="inproceedings", author="Kornblith, Simon and Shlens, Jonathon and Le, Quoc V.",
                                title="Do Better {ImageNet} Models Transfer Better?", booktitle="CVPR", year="2019"),
    "kumar2022finetuning": dict(kind="inproceedings", author="Kumar, Ananya and Raghunathan, Aditi and Jones, Robbie and Ma, Tengyu and Liang, Percy",
                                title="Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution", booktitle="ICLR", year="2022"),
    "caron2021dino": dict(kind="inproceedings", author="Caron, Mathilde and Touvron, Hugo and Misra, Ishan and J{\\'e}gou, Herv{\\'e} and Mairal, Julien and Bojanowski, Piotr and Joulin, Armand",
                          title="Emerging Properties in Self-Supervised Vision Transformers", booktitle="ICCV", year="2021"),
    "abnar2020rollout": dict(kind="inproceedings", author="Abnar, Samira and Zuidema, Willem", title="Quantifying Attention Flow in Transformers",
                             booktitle="ACL", year="2020"),
    "chefer2021transformer": dict(kind="inproceedings", author="Chefer, Hila and Gur, Shir and Wolf, Lior",
                                  title="Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", booktitle="ICCV", year="2021"),
    "howard2019imagenette": dict(kind="misc", author="Howard, Jeremy", title="Imagenette and Imagewoof",
                                 howpublished="https://github.com/fastai/imagenette", year="2019"),
    "russakovsky2015imagenet": dict(kind="article", author="Russakovsky, Olga and Deng, Jia and Su, Hao and others",
                                    title="{ImageNet} Large Scale Visual Recognition Challenge", journal="IJCV", year="2015"),
    "mcnemar1947": dict(kind="article", author="McNemar, Quinn", title="Note on the sampling error of the difference between correlated proportions or percentages",
                        journal="Psychometrika", year="1947"),
    "wilson1927": dict(kind="article", author="Wilson, Edwin B.", title="Probable Inference, the Law of Succession, and Statistical Inference",
                       journal="Journal of the American Statistical Association", year="1927"),
    "dietterich1998": dict(kind="article", author="Dietterich, Thomas G.", title="Approximate Statistical Tests for Comparing Supervised Classification Learning Algorithms",
                           journal="Neural Computation", year="1998"),
    "wightman2019timm": dict(kind="misc", author="Wightman, Ross", title="PyTorch Image Models", howpublished="https://github.com/huggingface/pytorch-image-models", year="2019"),
    "loshchilov2019adamw": dict(kind="inproceedings", author="Loshchilov, Ilya and Hutter, Frank", title="Decoupled Weight Decay Regularization",
                                booktitle="ICLR", year="2019"),
}


def bibtex(keys=None):
    out = []
    for key, e in REFERENCES.items():
        if keys is not None and key not in keys:
            continue
        fields = ",\n".join(f"  {k} = {{{v}}}" for k, v in e.items() if k != "kind")
        out.append(f"@{e['kind']}{{{key},\n{fields}\n}}")
    return "\n\n".join(out) + "\n"


def _plain_reference(e):
    authors = re.sub(r"[{}\\']", "", e["author"]).split(" and ")
    names = [" ".join(reversed([p.strip() for p in a.split(",")])) for a in authors]
    who = names[0] + " et al." if len(names) > 2 else " and ".join(names)
    where = e.get("booktitle") or e.get("journal") or e.get("howpublished", "")
    return f"{who.rstrip('.')}. {re.sub(r'[{}]', '', e['title'])}. {where}, {e['year']}."


# ---------------------------------------------------------------- rendering

CITE = re.compile(r"\[(@[\w-]+(?:;\s*@[\w-]+)*)\]")
INLINE = re.compile(r"(`[^`]+`|\*\*[^*]+\*\*|\*[^*\s][^*]*\*|\[@[\w-]+(?:;\s*@[\w-]+)*\]|\[[^\]]+\]\([^)]+\))")
TYPST_SPECIAL = re.compile(r"([\\#$*_<>@\[\]~`/=+\-\"'])")


def cited(doc):
    """Citation keys in order of first use."""
    keys = []
    for text in _texts(doc):
        for group in CITE.findall(text):
            keys += [k.strip().lstrip("@") for k in group.split(";") if k.strip().lstrip("@") not in keys]
    return list(dict.fromkeys(keys))


def _texts(doc):
    yield doc.abstract
    for b in doc.blocks:
        if isinstance(b, (Heading, Para)):
            yield b.text
        elif isinstance(b, Bullets):
            yield from b.items
        elif isinstance(b, (Table, Figure)):
            yield b.caption


def markdown(doc, path="report.md"):
    """GitHub Markdown: citations numbered [n] with a reference list; figure paths relative to path."""
    keys = cited(doc)
    missing = [k for k in keys if k not in REFERENCES]
    if missing:
        raise KeyError(f"cited but not in woof.paper.REFERENCES: {missing}")
    number = {k: i + 1 for i, k in enumerate(keys)}

    def inline(text):
        return CITE.sub(lambda m: "[" + ", ".join(str(number[k.strip().lstrip("@")]) for k in m.group(1).split(";")) + "]",
                        text)

    base = Path(path).resolve().parent
    out = [f"# {doc.title}", "", "*Generated by the pipeline (`dvc repro`) from `metrics/` and `plots/`; "
           "do not edit. The same document is typeset as report.pdf.*", "", f"**Abstract.** {inline(doc.abstract)}", ""]
    section = figure = table = 0
    for b in doc.blocks:
        if isinstance(b, Heading):
            if b.level == 1:
                section += 1
                out += [f"## {section} {b.text}", ""]
            else:
                out += [f"### {b.text}", ""]
        elif isinstance(b, Para):
            out += [inline(b.text), ""]
        elif isinstance(b, Bullets):
            out += [f"- {inline(i)}" for i in b.items] + [""]
        elif isinstance(b, Equation):
            out += ["$$", b.markdown, "$$", ""]
        elif isinstance(b, Table):
            table += 1
            align = b.align or "l" + "r" * (len(b.header) - 1)
            md = pd.DataFrame(b.rows, columns=b.header).to_markdown(
                index=False, colalign=["left" if a == "l" else "right" for a in align], disable_numparse=True)
            out += [f"*Table {table}. {inline(b.caption)}*", "", md, ""]
        elif isinstance(b, Figure):
            figure += 1
            out += [" ".join(f"![Figure {figure}]({Path(_relpath(Path(p).resolve(), base)).as_posix()})"
                             for p in b.paths), "", f"*Figure {figure}. {inline(b.caption)}*", ""]
    out += ["## References", ""] + [f"{number[k]}. {_plain_reference(REFERENCES[k])}" for k in keys]
    return "\n".join(out) + "\n"


def _relpath(p, base):
    import os
    return os.path.relpath(p, base)


def typst_inline(text):
    """Our Markdown subset -> Typst markup, everything else escaped."""
    out = []
    for part in INLINE.split(text):
        if not part:
            continue
        if part.startswith("`"):
            out.append(part)  # raw text
        elif part.startswith("**"):
            out.append("*" + _escape(part[2:-2]) + "*")
        elif part.startswith("[@"):
            out.append(" ".join("@" + k.strip().lstrip("@") for k in part[1:-1].split(";")))
        elif part.startswith("["):
            label, url = re.match(r"\[([^\]]+)\]\(([^)]+)\)", part).groups()
            out.append(f'#link("{url}")[{_escape(label)}]')
        elif part.startswith("*"):
            out.append("_" + _escape(part[1:-1]) + "_")
        else:
            out.append(_escape(part))
    return "".join(out)


def _escape(text):
    return TYPST_SPECIAL.sub(r"\\\1", text)


def typst(doc, bib="refs.bib"):
    """The Typst source of the PDF (paths relative to the compile root)."""
    keys = cited(doc)
    t = ["#set document(title: " + _typst_string(doc.title) + ")",
         '#set page(paper: "us-letter", margin: (x: 2.1cm, y: 2.2cm), numbering: "1")',
         '#set text(size: 10pt)',
         '#set par(justify: true)',
         '#set heading(numbering: "1.1")',
         '#show figure.caption: set text(size: 9pt)',
         '#show table: set text(size: 8pt)',
         "#align(center)[#text(size: 16pt, weight: \"bold\")[" + _escape(doc.title) + "]]",
         "#align(center)[#text(size: 10pt)[woof: a reproducible DVC pipeline · generated from its own metrics]]",
         "#v(0.6em)",
         "#pad(x: 1.2cm)[#text(size: 9pt)[*Abstract.* " + typst_inline(doc.abstract) + "]]",
         "#v(0.4em)"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            t.append("=" * b.level + " " + _escape(b.text))
        elif isinstance(b, Para):
            t.append(typst_inline(b.text) + "\n")
        elif isinstance(b, Bullets):
            t += ["- " + typst_inline(i) for i in b.items] + [""]
        elif isinstance(b, Equation):
            t.append(f"$ {b.typst} $")
        elif isinstance(b, Table):
            align = b.align or "l" + "r" * (len(b.header) - 1)
            cells = ", ".join(f"[{typst_inline(str(c))}]" for row in [b.header] + b.rows for c in row)
            cols = ", ".join("left" if a == "l" else "right" for a in align)
            t.append(f"#figure(table(columns: {len(b.header)}, align: ({cols},), stroke: none, "
                     f"table.hline(y: 1, stroke: 0.5pt), {cells}), caption: [{typst_inline(b.caption)}], kind: table)")
        elif isinstance(b, Figure):
            images = [f"image({_typst_string(Path(p).as_posix())}, width: 100%)" for p in b.paths]
            body = images[0] if len(images) == 1 else \
                f"grid(columns: {len(images)}, gutter: 0.6em, {', '.join(images)})"
            # Floating figures (top or bottom of a page) keep the text from breaking around them.
            t.append(f"#figure(box(width: {b.width}%, {body}), placement: auto, "
                     f"caption: [{typst_inline(b.caption)}])")
    if keys:
        t.append(f'#bibliography({_typst_string(bib)}, title: "References", style: "ieee")')
    return "\n".join(t) + "\n"


def _typst_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write(doc, md_path="report.md", pdf_path="report.pdf", root="."):
    """report.md and report.pdf, both atomically; Typst compiles in-process."""
    import typst as typst_compiler
    root = Path(root).resolve()
    for b in doc.blocks:
        for p in b.paths if isinstance(b, Figure) else []:
            if not (root / p).exists():
                raise FileNotFoundError(f"figure {p} not found: run the stage that draws it (dvc repro)")
    text = markdown(doc, md_path)
    # The Typst source and the bibliography are scaffolding inside the compile root, removed after.
    src, bib = root / ".report.typ", root / ".report.bib"
    try:
        bib.write_text(bibtex(set(cited(doc))))
        src.write_text(typst(doc, bib="/" + bib.name))
        with atomic_path(pdf_path) as pdf:
            typst_compiler.compile(str(src), output=str(pdf), root=str(root))
    finally:
        src.unlink(missing_ok=True)
        bib.unlink(missing_ok=True)
    with atomic_path(md_path) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------- number formatting (once)

def pct(x, digits=1):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f} %"


def pct_ci(x, lo, hi, digits=1):
    return f"{pct(x, digits)} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def pvalue(p):
    if math.isnan(p):  # a test with nothing to test, e.g. Welch's t on samples without spread
        return "p undefined"
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def mean_std(m):
    """Points, from a {"mean", "std"} of fractions (woof.results.seeds)."""
    return f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"


def count(n):
    return f"{int(n):,}"


# ---------------------------------------------------------------- the content

TITLE = "LoRA or Full Fine-Tuning? A Clean-Test Comparison on ImageWoof with ViT-Tiny"


def build(metrics_dir="metrics", plots_dir="plots", params=None):
    """The paper from the pipeline's metrics (required) and the programme's record (optional)."""
    from woof import report
    m, p = Path(metrics_dir), Path(plots_dir)
    params = params or {}
    df = report.collect(m, p)
    compare = read_json(m / "compare.json")
    split = df.split.iloc[0]
    paired = compare.get("paired", {}).get(split, {})
    data = read_json(m / "data.json") if (m / "data.json").exists() else {}
    trains = {k: read_json(m / f"train_{k}.json") for k in ("full", "lora")}
    cost = read_json(m / "cost.json") if (m / "cost.json").exists() else {}
    att = read_json(m / "attention.json") if (m / "attention.json").exists() else None
    prog = read_json(m / "programme.json") if (m / "programme.json").exists() else {}
    moved = read_json(m / "drift.json") if (m / "drift.json").exists() else None
    r = report._by_method(df)
    ctx = dict(df=df, r=r, split=split, paired=paired, paired_all=compare.get("paired", {}), data=data, trains=trains, cost=cost, att=att,
               prog=prog if prog.get("best") else None, params=params, plots=p, drift=moved)
    blocks = [*introduction(ctx), *related_work(), *method(ctx), *setup(ctx), *results(ctx), *attention(ctx),
              *discussion(ctx), *limitations(ctx), *conclusion(ctx)]
    return Doc(TITLE, abstract(ctx), blocks)


def _answer(ctx):
    """(LoRA row, full row, paired test, where they come from): the programme's val-best runs
    when it has both, else the pipeline's default-config runs."""
    prog = ctx["prog"]
    if prog and "full" in prog["best"] and "lora" in prog["best"] and prog.get("lora_vs_full"):
        b = prog["best"]
        return b["lora"], b["full"], prog["lora_vs_full"], "programme"
    r = ctx["r"]
    conv = lambda x: {"test_top1": x["top1"], "test_top1_lo": x["top1_lo"], "test_top1_hi": x["top1_hi"],  # noqa: E731
                      "trainable_params": x["trainable_params"], "name": x["method"]}
    return conv(r["lora"]), conv(r["full"]), ctx["paired"].get("lora_vs_full"), "pipeline"


def _verdict(t, a="LoRA", b="full fine-tuning"):
    if t is None:
        return "no paired test is available"
    if not t["significant"]:
        return f"McNemar's exact test finds no significant difference ({pvalue(t['p_value'])})"
    return f"the difference is significant ({pvalue(t['p_value'])}) in favour of {a if t['difference'] > 0 else b}"


def hardware(trains):
    """Where the models trained (train.py's `hardware`); else this machine, labelled as such."""
    full, lora = (t.get("hardware") for t in trains)
    if full and full == lora:
        return f"{full} (from metrics/train_*.json)"
    if full or lora:
        return f"full fine-tuning on {full or 'unrecorded hardware'}, LoRA on {lora or 'unrecorded hardware'}"
    from woof.train import machine  # the description the training runs record
    return f"Not recorded by the training runs; this report was written on {machine()}"


def abstract(ctx):
    lora, full, t, source = _answer(ctx)
    d = ctx["data"]
    if source == "programme":
        runs = ctx["prog"]["runs"]
        which = (f"the validation-best configuration of each method among the {runs['ok']} runs of our programme"
                 + (f" recorded so far ({runs['missing']} still to run)" if runs.get("missing") else ""))
    else:
        which = "the default configuration of each method"
    test_n = d.get("test_images") or int(ctx["df"].n.iloc[0])
    seen = ((d["train_images"] + d["val_images"]) / (d["train_images"] + d["val_images"] + d["test_images"])
            if d.get("test_images") else 0.96)  # the images that are not of ImageNet-val origin
    return (f"Should one fine-tune every weight of a pretrained Vision Transformer or train a low-rank adapter? "
            f"We compare full fine-tuning and LoRA [@hu2022lora] for an ImageNet-pretrained ViT-Tiny on ImageWoof, "
            f"ten dog breeds cut out of ImageNet, on a two-core CPU. Since {pct(seen, 0)} of ImageWoof's images are ImageNet "
            f"training images the backbone has already seen, we report accuracy on a clean test split of the "
            f"{count(test_n)} ImageNet-validation-origin images, choose every hyperparameter on the validation split, "
            f"and compare models with paired tests. For {which}, LoRA reaches "
            f"{pct_ci(lora['test_top1'], lora['test_top1_lo'], lora['test_top1_hi'])} clean-test top-1 against "
            f"{pct_ci(full['test_top1'], full['test_top1_lo'], full['test_top1_hi'])} for full fine-tuning, and "
            f"{_verdict(t)}. {seeds_sentence(lora, full)}{zero_shot_sentence(ctx)} {lora_size_sentence(lora, ctx)}")


def seeds_sentence(lora, full):
    """Both val-best configurations' test top-1 over their seeds, and Welch's t-test between the
    seed means, which weighs the gap against seed-to-seed variation ("" until both have reruns)."""
    from scipy.stats import ttest_ind_from_stats
    sl, sf = lora.get("seeds", {}), full.get("seeds", {})
    if sl.get("n", 0) < 2 or sf.get("n", 0) < 2:
        return ""
    ml, mf = sl["test_top1"], sf["test_top1"]
    p = ttest_ind_from_stats(ml["mean"], ml["std"], sl["n"], mf["mean"], mf["std"], sf["n"], equal_var=False).pvalue
    return (f"Over {sl['n']} and {sf['n']} seeds the two score {mean_std(ml)} % and {mean_std(mf)} % on clean test "
            f"(Welch's t-test between the seed means: {pvalue(p)}). ")


def lora_size_sentence(lora, ctx):
    """How much that LoRA trains, and what an adapter file weighs (the pipeline's rank: the
    programme keeps no checkpoints)."""
    r = ctx["r"]
    return (f"That LoRA trains {count(lora['trainable_params'])} parameters, "
            f"{pct(lora['trainable_params'] / r['full']['total_params'])} of the model's "
            f"{count(r['full']['total_params'])}; the pipeline's rank-{ctx['params'].get('lora', {}).get('rank', '?')} "
            f"adapter file is {r['lora']['checkpoint_mb']:.2f} MB against {r['full']['checkpoint_mb']:.1f} MB for a full model.")


def zero_shot_sentence(ctx):
    """Whether fine-tuning beat the untrained ImageNet head, on the clean split and on val: for the
    models the abstract compares (the programme's val-best runs, else the pipeline's)."""
    zs = pct(ctx["r"]["zero_shot"]["top1"])
    prog = ctx.get("prog")
    if prog and all("vs_zero_shot" in prog["best"].get(m, {}) for m in ("full", "lora")):
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


def introduction(ctx):
    return [Heading("Introduction"),
            Para("Fine-tuning a pretrained backbone is the default way to solve a small vision task. Full fine-tuning "
                 "updates every weight and stores a full copy of the model per task; parameter-efficient methods such as "
                 "adapters [@houlsby2019adapters], visual prompts [@jia2022vpt] and LoRA [@hu2022lora] train a small "
                 "number of new parameters and leave the backbone shared. For a practitioner the questions are concrete: "
                 "which gives the better model, at which rank and learning rate, and at what cost in time, memory and "
                 "storage?"),
            Para("We answer them for the smallest standard Vision Transformer, ViT-Tiny [@dosovitskiy2021vit; @steiner2022augreg], "
                 "on ImageWoof [@howard2019imagenette], a ten-class subset of ImageNet [@russakovsky2015imagenet] made of "
                 "similar dog breeds, with everything measured on a two-core CPU. The study is a DVC pipeline: every number "
                 "and sentence in this paper is regenerated from the metrics it reports."),
            Bullets(["**A clean test split.** ImageWoof's images are almost all ImageNet training images, which the "
                     "pretrained backbone has learnt with labels; we move every ImageNet-validation-origin image into a "
                     "test split that nothing is trained or chosen on (Section 4).",
                     "**A fair protocol.** Both methods get a learning-rate grid, LoRA's rank is swept at a fixed scale "
                     "alpha/r, selection is on validation, and models are compared with McNemar's exact test "
                     "[@mcnemar1947; @dietterich1998] and a paired bootstrap, not with independent error bars.",
                     "**A faster LoRA.** A merged-weight forward and rank-r weight gradients make LoRA training faster than "
                     "full fine-tuning on the CPU, where the usual two-branch formulation is slower (Section 3)."])]


def related_work():
    return [Heading("Related work"),
            Para("**Vision Transformers and transfer.** ViT [@dosovitskiy2021vit] splits an image into 16x16 patches and "
                 "processes them with a Transformer; AugReg [@steiner2022augreg] showed how to pretrain small ViTs with "
                 "strong augmentation and regularisation, and its ImageNet-21k-then-1k ViT-Tiny is the backbone here "
                 "(timm [@wightman2019timm]). Better ImageNet models transfer better [@kornblith2019better], and which "
                 "layers transfer is a classic question [@yosinski2014transferable]."),
            Para("**Parameter-efficient fine-tuning.** Adapters insert small bottleneck layers [@houlsby2019adapters]; "
                 "visual prompt tuning learns input tokens [@jia2022vpt]; LoRA [@hu2022lora] learns a low-rank update "
                 "B A of frozen weight matrices, scaled by alpha/r, which can be merged into the weights for inference. "
                 "rsLoRA [@kalajdzievski2023rslora] argues for alpha/sqrt(r) so that larger ranks keep learning."),
            Para("**Linear probing and partial freezing.** Training only the classifier on frozen features (linear "
                 "probing) and freezing the first blocks are the cheap ends of the spectrum; fine-tuning all weights can "
                 "distort pretrained features [@kumar2022finetuning]. We include both as reference points."),
            Para("**Seeing where a ViT looks.** The CLS token's last-layer attention gives clean object maps in "
                 "self-supervised ViTs [@caron2021dino]; attention rollout [@abnar2020rollout] multiplies the attention of "
                 "all layers, and its gradient-weighted form [@chefer2021transformer] keeps the heads that matter for a "
                 "class. We use both to ask how fine-tuning changes attention.")]


def method(ctx):
    lora_p = ctx["params"].get("lora", {})
    r = ctx["r"]
    return [Heading("Method"),
            Para("**Full fine-tuning** trains every parameter of the pretrained model with a new ten-class head. "
                 "**LoRA** freezes each adapted weight W0 and learns a rank-r update:"),
            Equation("h = W_0 x + alpha / r thin B A x, quad B in RR^(d_\"out\" times r), A in RR^(r times d_\"in\"), quad B = 0 \"at start\"",
                     r"h = W_0 x + \frac{\alpha}{r} B A x,\quad B \in \mathbb{R}^{d_{out}\times r},\ A \in \mathbb{R}^{r\times d_{in}},\quad B = 0 \text{ at start}"),
            Para(f"so the adapted model starts equal to the pretrained one. In ViT-Tiny (12 blocks, width 192) we adapt the "
                 f"attention's qkv and output projections and both MLP layers of every block (`{lora_p.get('targets', '')}`), "
                 f"and train the head in full: {count(r['lora']['trainable_params'])} trainable parameters at r = "
                 f"{lora_p.get('rank', '?')} ({pct(r['lora']['trainable_pct'] / 100, 2)} of the model)."),
            Para("**Merged-weight forward, rank-r backward.** With dropout 0 the adapter is linear in x, so our layer runs "
                 "the forward as a single matrix product with the merged weight W0 + (alpha/r) B A, a cheap rank-r update of "
                 "a small matrix. The backward computes the input gradient with the merged weight and the gradients of A and "
                 "B through thin rank-r products. The full-size weight-gradient product that full fine-tuning pays for, and "
                 "the separate low-rank branch that the usual two-branch implementation (PEFT) pays for, are never run, "
                 "which is why our LoRA trains faster than full fine-tuning on the CPU. At inference the update is merged "
                 "and the model is a plain ViT."),
            Para("**Other methods.** The *linear probe* trains only the head on features extracted once from the frozen "
                 "backbone; *frozen-k* freezes the patch embedding and the first k blocks, so no gradient flows below block k; "
                 "*from scratch* trains the same architecture from random weights. The *zero-shot* baseline restricts the "
                 "pretrained 1000-class ImageNet head to the ten breeds; every trained model's head starts from those rows.")]


def setup(ctx):
    d, params = ctx["data"], ctx["params"]
    full, lora = params.get("full", {}), params.get("lora", {})
    hw = hardware(list(ctx["trains"].values()))
    rows = [[s, count(d.get(f"{s}_images", 0)), count(d.get(f"{s}_imagenet_val_origin", 0))]
            for s in ("train", "val", "test") if d.get(f"{s}_images") is not None]
    blocks = [Heading("Setup"),
              Para("**Data.** ImageWoof 2 [@howard2019imagenette] has 9,025 training and 3,929 validation images of ten "
                   "dog breeds, all taken from ImageNet. Its file names tell where each image came from: "
                   "`ILSVRC2012_val_*` files come from ImageNet's validation set, every other file is an ImageNet-1k "
                   "training image. The pretrained backbone was trained on the latter with their labels, so accuracy on "
                   "them is partly memory: the zero-shot head scores 94.2 % on seen validation images but 92.0 % on the "
                   "162 clean ones (measured at 224 px). Our clean split moves all ImageNet-validation-origin images of "
                   "train and val into a test split (Table 1); train and val keep the rest, and the test split is never "
                   "trained on or used to choose anything.")]
    if rows:
        blocks.append(Table(["split", "images", "of ImageNet-val origin"], rows,
                            f"The splits (`data.split: {d.get('split', '?')}`), from `metrics/data.json`."))
    blocks += [Para(f"**Model and training.** timm's `vit_tiny_patch16_224` (ImageNet-21k pretrained, ImageNet-1k "
                    f"fine-tuned) at {params.get('data', {}).get('image_size', '?')} px, AdamW [@loshchilov2019adamw] "
                    f"with linear warmup and cosine decay, label smoothing, random resized crops and flips, "
                    f"{full.get('epochs', '?')} epochs at batch {full.get('batch_size', '?')}; full fine-tuning at lr "
                    f"{full.get('lr', '?')}, LoRA at lr {lora.get('lr', '?')}, rank {lora.get('rank', '?')}, alpha "
                    f"{lora.get('alpha', '?')}. Precision {ctx['trains']['full'].get('precision', 'fp32')}"
                    f"{', compiled' if ctx['trains']['full'].get('compile') else ''}; hardware: {hw}."),
               Para("**What was tuned on what.** The learning rates, ranks and the choice among methods are made on the "
                    "validation split only; the clean test split reports. Accuracies carry 95 % Wilson intervals "
                    "[@wilson1927]; two models on the same images are compared with McNemar's exact test on the images "
                    "where exactly one is right, and a paired bootstrap interval of the difference.")]
    return blocks


def results(ctx):
    from woof import report
    df, split, paired = ctx["df"], ctx["split"], ctx["paired"]
    name = report.SPLIT_NAMES[split]
    rows = []
    for row in df.to_dict("records"):
        rows.append([report.LABELS[row["method"]], pct_ci(row["top1"], row["top1_lo"], row["top1_hi"]),
                     pct(row["val_top1"]), count(row["trainable_params"]),
                     "-" if not row["train_minutes"] else f"{row['train_minutes']:.1f}",
                     "-" if math.isnan(row["checkpoint_mb"]) else f"{row['checkpoint_mb']:.2f}"])
    blocks = [Heading("Results"),
              Table(["method", f"{name} top-1 [95 % CI]", "val top-1", "trainable params", "train min", "checkpoint MB"],
                    rows, f"The pipeline's default configurations on the {name} split ({count(df.n.iloc[0])} images). "
                          "LoRA's checkpoint is its adapter; the backbone is shared.")]
    if paired:
        prow = [[f"{report.LABELS[a]} vs {report.LABELS[b]}", f"{100 * t['difference']:+.1f}",
                 f"{100 * t['difference_ci'][0]:+.1f} to {100 * t['difference_ci'][1]:+.1f}",
                 str(t["a_only"]), str(t["b_only"]), pvalue(t["p_value"])]
                for pair, t in paired.items() for a, b in [pair.split("_vs_")]]
        blocks.append(Table(["comparison", "difference (points)", "95 % CI", "only first right", "only second right", "McNemar"],
                            prow, f"Paired comparisons on the same {name} images."))
    blocks.append(Para(report.discussion(df, paired)[0]))
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
    from woof.results import LABELS
    prog, plots = ctx["prog"], ctx["plots"]
    rows = []
    for family, b in prog["best"].items():
        s = b["seeds"]
        seeds = f"{mean_std(s['test_top1'])} ({s['n']})" if s["n"] > 1 else "-"
        rows.append([LABELS[family], f"`{b['name']}`", pct(b["val_top1"]),
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
    return f"{100 * t['difference']:+.1f} points (95 % CI {100 * lo:+.1f} to {100 * hi:+.1f}, McNemar {pvalue(t['p_value'])})"


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
    for method, f in fast.items():
        if f.get("test"):
            parts.append(f"{names[method]} moves by {_difference(f['test'])} on test and "
                         f"{100 * f['val']['difference']:+.2f} on val, training {f['speedup']:.2f}x as fast")
    if not parts:
        return []
    precision = next(iter(fast.values()))["precision"]
    return [Para(f"**Precision and compilation.** The pipeline's defaults train compiled in {precision} "
                 f"(`train.precision: auto`, `train.compile: true`); the programme's runs stay in fp32 eager. "
                 f"Against the same configuration in fp32 eager, " + "; ".join(parts) + ".")]


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


def attention(ctx):
    att, plots = ctx["att"], ctx["plots"]
    blocks = [Heading("Attention")]
    if att is None or "skipped" in att:
        return blocks + [Para("No attention maps were computed" + (f": {att['skipped']}." if att else "."))]
    maps = [(plots / f"{k}.png").as_posix() for k in ("attention_cls", "attention_rollout")
            if (plots / f"{k}.png").exists()]
    if maps:
        blocks.append(Figure(maps, "Where the models look on clean test images. Left: last-layer CLS attention (mean "
                                   "over heads); right: gradient-weighted attention rollout for the true class. "
                                   "Columns: input, pretrained, full fine-tuning, LoRA; titles: prediction and confidence.",
                             75 if len(maps) == 2 else 40))
    models = [k for k in ("pretrained", "full", "lora") if k in att]
    rows = [[k, f"{att[k]['cls_entropy']:.3f}", f"{att[k]['center_mass']:.3f}", f"{att[k]['rollout_entropy']:.3f}",
             f"{att[k]['rollout_center_mass']:.3f}"] for k in models]
    blocks.append(Table(["model", "CLS entropy", "CLS centre mass", "rollout entropy", "rollout centre mass"], rows,
                        f"Attention statistics over {att.get('num_images', '?')} images "
                        f"({att.get('split', 'val')} split): entropy normalised to [0, 1], centre mass the share inside "
                        f"the central {att.get('center_area', 0.5):.0%} of the image."))
    blocks.append(Para(attention_paragraph(att)))
    return blocks


def attention_paragraph(att):
    """How attention moved from the pretrained model to each fine-tuned one, in words."""
    c, rc = att["corr"], att.get("rollout_corr", {})
    closer = "LoRA" if c["pretrained_lora"] > c["pretrained_full"] else "full fine-tuning"
    far = "full fine-tuning" if closer == "LoRA" else "LoRA"
    text = [f"Fine-tuning changes the last-layer CLS attention only moderately: its maps correlate with the pretrained "
            f"model's at {c['pretrained_full']:.2f} after full fine-tuning and {c['pretrained_lora']:.2f} after LoRA, so "
            f"{closer} stays closer to where the pretrained model looked, and the two fine-tuned models agree with each "
            f"other at {c['full_lora']:.2f}."]
    if rc:
        rcloser = "LoRA" if rc["pretrained_lora"] > rc["pretrained_full"] else "full fine-tuning"
        text.append(f"For the class-specific rollout the correlations are {rc['pretrained_full']:.2f} (full) and "
                    f"{rc['pretrained_lora']:.2f} (LoRA): " + ("the same ordering." if rcloser == closer else
                                                                f"here {rcloser} stays closer."))
    for k, label in (("full", "full fine-tuning"), ("lora", "LoRA")):
        dm = att[k]["center_mass"] - att["pretrained"]["center_mass"]
        de = att[k]["cls_entropy"] - att["pretrained"]["cls_entropy"]
        text.append(f"After {label} the CLS attention is {'more' if de > 0 else 'less'} spread out (entropy {de:+.3f}) "
                    f"and puts {'more' if dm > 0 else 'less'} of its mass on the image centre ({dm:+.3f}).")
    text.append(f"With {att.get('num_images', 'so few')} images these statistics describe the examples shown, "
                f"not a property of the methods; {far} moved the attention further on them.")
    return " ".join(text)


def discussion(ctx):
    from woof import report
    lora, full, t, source = _answer(ctx)
    r, df = ctx["r"], ctx["df"]
    paras = report.discussion(df, ctx["paired"])
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
                     + (f"{f['overall'] / lo['overall']:.1f}x less" if f["overall"] > lo["overall"] else
                        f"{lo['overall'] / f['overall']:.1f}x more") + " for LoRA.")
    if ctx["att"] and "corr" in ctx["att"]:
        c = ctx["att"]["corr"]
        closer = c["pretrained_lora"] > c["pretrained_full"]
        which.append(f"LoRA's attention maps stay {'closer to' if closer else 'further from'} the pretrained model's "
                     f"({c['pretrained_lora']:.2f} correlation against {c['pretrained_full']:.2f} for full fine-tuning)"
                     + (", although its weights moved more: a larger change in fewer directions can leave "
                        "where the model looks nearly as it was." if closer and moved and
                        moved["lora"]["overall"] > moved["full"]["overall"] else "."))
    zs = r["zero_shot"]["top1"]
    which.append(f"Both start from a strong point: the zero-shot head already scores {pct(zs)}, so fine-tuning adds "
                 f"{100 * (r['full']['top1'] - zs):+.1f} (full) and {100 * (r['lora']['top1'] - zs):+.1f} (LoRA) points. "
                 + zero_shot_sentence(ctx))
    blocks = [Heading("Discussion"), Para(" ".join(which))]
    if moved and (ctx["plots"] / "drift.png").exists():
        blocks.append(Figure((ctx["plots"] / "drift.png").as_posix(), "Mean relative change of the weight matrices "
                             "of each block from the pretrained model (log scale).", 55))
    return blocks + [Para("**When is LoRA useful?** " + paras[1] + " " + paras[2])]


def selection_limitation(prog):
    """How little the leaked val set separates configurations that the clean test split does: the
    spread of LoRA's rank curve on each split, as a Limitations bullet (none before three ranks)."""
    ranks = (prog or {}).get("lora_ranks", [])
    if len(ranks) < 3:
        return []
    spread = {s: 100 * (max(r[f"{s}_top1"] for r in ranks) - min(r[f"{s}_top1"] for r in ranks)) for s in ("val", "test")}
    return [f"Selection happens on val, whose images the backbone learnt in pretraining, and val separates "
            f"configurations less than the clean test split does: LoRA's {len(ranks)} ranks span "
            f"{spread['val']:.1f} points of val top-1 and {spread['test']:.1f} of test top-1. A val-best "
            "configuration is therefore close to a draw among near-equals on val, which is why the paired tests "
            "are on test and why the seeds matter."]


def limitations(ctx):
    return [Heading("Limitations"),
            Bullets([*selection_limitation(ctx["prog"]),
                     "One dataset of ten similar classes and one small backbone: larger ViTs and datasets further from "
                     "ImageNet may rank the methods differently.",
                     f"The clean test split has {count(ctx['data'].get('test_images', ctx['df'].n.iloc[0]))} images, so its "
                     "95 % intervals are about ±2 points wide; differences smaller than that are not resolved.",
                     "Training and timing are on a two-core CPU; speed ratios on a GPU differ. Training minutes are "
                     "the wall-clock time of single runs on a shared machine; the benchmark that interleaves the "
                     "methods step by step (`python -m woof.bench`) is the reference for speed ratios.",
                     "The backbone has seen the train and validation images during pretraining; the clean test split "
                     "removes that from the reported numbers but not from training.",
                     "Attention statistics are computed on a handful of images."])]


def conclusion(ctx):
    lora, full, t, source = _answer(ctx)
    return [Heading("Conclusion"),
            Para(f"On ImageWoof with ViT-Tiny, LoRA ({pct(lora['test_top1'])} clean-test top-1) and full fine-tuning "
                 f"({pct(full['test_top1'])}) end {'close' if t is None or not t['significant'] else 'apart'}: {_verdict(t)}. "
                 f"{seeds_sentence(lora, full)}{lora_size_sentence(lora, ctx)} The pipeline that produced these numbers reruns "
                 "with one command, and every sentence above follows them.")]
