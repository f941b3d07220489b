"""Stage visualize_attention: where the pretrained, fully fine-tuned and LoRA ViTs look.

Reads data/prepared/test.safetensors (val.safetensors under data.split=official) + classes.json, the pretrained weights and models/{full,lora};
writes plots/attention_cls.jpg, plots/attention_rollout.jpg and metrics/attention.json.
The maps are functions in woof/attention.py; this script only wires them to the pipeline files.
A model without attention maps (a CNN backbone such as resnet18) gets {"skipped": reason} and
placeholder figures: the stage still succeeds, so `dvc exp run -S model.name=resnet18` completes.
"""
from pathlib import Path

import torch

from woof import attention, config
from woof.data import load_classes, load_split, normalize
from woof.errors import InputError, capped, run_stage
from woof.evaluate import predict
from woof.io import write_json
from woof.models import create_model, data_config, load_model, zero_shot_model

CLASSES = "data/prepared/classes.json"
PLOTS = {"cls": "plots/attention_cls.jpg", "rollout": "plots/attention_rollout.jpg"}
METRICS = "metrics/attention.json"


def skip(reason):
    for path in PLOTS.values():
        attention.placeholder(path, f"No attention maps: {reason}")
    write_json(METRICS, {"skipped": reason})
    print(f"visualize_attention skipped: {reason}")


def main():
    cfg = config.load()
    p_model, size = cfg.model, cfg.data.image_size
    num_images, seed = cfg.attention.num_images, cfg.attention.seed

    # The architecture alone (random weights, no download) says whether there is anything to draw.
    reason = attention.unsupported(create_model(p_model.name, img_size=size, pretrained=False))
    if reason:
        return skip(f"{p_model.name} {reason}")

    # Images the backbone never saw when there are such (the clean test split), else val.
    split = "test" if Path("data/prepared/test.safetensors").exists() else "val"
    images, labels = load_split(f"data/prepared/{split}.safetensors")  # uint8 (N, 3, S, S), int64 (N,)
    classes = load_classes(CLASSES)
    names = [c["name"] for c in classes]
    num_images = capped("attention.num_images", num_images, len(labels), f"the images of data/prepared/{split}.safetensors")
    idx = attention.choose_images(labels, num_images, seed)
    images, labels = images[idx], labels[idx]  # (B, 3, S, S), (B,)

    # The pretrained model with its ImageNet head restricted to our 10 classes = zero-shot baseline.
    models = {"pretrained": zero_shot_model(p_model, classes, size).eval()}
    for method in ("full", "lora"):
        model, saved = load_model(f"models/{method}")
        if saved.get("classes") and saved["classes"] != [c["wnid"] for c in classes]:
            raise InputError(f"models/{method} was trained on classes in another order than {CLASSES}")
        models[method] = model

    cls_maps, rollout_maps, preds = {}, {}, {}
    for name, model in models.items():
        cfg = data_config(model, size)
        x = normalize(images, cfg["mean"], cfg["std"])  # (B, 3, S, S) float32
        cls_maps[name] = attention.cls_attention(model, x)  # (B, heads, h, w)
        rollout_maps[name] = attention.gradient_rollout(model, x, labels)  # (B, h, w)
        # fp32 on CPU, like the maps: the confidence printed over a map is from the same forward pass.
        logits, _ = predict(model, images, cfg, batch_size=len(images))  # (B, classes)
        conf, pred = logits.softmax(-1).max(-1)
        preds[name] = [(names[p], c) for p, c in zip(pred.tolist(), conf.tolist())]
        print(f"{name}: {sum(p == names[t] for (p, _), t in zip(preds[name], labels.tolist()))}"
              f"/{len(labels)} of the shown images right")

    true_names = [names[t] for t in labels.tolist()]
    attention.attention_grid(PLOTS["cls"], images, {k: m.mean(1) for k, m in cls_maps.items()},
                             true_names, preds, title="Last-layer CLS attention (mean over heads)")
    attention.attention_grid(PLOTS["rollout"], images, rollout_maps, true_names, preds,
                             title="Gradient-weighted attention rollout for the true class")
    metrics = attention.attention_metrics(cls_maps, rollout_maps)
    metrics["num_images"], metrics["split"] = len(idx), split
    write_json(METRICS, metrics)
    print({k: v for k, v in metrics.items() if k in models})


if __name__ == "__main__":
    torch.manual_seed(0)
    run_stage(main)
