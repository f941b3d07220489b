"""The paper's document model, rendered twice: as report.md (the GitHub view) and, through Typst,
as report.pdf. woof.paper fills it with words; this module only typesets.

Blocks are plain dataclasses; text uses a small Markdown subset that both renderers understand:
**bold**, *emphasis*, `code`, [text](url) and citations [@key] or [@a; @b].
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from woof.io import atomic_path

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
    "hendrycks2019benchmarking": dict(kind="inproceedings", author="Hendrycks, Dan and Dietterich, Thomas",
                                      title="Benchmarking Neural Network Robustness to Common Corruptions and Perturbations",
                                      booktitle="ICLR", year="2019"),
    "guo2017calibration": dict(kind="inproceedings", author="Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.",
                               title="On Calibration of Modern Neural Networks", booktitle="ICML", year="2017"),
    "wortsman2022robust": dict(kind="inproceedings", author="Wortsman, Mitchell and Ilharco, Gabriel and Kim, Jong Wook and Li, Mike and Kornblith, Simon and Roelofs, Rebecca and others",
                               title="Robust Fine-Tuning of Zero-Shot Models", booktitle="CVPR", year="2022"),
    "bao2022beit": dict(kind="inproceedings", author="Bao, Hangbo and Dong, Li and Piao, Songhao and Wei, Furu",
                        title="{BEiT}: {BERT} Pre-Training of Image Transformers", booktitle="ICLR", year="2022"),
    "liu2024dora": dict(kind="inproceedings", author="Liu, Shih-Yang and Wang, Chien-Yi and Yin, Hongxu and Molchanov, Pavlo and Wang, Yu-Chiang Frank and Cheng, Kwang-Ting and Chen, Min-Hung",
                        title="{DoRA}: Weight-Decomposed Low-Rank Adaptation", booktitle="ICML", year="2024"),
    "vasu2023mobileone": dict(kind="inproceedings", author="Vasu, Pavan Kumar Anasosalu and Gabriel, James and Zhu, Jeff and Tuzel, Oncel and Ranjan, Anurag",
                              title="{MobileOne}: An Improved One Millisecond Mobile Backbone", booktitle="CVPR", year="2023"),
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
    t = ["#set document(title: " + _typst_string(doc.title) + ", date: none)",  # no date: the same PDF bytes on every rebuild
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
