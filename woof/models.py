"""Creating timm models, choosing what trains for each fine-tuning method, saving and loading."""
import json
import os
import re
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from woof.io import atomic_path

# Where each timm family keeps its numbered blocks, for `freeze_blocks`.
_BLOCK_PATTERNS = (r"blocks\.(\d+)\.", r"stages\.(\d+)\.", r"layers\.(\d+)\.", r"layer(\d+)\.")


def pretrained_weights(model_cfg):
    """The local pretrained-weights file to load: $WOOF_WEIGHTS (a mirror's location, not a param),
    else model.weights; None downloads timm's weights from the hub."""
    return os.environ.get("WOOF_WEIGHTS") or model_cfg.get("weights")


def create_model(name, num_classes=10, img_size=None, weights=None, pretrained=True,
                 class_indices=None):
    """A timm model with a `num_classes` head.

    weights: a local safetensors/pth file with the pretrained state dict (air-gapped machines);
    None downloads timm's default pretrained weights from the hub.
    class_indices: ImageNet indices of our classes; when given, the new head starts as the
    matching rows of the pretrained 1000-class head, so the untrained model *is* the zero-shot
    baseline and fine-tuning starts from it instead of from a random head.
    """
    if not timm.is_model(name):
        raise ValueError(f"unknown model.name {name!r}: not a timm model (see timm.list_models())")
    kwargs = {}
    if pretrained and weights:
        if not Path(weights).exists():
            raise FileNotFoundError(f"model.weights {weights} does not exist")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights), custom_load=False)
    from_imagenet_head = pretrained and class_indices is not None
    if from_imagenet_head:
        # -1 means "not an ImageNet class"; as a row index it would silently pick class 999.
        bad = [pos for pos, i in enumerate(class_indices) if not 0 <= i < 1000]
        if bad:
            raise ValueError(f"class_indices={list(class_indices)}: the classes at positions {bad} have no "
                             f"ImageNet row (0..999); use class_indices=None for a random head")
    kwargs["num_classes"] = 1000 if from_imagenet_head else num_classes
    size = {"img_size": img_size} if img_size else {}
    try:
        # ViT-style models take img_size (and resample their position embeddings); CNNs do not.
        model = timm.create_model(name, pretrained=pretrained, **size, **kwargs)
    except TypeError as e:
        if not size or "img_size" not in str(e):  # any other TypeError is a real error
            raise
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    if from_imagenet_head:
        old = model.get_classifier()
        idx = torch.as_tensor(class_indices)
        model.reset_classifier(num_classes)
        new = model.get_classifier()
        with torch.no_grad():
            new.weight.copy_(old.weight[idx])
            new.bias.copy_(old.bias[idx])
    return model


def classifier_name(model):
    """timm's name for the classifier: "head" (ViT), "fc" (ResNet), "head.fc" (ConvNeXt)."""
    cfg = getattr(model, "pretrained_cfg", None)  # plain nn.Modules have none
    return cfg.get("classifier", "head") if isinstance(cfg, dict) else "head"


def data_config(model, image_size):
    """timm's preprocessing for this model (mean, std, interpolation, crop_pct) at our image size."""
    return timm.data.resolve_data_config({"input_size": (3, image_size, image_size)}, model=model)


def trainable_prefixes(model, names):
    """What to train, as parameter-name prefixes (for `has_prefix`). "head" means the literal
    `head` module plus timm's classifier (`fc` in a ResNet, `head.fc` in a ConvNeXt); other names
    are taken literally. A name that matches no parameter is a ValueError (a typo would otherwise
    silently train nothing)."""
    names = (names,) if isinstance(names, str) else tuple(names or ())
    params = [n for n, _ in model.named_parameters()]
    prefixes, unmatched = [], []
    for name in names:
        candidates = dict.fromkeys([name, classifier_name(model)] if name == "head" else [name])
        found = [q for q in candidates if any(has_prefix(n, (q,)) for n in params)]
        prefixes += found
        unmatched += [] if found else [name]
    if unmatched:
        raise ValueError(f"trainable={list(names)}: {unmatched} match no parameter of {type(model).__name__}")
    return tuple(prefixes)


def has_prefix(name, prefixes):
    # On dot boundaries: "blocks.1" means block 1, not blocks 10 and 11.
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def set_trainable(model, trainable=("all",), freeze_blocks=0):
    """Choose what full fine-tuning trains.

    trainable: ["all"], or names as in `trainable_prefixes`: ["head"] (linear probing),
    ["head", "blocks.11"], ...
    freeze_blocks: freeze everything up to and including block k-1 (patch embedding, position
    embedding, first k blocks). Frozen leading layers also stop backpropagation: autograd only
    records ops whose inputs need a gradient, so no activation gradient is computed below block k.
    """
    trainable = list(trainable or ["all"])
    if freeze_blocks < 0:
        raise ValueError(f"full.freeze_blocks must be >= 0, got {freeze_blocks}")
    if freeze_blocks:
        blocks = num_blocks(model)
        if not blocks:
            raise ValueError(f"full.freeze_blocks={freeze_blocks}: the model has no numbered blocks")
        if freeze_blocks > blocks:
            raise ValueError(f"full.freeze_blocks={freeze_blocks} but the model has {blocks} blocks")
    if trainable != ["all"]:
        prefixes = trainable_prefixes(model, trainable)
        for n, p in model.named_parameters():
            p.requires_grad_(has_prefix(n, prefixes))
    if freeze_blocks:
        # Parameters come in forward order, so everything up to block k-1's last one is the
        # input side of the network: embeddings, stem, the first k blocks.
        block_of = [_block_index(n) for n, _ in model.named_parameters()]
        last = max(i for i, b in enumerate(block_of) if b is not None and b < freeze_blocks)
        for i, p in enumerate(model.parameters()):
            if i <= last:
                p.requires_grad_(False)
    return model


def _block_index(param_name):
    for pattern in _BLOCK_PATTERNS:
        m = re.match(pattern, param_name)
        if m:
            return int(m.group(1)) - (1 if pattern.startswith("layer(") else 0)
    return None


def num_blocks(model):
    """How many numbered blocks (ViT blocks, ResNet stages) the model has; 0 for none."""
    return len({b for b in (_block_index(n) for n, _ in model.named_parameters()) if b is not None})


def only_classifier_trains(model):
    """True when exactly the classifier trains: then features can be computed once and cached.
    The classifier alone, not all of "head": a ConvNeXt's head.norm runs before the point where
    features are cached, so training it needs the full forward."""
    head = (classifier_name(model),)
    return all(has_prefix(n, head) == p.requires_grad for n, p in model.named_parameters())


def save_model(model, out_dir, config, filename="model.safetensors"):
    """Weights as safetensors plus the config.json needed to rebuild the architecture."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / filename) as tmp:
        save_file(state, str(tmp))
    with atomic_path(out_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")


def load_model(model_dir, filename="model.safetensors", device="cpu"):
    """Rebuild a model saved by `save_model` (architecture from config.json, no download)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    model = create_model(config["model"], num_classes=config["num_classes"],
                         img_size=config.get("image_size"), pretrained=False)
    model.load_state_dict(load_file(str(model_dir / filename), device="cpu"), strict=True)
    return model.to(device).eval(), config


def load_models(root="models", device="cpu"):
    """The two fine-tuned models of the pipeline, ready for inference: {"full": m, "lora": m}.

    The LoRA model is the merged one (plain timm architecture, no adapter overhead)."""
    root = Path(root)
    return {method: load_model(root / method, device=device)[0] for method in ("full", "lora")}
