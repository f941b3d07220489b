"""Creating timm models, choosing what trains for each fine-tuning method, saving and loading."""
import difflib
import json
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from woof.errors import InputError, ParamError, reading
from woof.io import atomic_path


def pretrained_weights(model_cfg):
    """The local pretrained-weights file to load: $WOOF_WEIGHTS (a mirror's location, not a param:
    a file, or a folder of <model.name>.safetensors files), else model.weights (model_cfg:
    woof.config.Model); None downloads timm's weights from the hub."""
    mirror = os.environ.get("WOOF_WEIGHTS")
    if mirror and Path(mirror).is_dir():
        return str(Path(mirror) / f"{model_cfg.name}.safetensors")
    return mirror or model_cfg.weights


def check_weights_file(path, name):
    """A local weights file must be readable and hold `name`'s parameters: one clear error for a
    missing, truncated or foreign file, instead of a SafetensorError or a list of 150 key names.
    -> True when the file holds the model's fused inference-time form (MobileOne's release)."""
    check_model_name(name)  # a misspelt model.name is the mistake to report, not its missing file
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model.weights {path} {'is a folder' if path.is_dir() else 'does not exist'} (set "
                         "model.weights or $WOOF_WEIGHTS to a local file of pretrained weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:  # checks that the header covers the whole file
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    except Exception as e:  # safetensors and torch raise several types for a damaged file
        raise InputError(f"model.weights {path} cannot be read: the file is truncated or not a "
                         f"{'safetensors' if path.suffix == '.safetensors' else 'PyTorch'} file "
                         f"({type(e).__name__}); download it again") from e
    # Same name and shape: vit_small's file has vit_tiny's names, none of its shapes. A few may
    # differ (a position embedding timm resamples to another image size).
    def matching(model):
        return sum(shapes.get(k) == tuple(v.shape) for k, v in model.state_dict().items()), len(model.state_dict())
    found, total = matching(_architecture(name))
    if found >= 0.9 * total:
        return False
    with torch.random.fork_rng(devices=[]), torch.device("meta"):  # the fused kernels on meta too
        plain = _architecture(name)
        fused = _reparameterized(plain) if _fusable(plain) else None
    if fused is not None and matching(fused) == (len(shapes), len(shapes)):
        return True  # every tensor of the inference-time form of a reparameterizable model (MobileOne)
    raise InputError(f"model.weights {path} holds another architecture than model.name={name}: "
                     f"{found} of its {len(shapes)} tensors match the model's {total} "
                     "(set model.weights to a file of this model, or model.name to the file's model)")


def _fusable(model):
    return any(hasattr(m, "reparameterize") for m in model.modules())


def _reparameterized(model):
    """A reparameterizable model's inference-time form, in place (each block fused into one
    convolution); any other model as it is."""
    from timm.utils.model import reparameterize_model
    return reparameterize_model(model, inplace=True) if _fusable(model) else model


def check_model_name(name):
    """model.name must be a timm model: else a ParamError offering timm's closest names."""
    if timm.is_model(name):
        return
    family = timm.list_models(f"{str(name).split('_')[0]}*") or timm.list_models()  # vit_..., resnet...
    close = difflib.get_close_matches(str(name), family, n=3, cutoff=0.0)
    raise ParamError(f"unknown model.name {name!r}: not a timm model; the closest are {', '.join(close)} "
                     "(python -c 'import timm; print(timm.list_models())' lists them all)")


def fused_form(model_cfg):
    """Whether the pretrained weights the pipeline starts from are a reparameterizable model's
    fused inference-time form (MobileOne's release): then every stage builds that form, whose
    module names (and LoRA targets) are the fused ones."""
    weights = pretrained_weights(model_cfg)
    return bool(weights) and check_weights_file(weights, model_cfg.name)


def _architecture(name, fused=False):
    """`name`'s modules and parameter names, built on the meta device: no memory, no time, and no
    draw from the global RNG, so what a check builds never changes a run's random initialisation
    (LoRA's A matrices would otherwise depend on whether a weights file was checked)."""
    check_model_name(name)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            model = timm.create_model(name, pretrained=False)
            return _reparameterized(model) if fused else model
        except RuntimeError as e:  # a tag timm does not have: vit_tiny_patch16_224.bogus
            raise ParamError(f"model.name={name!r}: {e}") from None


def check_method(name, method, section, fused=False):
    """What a params section's method asks of the model (trainable names, freeze_blocks, LoRA
    targets and rank), tried on `name`'s meta architecture: a ParamError naming `section`'s param
    before data is read or weights are loaded. method: a woof.step.Method (woof.step imports this
    module). fused: check the model's fused form (`fused_form`). -> the prepared meta model (what
    trains is its requires_grad)."""
    model = _architecture(name, fused)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = method.prepare(model)
    except ValueError as e:  # woof.lora and set_trainable name the argument: targets=..., trainable=...
        message = str(e)
        raise ParamError(message if message.startswith(f"{section}.") else f"{section}.{message}") from None
    for module_name, module in model.named_modules():
        if not hasattr(module, "lora_A"):  # woof.lora's adapters (not imported: woof.lora imports this module)
            continue
        # B·A has rank at most min(in, out): a larger rank only adds parameters that cannot help.
        rank, width = method.lora["rank"], min(module.lora_A[0].numel(), module.lora_B.shape[0])
        if rank > width:
            raise ParamError(f"{section}.rank={rank} is more than {module_name}'s width {width} "
                             f"(the most B·A can have): use {section}.rank <= {width}, or leave that "
                             f"layer out of {section}.targets")
    return model


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
                 class_indices=None, fused=False):
    """A timm model with a `num_classes` head.

    weights: a local safetensors/pth file with the pretrained state dict (air-gapped machines);
    None downloads timm's default pretrained weights from the hub.
    class_indices: ImageNet indices of our classes; when given, the new head starts as the
    matching rows of the pretrained 1000-class head, so the untrained model *is* the zero-shot
    baseline and fine-tuning starts from it instead of from a random head.
    """
    check_model_name(name)
    kwargs = {}
    if pretrained and weights:
        fused = check_weights_file(weights, name)  # the file decides the form
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights), custom_load=False)
    from_imagenet_head = pretrained and class_indices is not None
    if from_imagenet_head:
        # -1 means "not an ImageNet class"; as a row index it would silently pick class 999.
        bad = [pos for pos, i in enumerate(class_indices) if not 0 <= i < 1000]
        if bad:
            raise ParamError(f"class_indices={list(class_indices)}: the classes at positions {bad} have no "
                             f"ImageNet row (0..999); use class_indices=None for a random head")
    kwargs["num_classes"] = 1000 if from_imagenet_head else num_classes
    size = {"img_size": img_size} if img_size else {}
    offline = (f"without internet, set model.weights or $WOOF_WEIGHTS to a local file of {name}'s "
               "weights (`make offline SHARED=...` does)")
    if pretrained and not weights and not _hub_weights_available(name):  # instead of minutes of retries
        raise InputError(f"the Hugging Face hub is unreachable and {name}'s weights are not in its local cache: {offline}")
    try:
        if fused and pretrained and weights:
            model = _fused_model(name, weights, size, kwargs)
        else:
            model = _timm_model(name, pretrained, size, kwargs)
            model = _reparameterized(model) if fused else model
    except (OSError, ConnectionError, TimeoutError) as e:  # huggingface_hub's errors are OSErrors
        if weights or not pretrained:
            raise
        raise InputError(f"could not download {name}'s pretrained weights from the Hugging Face hub "
                         f"({type(e).__name__}): {offline}") from e
    except RuntimeError as e:  # load_state_dict: a shape the check's 10 % tolerance let through
        if not (pretrained and weights):
            raise
        raise InputError(f"model.weights {weights} does not fit model.name={name}: "
                         f"{str(e).strip().splitlines()[0][:200]}") from e
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


def _fused_model(name, weights, size, kwargs):
    """A reparameterizable model from a file of its inference-time form: built unfused with
    random weights, fused, then loaded with strict keys (timm's loader expects the unfused keys)."""
    num_classes = kwargs["num_classes"]
    model = _reparameterized(_timm_model(name, False, size, {"num_classes": 1000}))
    model.load_state_dict(load_file(str(weights)), strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


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
        tops = ", ".join(dict.fromkeys(n.split(".")[0] for n in params))
        raise ParamError(f"trainable={list(names)}: {unmatched} match no parameter of {type(model).__name__} "
                         f"(names are parameter-name prefixes, e.g. head, blocks.11; its top level: {tops})")
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


def saved_config(model_dir):
    """config.json of a model saved by `save_model`, checked: an InputError names a missing or
    damaged file."""
    path = Path(model_dir) / "config.json"
    with reading(path, f"train {model_dir} again (dvc repro)"):
        config = json.loads(path.read_text())
        if not (isinstance(config, dict) and isinstance(config.get("model"), str)
                and isinstance(config.get("num_classes"), int)):
            raise ValueError("no model name and number of classes")
        if not timm.is_model(config["model"]):
            raise ValueError(f"{config['model']!r} is not a timm model")
    return config


def load_model(model_dir, filename="model.safetensors", device="cpu"):
    """Rebuild a model saved by `save_model` (architecture from config.json, no download)."""
    model_dir = Path(model_dir)
    config = saved_config(model_dir)
    with reading(model_dir / filename, f"train {model_dir} again (dvc repro)"):
        state = load_file(str(model_dir / filename), device="cpu")
        model = create_model(config["model"], num_classes=config["num_classes"],
                             img_size=config.get("image_size"), pretrained=False, fused=config.get("fused", False))
        model.load_state_dict(state, strict=True)  # a missing or misshapen tensor: another model's file
    return model.to(device).eval(), config


def zero_shot_model(model_cfg, classes, image_size):
    """The untrained baseline: the pretrained model with its ImageNet head restricted to the task's
    classes (rows picked by each class's `imagenet_index`)."""
    return create_model(model_cfg.name, num_classes=len(classes), img_size=image_size,
                        weights=pretrained_weights(model_cfg), class_indices=[c["imagenet_index"] for c in classes])


def pipeline_models(model_cfg, classes, image_size, root="models"):
    """The models every evaluating stage compares, on the same footing: {"zero_shot", "full",
    "lora" (merged)}. An InputError names a fine-tuned model trained with another model, image
    size or class list than now (it would be compared with the wrong baseline)."""
    now = {"model": (model_cfg.name, "model.name"), "image_size": (image_size, "data.image_size"),
           "classes": ([c["wnid"] for c in classes], "class list (classes.json)")}
    for m in ("full", "lora"):
        saved = saved_config(Path(root) / m)
        stale = [param for k, (v, param) in now.items() if k in saved and saved[k] != v]
        if stale:
            raise InputError(f"{root}/{m} was trained with another {' and '.join(stale)} than now: "
                             f"run `dvc repro train_{m}`")
    models = {"zero_shot": zero_shot_model(model_cfg, classes, image_size).eval()}
    models.update({m: load_model(Path(root) / m)[0] for m in ("full", "lora")})
    return models


PROJECT = Path(__file__).resolve().parents[1]  # the repository: models/ is found from anywhere


def load_models(root=None, device="cpu"):
    """The two fine-tuned models of the pipeline, ready for inference: {"full": m, "lora": m}.
    root: the folder holding full/ and lora/ (default: the project's models/). The LoRA model is
    the merged one (plain timm architecture, no adapter overhead)."""
    root = Path(root) if root is not None else PROJECT / "models"
    for method in ("full", "lora"):
        if not (root / method / "model.safetensors").exists():
            raise InputError(f"{root / method}/model.safetensors not found: run `dvc repro` (or `make`) in {PROJECT} first")
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
