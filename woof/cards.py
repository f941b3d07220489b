"""Model cards for the pipeline's two models (models/woof-full.md and models/woof-lora.md, the
names of their dvc.yaml artifacts): what each is, how it was trained, how well it does on clean
and corrupted images, how well calibrated it is, and where not to trust it. Words only, from
metrics/compare.json and params.yaml, written by the paper stage."""
from woof.io import atomic_path, read_json
from woof.labels import SPLIT_NAMES, count, label, pct, pct_ci

WHAT = {"full": "every weight fine-tuned",
        "lora": "a LoRA adapter trained on the frozen backbone (models/lora/adapter.safetensors), shipped merged "
                "into a plain model (models/lora/model.safetensors)"}


def card(res, method, params):
    """One model card as Markdown."""
    r, d, b = res[method], res.get("data") or {}, res.get("beyond")
    p, model = params.get(method, {}), params.get("model", {}).get("name", "?")
    size = params.get("data", {}).get("image_size", "?")
    split = res["split"]
    recipe = (f"{p.get('epochs')} epochs, AdamW at lr {p.get('lr'):g}, batch {p.get('batch_size')}, weight decay "
              f"{p.get('weight_decay')}, label smoothing {p.get('label_smoothing')}, seed {p.get('seed')}")
    if method == "lora":
        recipe += (f"; rank {p.get('rank')}, alpha {p.get('alpha')}" + (" (DoRA)" if p.get("dora") else "")
                   + f", on the modules matching `{p.get('targets')}`, and {', '.join(p.get('trainable') or []) or 'nothing'} in full")
    elif p.get("layer_decay"):
        recipe += f"; layer-wise lr decay {p['layer_decay']}"
    lines = [f"# woof-{method}: {model} on ImageWoof, {label(method)}", "",
             f"timm `{model}` pretrained on ImageNet, adapted to the 10 dog breeds of ImageWoof with {WHAT[method]}: "
             f"{count(r['total_params'])} parameters, {count(r['trainable_params'])} of them trained. "
             f"Use it with `python -m woof.predict PHOTO.jpg --model {method}` or `woof.models.load_models()['{method}']`; "
             f"`dvc artifacts get` fetches it as `woof-{method}` from a DVC remote. Generated from `metrics/compare.json` "
             "by the paper stage.", "",
             "## Training", "",
             f"- Data: ImageWoof 2 (archive sha256 `{(d.get('archive_sha256') or '?')[:16]}`), "
             f"{count(d.get('train_images', 0))} training images at {size} px; the "
             f"{count(d.get('test_images', 0))} ImageNet-validation-origin images are held out as a clean test split.",
             f"- Recipe: {recipe}.",
             f"- Cost: {r['train_minutes']:.1f} minutes on {r.get('hardware', '?')}, {r.get('precision', '?')}"
             + (", torch.compile" if r.get("compile") else "") + ".", "",
             "## Accuracy", "",
             f"- {SPLIT_NAMES[split].capitalize()} top-1: {pct_ci(r['top1'], r['top1_lo'], r['top1_hi'])} "
             f"(95 % Wilson interval, {count(r['n'])} images no model here was trained or chosen on).",
             f"- Validation top-1: {pct_ci(r['val_top1'], r['val_top1_lo'], r['val_top1_hi'])} ({count(r['val_n'])} images, "
             "most of which the backbone saw in ImageNet pretraining: optimistic).",
             f"- The pretrained model's ImageNet head restricted to the 10 breeds (no training) scores "
             f"{pct(res['zero_shot']['top1'])} on the same {SPLIT_NAMES[split]} images.", ""]
    if b:
        c, m = b["calibration"][method], b["models"][method]
        lines += ["## Calibration and robustness", "",
                  f"- Expected calibration error on the {SPLIT_NAMES['test']} split: {pct(c['test']['ece'])}; dividing the "
                  f"logits by T = {c['temperature']:.2f} (fitted on validation) brings it to {pct(c['test']['ece_scaled'])}.",
                  f"- Under {len(b['corruptions'])} synthetic corruptions at {len(b['severities'])} severities (ImageWoof-C "
                  f"of the clean test images): {pct_ci(m['corrupted'], *m['corrupted_ci'])} on average, "
                  f"{pct(m['worst'])} at the highest severity (zero-shot: {pct(b['models']['zero_shot']['corrupted'])}).", ""]
    lines += ["## Limitations", "",
              f"- {pct(res.get('seen_share'), 0) if res.get('seen_share') is not None else 'Most'} of ImageWoof's images "
              "are ImageNet training images the backbone learnt with labels: only the clean test split measures "
              "generalisation, and it holds 500 images (intervals of about +-3 points).",
              "- It knows 10 breeds and nothing else: any photo, of another breed or no dog at all, gets one of the 10 "
              "labels.",
              f"- One training seed; trained and evaluated at {size} px from the archive above. The corruptions are "
              "synthetic; natural distribution shifts are not measured.", ""]
    return "\n".join(lines)


def write_cards(results_path="metrics/compare.json", params=None, out_dir="models"):
    """models/woof-{full,lora}.md; -> their paths."""
    res = read_json(results_path)
    paths = []
    for method in ("full", "lora"):
        path = f"{out_dir}/woof-{method}.md"
        with atomic_path(path) as tmp:
            tmp.write_text(card(res, method, params or {}))
        paths.append(path)
    return paths
