"""Creating timm models, choosing what trains for each fine-tuning method, saving and loading."""
import json
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from woof.errors import InputError, ParamError
from woof.io import atomic_path


def pretrained_weights(model_cfg):
    """The local pretrained-weights file to load: $WOOF_WEIGHTS (a mirror's location, not a param),
    else model.weights (model_cfg: woof.config.Model); None downloads timm's weights from the hub."""
    return os.environ.get("WOOF_WEIGHTS") or model_cfg.weights


def check_weights_file(path, name):
    """A local weights file must be readable and hold `name`'s parameters: one clear error for a
    missing, truncated or foreign file, instead of a SafetensorError or a list of 150 key names."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model.weights {path} does not exist (set model.weights or $WOOF_WEIGHTS "
                         "to a local file of pretrained weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:  # checks that the header covers the whole file
                keys = set(f.keys())
        else:
            keys = set(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except Exception as e:  # safetensors and torch raise several types for a damaged file
        raise InputError(f"model.weights {path} cannot be read: the file is truncated or not a "
                         f"{'safetensors' if path.suffix == '.safetensors' else 'PyTorch'} file "
                         f"({type(e).__name__}); download it again") from e
    expected = set(_architecture(name).state_dict())
    matching = len(keys & expected)
    if matching < 0.9 * len(expected):
        raise InputError(f"model.weights {path} holds another architecture than model.name={name}: "
                         f"{matching} of its {len(keys)} tensors match the model's {len(expected)}")


def _architecture(name):
    """`name`'s modules and parameter names, built on the meta device: no memory, no time, and no
    draw from the global RNG, so what a check builds never changes a run's random initialisation
    (LoRA's A matrices would otherwise depend on whether a weights file was checked)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return timm.create_model(name, pretrained=False)


def check_image_size(name, image_size):
    """data.image_size against the model: a ViT needs a whole number of patches, at least 2 a side
    (17 px at patch 16 would silently give a 1x1 grid)."""
    model = _architecture(name)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if patch and (image_size % patch or image_size < 2 * patch):
        raise ParamError(f"data.image_size={image_size} does not fit {name}: use a multiple of its "
                         f"patch size {patch}, at least {2 * patch} (e.g. {max(2, round(image_size / patch)) * patch})")


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
        raise ParamError(f"unknown model.name {name!r}: not a timm model (see timm.list_models())")
    kwargs = {}
    if pretrained and weights:
        check_weights_file(weights, name)
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
    offline = (f"without internet, set model.weights or $WOOF_WEIGHTS to a local file of {name}'s "
               "weights (`make offline SHARED=...` does)")
    if pretrained and not weights and not _hub_weights_available(name):  # instead of minutes of retries
        raise InputError(f"the Hugging Face hub is unreachable and {name}'s weights are not in its local cache: {offline}")
    try:
        model = _timm_model(name, pretrained, size, kwargs)
    except (OSError, ConnectionError, TimeoutError) as e:  # huggingface_hub's errors are OSErrors
        if weights or not pretrained:
            raise
        raise InputError(f"could not download {name}'s pretrained weights from the Hugging Face hub "
                         f"({type(e).__name__}): {offline}") from e
    if from_imagenet_head:
        old = model.get_classifier()
        idx = torch.as_tensor(class_indices)
        model.reset_classifier(num_classes)
        new = model.get_classifier()
        with torch.no_grad():
            new.weight.copy_(old.weight[idx])
            new.bias.copy_(old.bias[idx])
    return model


def _hub_weights_available(name, timeout=5):
    """False when timm would have to download `name`'s weights and the hub cannot be reached (a
    5 s connection test; behind a proxy, or with HF_HUB_OFFLINE, the hub library decides)."""
    if os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True
    import socket
    import urllib.parse
    from huggingface_hub import try_to_load_from_cache
    hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
    if not hub_id or any(isinstance(try_to_load_from_cache(hub_id, f), str)
                         for f in ("model.safetensors", "pytorch_model.bin")):
        return True  # not a hub model, or already downloaded
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _timm_model(name, pretrained, size, kwargs):
    try:
        # ViT-style models take img_size (and resample their position embeddings); CNNs do not.
        return timm.create_model(name, pretrained=pretrained, **size, **kwargs)
    except TypeError as e:
        if not size or "img_size" not in str(e):  # any other TypeError is a real error
            raise
        return timm.create_model(name, pretrained=pretrained, **kwargs)


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
        raise ParamError(f"trainable={list(names)}: {unmatched} match no parameter of {type(model).__name__}")
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
    if freeze_blocks:
        blocks = num_blocks(model)
        if not blocks:
            raise ParamError(f"full.freeze_blocks={freeze_blocks}: the model has no numbered blocks")
        if freeze_blocks > blocks:
            raise ParamError(f"full.freeze_blocks={freeze_blocks} but the model has {blocks} blocks")
    if trainable != ["all"]:
        prefixes = trainable_prefixes(model, trainable)
        for n, p in model.named_parameters():
            p.requires_grad_(has_prefix(n, prefixes))
    if freeze_blocks:  # the stem (embeddings) and the first k blocks: the input side of the network
        frozen = {n for group in block_groups(model)[:freeze_blocks + 1] for n in group}
        for n, p in model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
    return model


def block_groups(model):
    """timm's own grouping of a model's parameter names (`group_matcher(coarse=True)`), in forward
    order: [stem, block 0, ..., block B-1, head side]; [] for a model timm does not group."""
    if not hasattr(model, "group_matcher"):
        return []
    from timm.models import group_parameters
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [groups[k] for k in sorted(groups)]


def num_blocks(model):
    """How many blocks (ViT blocks, ResNet or ConvNeXt stages) timm's grouping gives; 0 for none."""
    return max(0, len(block_groups(model)) - 2)


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


def count_parameters(model):
    """{"total", "trainable", "lora", "trainable_pct", "per_module": {top-level name: {"total", "trainable"}}}.
    LoRA parameters are found by woof.lora's naming contract (a `lora_*` part in the name)."""
    total = trainable = lora = 0
    per_module = {}
    for name, p in model.named_parameters():  # shared (tied) parameters count once
        n = p.numel()
        part = per_module.setdefault(name.split(".")[0], {"total": 0, "trainable": 0})
        total += n
        part["total"] += n
        lora += n if any(part.startswith("lora_") for part in name.split(".")) else 0
        if p.requires_grad:
            trainable += n
            part["trainable"] += n
    return {"total": total, "trainable": trainable, "lora": lora,
            "trainable_pct": 100.0 * trainable / max(total, 1), "per_module": per_module}
