"""The paper's fixed sections, worded once: introduction, related work, method, setup, the
attention section and the limitations. Their few numbers come from the compare stage's results
(the `ctx` woof.paper.build makes); woof.paper words the answer and assembles the document."""
from woof.document import Bullets, Equation, Figure, Heading, Para, Table
from woof.io import at
from woof.labels import count, label, pct, pvalue


def hardware(r):
    """Where the pipeline's models trained (train.py's `hardware`)."""
    full, lora = r["full"].get("hardware"), r["lora"].get("hardware")
    if full and full == lora:
        return f"{full} (from metrics/train_*.json)"
    return f"full fine-tuning on {full or 'unrecorded hardware'}, LoRA on {lora or 'unrecorded hardware'}"


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
    hw = hardware(ctx["r"])
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
                    f"{lora.get('alpha', '?')}. Precision {ctx['r']['full'].get('precision') or 'fp32'}"
                    f"{', compiled' if ctx['r']['full'].get('compile') else ''}; hardware: {hw}."),
               Para("**What was tuned on what.** The learning rates, ranks and the choice among methods are made on the "
                    "validation split only; the clean test split reports. Accuracies carry 95 % Wilson intervals "
                    "[@wilson1927]; two models on the same images are compared with McNemar's exact test on the images "
                    "where exactly one is right, and a paired bootstrap interval of the difference.")]
    return blocks


def attention(ctx):
    att, plots = ctx["att"], ctx["plots"]
    blocks = [Heading("Attention")]
    if att is None or "skipped" in att:
        return blocks + [Para("No attention maps were computed" + (f": {att['skipped']}." if att else "."))]
    maps = [(plots / f"{k}.jpg").as_posix() for k in ("attention_cls", "attention_rollout")
            if (plots / f"{k}.jpg").exists()]
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
    for k, name in (("full", "full fine-tuning"), ("lora", "LoRA")):
        dm = att[k]["center_mass"] - att["pretrained"]["center_mass"]
        de = att[k]["cls_entropy"] - att["pretrained"]["cls_entropy"]
        text.append(f"After {name} the CLS attention is {'more' if de > 0 else 'less'} spread out (entropy {de:+.3f}) "
                    f"and puts {'more' if dm > 0 else 'less'} of its mass on the image centre ({dm:+.3f}).")
    text.append(f"With {att.get('num_images', 'so few')} images these statistics describe the examples shown, "
                f"not a property of the methods; {far} moved the attention further on them.")
    return " ".join(text)


def selection_limitation(prog):
    """How little the leaked val set separates configurations that the clean test split does: the
    spread of LoRA's rank curve on each split, as a Limitations bullet (none before three ranks)."""
    ranks = (prog or {}).get("lora_ranks", [])
    if len(ranks) < 3:
        return []
    spread = {s: 100 * prog["lora_rank_spread"][s] for s in ("val", "test")}
    return [f"Selection happens on val, whose images the backbone learnt in pretraining, and val separates "
            f"configurations less than the clean test split does: LoRA's {len(ranks)} ranks span "
            f"{spread['val']:.1f} points of val top-1 and {spread['test']:.1f} of test top-1. A val-best "
            "configuration is therefore close to a draw among near-equals on val, which is why the paired tests "
            "are on test and why the seeds matter."]


def limitations(ctx):
    return [Heading("Limitations"),
            Bullets([*selection_limitation(ctx["prog"]), *multiplicity_limitation(ctx["prog"]),
                     "One dataset of ten similar classes and two small backbones, ViT-Tiny and the CNN MobileOne-S0: "
                     "larger ViTs and datasets further from ImageNet may rank the methods differently.",
                     f"The clean test split has {count(ctx['data'].get('test_images', ctx['r']['full']['n']))} images, so its "
                     "95 % intervals are about ±2 points wide; differences smaller than that are not resolved.",
                     "Training and timing are on a two-core CPU; speed ratios on a GPU differ. Training minutes are "
                     "the wall-clock time of single runs on a shared machine; the benchmark that interleaves the "
                     "methods step by step (`python -m woof.bench`) is the reference for speed ratios.",
                     "The backbone has seen the train and validation images during pretraining; the clean test split "
                     "removes that from the reported numbers but not from training.",
                     "Attention statistics are computed on a handful of images."])]


def multiplicity_limitation(prog):
    """How the answer's paired tests read when corrected for being made together (compare's
    answer_tests, Holm): which of those significant at 5 % alone stay so (none before two tests)."""
    tests = [(path, at(prog, path)) for path in (prog or {}).get("answer_tests", [])]
    if len(tests) < 2:
        return []
    sig = [(path, t) for path, t in tests if t["significant"]]
    text = (f"The answer rests on {len(tests)} paired tests of val-best configurations, each read at the 5 % level "
            "on its own; made together, one of them could pass by chance alone. ")
    if not sig:
        return [text + "None is significant even so, and correcting for the number of tests can only raise p."]
    said = [f"{comparison_words(path)} goes from {pvalue(t['p_value'])} to {pvalue(t['p_holm'])}, "
            f"{'still' if t['significant_holm'] else 'no longer'} significant" for path, t in sig]
    return [text + f"After Holm's correction for the {len(tests)}: " + "; ".join(said) + "."]


def comparison_words(path):
    """What an answer test compares, from its path (compare's answer_tests): "LoRA against full
    fine-tuning"; the CNN's name their backbone."""
    a, b = path.split(".")[-1].split("_vs_")
    on = "CNN " if path.startswith("cnn.") else ""
    return f"{on}{label(a)} against {on}{label(b)}"
