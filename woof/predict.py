"""Use the pipeline's models on your own photos:

    python -m woof.predict PHOTO.jpg [PHOTO.png ...] [--model full|lora|zero_shot|all] [--attention out.png]

prints each model's top-5 breeds with probabilities, preprocessed exactly as the evaluation split
(timm's eval transform for the model: resize, center crop, normalise), for a JPEG or PNG of any
size. --attention writes the photos with each model's last-layer CLS attention over them (ViTs).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from woof import attention, config
from woof.data import class_table, normalize, pil_transform
from woof.errors import InputError, ParamError, run_stage
from woof.evaluate import predict
from woof.models import PROJECT, data_config, load_model, zero_shot_model

METHODS = ("full", "lora", "zero_shot")


def load_photo(path):
    """A photo as RGB, or one InputError line saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} not found: give the path of a JPEG or PNG photo")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path} is not an image PIL can read ({type(e).__name__}): give a JPEG or PNG photo") from None


def load(methods, root=None):
    """{method: (model, class names)} for the pipeline's models; the zero-shot head is the
    pretrained model's ImageNet rows of the classes the fine-tuned models learnt."""
    root = Path(root) if root is not None else PROJECT / "models"
    missing = [m for m in ("full", "lora") if not (root / m / "model.safetensors").exists()]
    if missing:
        raise InputError(f"{root / missing[0]}/model.safetensors not found: build the models first "
                         f"(`make`, or `dvc repro` in {PROJECT})")
    out = {}
    for m in ("full", "lora"):
        model, saved = load_model(root / m)
        out[m] = (model, class_table(saved["classes"]), saved["image_size"])
    if "zero_shot" in methods:
        classes, size = out["full"][1], out["full"][2]
        cfg = config.load(PROJECT / "params.yaml")
        out["zero_shot"] = (zero_shot_model(cfg.model, classes, size).eval(), classes, size)
    return {m: out[m] for m in methods}


def eval_view(photos, model, size):
    """The photos as the evaluation split has its images: timm's eval transform for the model,
    uint8 (N, 3, S, S), and the model's data config."""
    dcfg = data_config(model, size)
    transform = pil_transform(dcfg, size, dcfg["crop_pct"])
    return torch.stack([torch.from_numpy(np.array(transform(p))).permute(2, 0, 1) for p in photos]), dcfg


def top_k(models, photos, k=5):
    """{method: [[(breed, probability), ...k] per photo]}, each model at its own preprocessing."""
    result = {}
    for method, (model, classes, size) in models.items():
        images, dcfg = eval_view(photos, model, size)  # uint8 (N, 3, S, S)
        logits, _ = predict(model, images, dcfg, batch_size=len(images))
        probs, idx = logits.softmax(-1).topk(min(k, logits.shape[1]), dim=-1)  # (N, k)
        result[method] = [[(classes[i]["name"].split(",")[0], p) for i, p in zip(row_i.tolist(), row_p.tolist())]
                          for row_i, row_p in zip(idx, probs)]
    return result


def draw_attention(models, photos, names, path):
    """The photos with each ViT's last-layer CLS attention over them (woof.attention)."""
    vits = {m: v for m, v in models.items() if not attention.unsupported(v[0])}
    if not vits:
        raise ParamError(f"--attention: {next(iter(models.values()))[0].default_cfg.get('architecture', 'this model')} "
                         "has no attention maps (a CNN): leave --attention out")
    maps, preds, images = {}, {}, None
    for method, (model, classes, size) in vits.items():
        x8, dcfg = eval_view(photos, model, size)  # uint8 (N, 3, S, S)
        images = x8 if images is None else images
        x = normalize(x8, dcfg["mean"], dcfg["std"])  # (N, 3, S, S) float
        maps[method] = attention.cls_attention(model, x).mean(1)  # (N, h, w)
        logits = model(x).softmax(-1)
        conf, pred = logits.max(-1)
        preds[method] = [(classes[i]["name"], c) for i, c in zip(pred.tolist(), conf.tolist())]
    attention.attention_grid(path, images, maps, None, preds, title="Last-layer CLS attention (mean over heads): " + ", ".join(names))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m woof.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="+", help="JPEG or PNG files, any size")
    ap.add_argument("--model", choices=[*METHODS, "all"], default="all")
    ap.add_argument("--attention", metavar="OUT.png", help="write the photos with each model's attention map (.png or .jpg)")
    ap.add_argument("--top", type=int, default=5, help="how many breeds to list")
    ap.add_argument("--models-dir", default=None, help="the folder holding full/ and lora/ (default: models/)")
    args = ap.parse_args(argv)
    if args.attention and Path(args.attention).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ParamError(f"--attention {args.attention}: name a .png or .jpg file to write the maps to")
    photos = [load_photo(p) for p in args.photos]  # a bad file fails before any model loads
    methods = METHODS if args.model == "all" else (args.model,)
    models = load(methods, args.models_dir)
    for method, rows in top_k(models, photos, args.top).items():
        for path, row in zip(args.photos, rows):
            print(f"{method:>9}  {path}: " + ", ".join(f"{name} {100 * p:.1f} %" for name, p in row))
    if args.attention:
        with torch.no_grad():
            draw_attention(models, photos, [Path(p).name for p in args.photos], args.attention)
        print(f"attention maps: {args.attention}")


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
