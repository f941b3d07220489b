"""Where a ViT looks: attention maps from timm vision transformers, numbers that summarise them,
and a figure that puts several models side by side.

Two kinds of map, both (B, h, w) over the patch grid and sum-normalised (each map sums to 1):
- cls_attention: last-layer attention of the CLS token to the patches, per head (as DINO's
  visualize_attention). Class-agnostic: what the model attends to, not why it decides.
- gradient_rollout: Chefer et al. 2021 ("Generic Attention-model Explainability"), a class-specific
  map: attention of every layer weighted by the gradient of the chosen class logit, rolled out.

Getting attention out of timm: its fused path (F.scaled_dot_product_attention) never materialises
the attention matrix and never calls `attn_drop`, so a hook there silently sees nothing.
`capture_attention` switches each attention module to the explicit path while it is active.
Models without such modules or without a CLS token (CNNs such as resnet18) have no maps:
`unsupported(model)` says why, and the stage writes placeholders instead.
"""
import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from woof.io import pyplot, save_figure


def _attention_modules(model):
    # timm's Attention/EvaAttention/...: a `fused_attn` flag and an `attn_drop` applied to softmax(QK^T)
    return [m for m in model.modules()
            if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), torch.nn.Module)]


def unsupported(model):
    """Why this model has no attention maps to draw ("has no attention layers", ...), else None."""
    if not _attention_modules(model):
        return "has no attention layers"
    if getattr(model, "cls_token", None) is None or getattr(model, "num_prefix_tokens", 1) < 1:
        return "has no CLS token"  # e.g. global-pool ViTs: no single token gathers the image
    return None


@contextlib.contextmanager
def capture_attention(model):
    """Collect the attention matrix of every layer during the forward passes inside the block.

        with capture_attention(model) as attns:
            logits = model(x)
        attns  # list over layers of (B, heads, N, N), N = prefix tokens + patches

    The tensors stay in the autograd graph (for gradient_rollout).
    """
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no timm attention module (fused_attn + attn_drop)")
    attns = []
    saved = [m.fused_attn for m in modules]
    was_training = model.training
    model.eval()  # dropout on attention would make the maps random
    # The attention is the *input* of attn_drop: softmax(q @ k^T * scale), (B, heads, N, N)
    hooks = [m.attn_drop.register_forward_hook(lambda mod, inp, out: attns.append(inp[0]))
             for m in modules]
    try:
        for m in modules:
            m.fused_attn = False  # an instance attribute; timm's Final annotation only binds TorchScript
        yield attns
    finally:
        for h in hooks:
            h.remove()
        for m, flag in zip(modules, saved):
            m.fused_attn = flag
        model.train(was_training)
    if not attns:  # a timm version whose attention no longer goes through attn_drop
        raise RuntimeError("no attention matrix was captured: the attention modules did not call attn_drop")


def _tokens(model, attn):
    """(prefix tokens, patch grid h, w) of a captured (B, heads, N, N) attention."""
    npt = getattr(model, "num_prefix_tokens", 1)
    if npt < 1 or getattr(model, "cls_token", None) is None:
        raise ValueError("attention maps need a CLS token (model.cls_token is None)")
    n = attn.shape[-1] - npt
    h, w = model.patch_embed.grid_size if hasattr(model, "patch_embed") else (math.isqrt(n),) * 2
    if h * w != n:  # dynamic image size: assume a square grid
        h = w = math.isqrt(n)
    assert h * w == n, f"cannot lay {n} patch tokens on a grid"
    return npt, h, w


def _normalise(maps, eps=1e-12):
    # (..., h, w) -> each map sums to 1; an all-zero map becomes uniform instead of NaN
    s = maps.sum(dim=(-2, -1), keepdim=True)
    uniform = torch.full_like(maps, 1.0 / (maps.shape[-2] * maps.shape[-1]))
    return torch.where(s > eps, maps / s.clamp_min(eps), uniform)


@torch.no_grad()
def cls_attention(model, images):
    """Last-layer CLS-to-patch attention per head: (B, 3, H, W) normalised images -> (B, heads, h, w).

    The head mean, `maps.mean(1)`, is again sum-normalised. Attention from CLS to the other prefix
    tokens (itself, registers) is dropped and the rest renormalised over the patches."""
    with capture_attention(model) as attns:
        model(images)
    a = attns[-1]  # (B, heads, N, N)
    npt, h, w = _tokens(model, a)
    maps = a[:, :, 0, npt:].float()  # (B, heads, h*w)
    return _normalise(maps.reshape(*maps.shape[:2], h, w))  # (B, heads, h, w)


def gradient_rollout(model, images, labels):
    """Chefer et al. 2021 generic explainability for class `labels`: (B, 3, H, W) -> (B, h, w).

    R = I; for each layer R += mean_heads((dy/dA * A).clamp(min=0)) @ R; map = R[CLS, patches],
    y = the logit of `labels` (the ground truth in our figures). Model parameters get no .grad."""
    x = images.detach().requires_grad_(True)  # so A is in the graph even when the model is frozen
    with torch.enable_grad(), capture_attention(model) as attns:
        logits = model(x)  # (B, classes)
    # Samples do not interact, so the gradient of the summed logits gives each sample its own.
    score = logits.gather(1, labels.view(-1, 1).to(logits.device)).sum()
    grads = torch.autograd.grad(score, attns)  # per layer (B, heads, N, N)
    B, _, N, _ = attns[0].shape
    R = torch.eye(N, device=x.device).expand(B, N, N).clone()  # (B, N, N)
    for a, g in zip(attns, grads):
        cam = (g * a).clamp(min=0).mean(dim=1).float()  # (B, N, N)
        R = R + cam @ R
    npt, h, w = _tokens(model, attns[-1])
    return _normalise(R[:, 0, npt:].reshape(B, h, w).detach())  # (B, h, w)


# ------------------------------------------------------------------ numbers


def entropy(maps):
    """Normalised entropy of each (h, w) distribution, in [0, 1]: 1 = uniform, 0 = one patch."""
    p = maps.flatten(-2).clamp_min(1e-12)  # (..., h*w)
    return -(p * p.log()).sum(-1) / math.log(p.shape[-1])


def center_weights(h, w, area=0.5):
    """(h, w) share of each patch inside the central square that covers `area` of the image.

    Exact area overlap, so a uniform map puts exactly `area` of its mass in the centre."""
    side = math.sqrt(area)
    lo, hi = (1 - side) / 2, (1 + side) / 2

    def overlap(n):  # (n,) share of each cell [i/n, (i+1)/n] that lies inside [lo, hi]
        i = torch.arange(n, dtype=torch.float64)
        return ((i + 1) / n).clamp(max=hi).sub((i / n).clamp(min=lo)).clamp(min=0) * n
    return (overlap(h)[:, None] * overlap(w)[None, :]).float()  # (h, w)


def center_mass(maps, area=0.5):
    """Share of each map's mass inside the central square of `area` (0.5 = half the image)."""
    return (maps * center_weights(*maps.shape[-2:], area).to(maps.device)).sum(dim=(-2, -1))


def correlation(a, b):
    """Pearson correlation between matching maps of two models: (B, h, w) x2 -> (B,)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).float()


def attention_metrics(cls_maps, rollout_maps, area=0.5):
    """Summary numbers for metrics/attention.json.

    cls_maps: {model: (B, heads, h, w)}; rollout_maps: {model: (B, h, w)}, the same images.
    Per model: mean normalised entropy of the per-head CLS maps, centre mass of the head-mean CLS
    map and of the rollout map; between models: mean Pearson correlation of their maps."""
    out = {}
    for name, m in cls_maps.items():
        out[name] = {"cls_entropy": entropy(m).mean().item(),
                     "center_mass": center_mass(m.mean(1), area).mean().item(),
                     "rollout_entropy": entropy(rollout_maps[name]).mean().item(),
                     "rollout_center_mass": center_mass(rollout_maps[name], area).mean().item()}
    names = list(cls_maps)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    out["corr"] = {f"{a}_{b}": correlation(cls_maps[a].mean(1), cls_maps[b].mean(1)).mean().item()
                   for a, b in pairs}
    out["rollout_corr"] = {f"{a}_{b}": correlation(rollout_maps[a], rollout_maps[b]).mean().item()
                           for a, b in pairs}
    out["center_area"] = area
    return out


# ------------------------------------------------------------------ choosing images, drawing


def choose_images(labels, num_images=8, seed=0):
    """Indices of `num_images` samples spread over the classes: one per class (classes in a seeded
    random order) before any class gets a second. Sorted by class so figure rows read in order."""
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    classes = classes[torch.randperm(len(classes), generator=g)]
    pools = [torch.nonzero(labels == c).flatten() for c in classes]
    pools = [p[torch.randperm(len(p), generator=g)].tolist() for p in pools]
    num_images = min(num_images, len(labels))
    picked, r = [], 0
    while len(picked) < num_images:
        for p in pools:
            if r < len(p) and len(picked) < num_images:
                picked.append(p[r])
        r += 1
    return sorted(picked, key=lambda i: (labels[i].item(), i))


def upsample(maps, size):
    """(B, h, w) patch maps -> (B, H, W) bilinear, for overlaying on the image."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def overlay(image, attn_map, alpha=0.5, cmap="inferno"):
    """uint8 (3, H, W) image and an (h, w) map -> float RGB (H, W, 3) in [0, 1] for imshow.

    The map is scaled to [0, 1] by its max: a picture of *where*, the numbers are in the metrics."""
    import matplotlib
    img = torch.as_tensor(image).permute(1, 2, 0).float().cpu().numpy() / 255  # (H, W, 3)
    m = upsample(attn_map[None], img.shape[:2])[0].cpu().numpy()  # (H, W)
    m = m / max(m.max(), 1e-12)
    heat = matplotlib.colormaps[cmap](m)[..., :3]  # (H, W, 3)
    return np.clip((1 - alpha) * img + alpha * heat, 0, 1)


def attention_grid(path, images, maps, true_names, preds, title=""):
    """Write a figure (PNG or JPEG, by the path's suffix): rows = images, columns = input | one
    per model (overlaid maps).

    images: uint8 (B, 3, H, W); maps: {model: (B, h, w)}; true_names: B class names, or None
    for photos of unknown breed (woof.predict); preds: {model: list of B (predicted name,
    confidence)}. Correct predictions in green."""
    plt = pyplot()

    def short(name):  # ImageNet names carry synonyms: "dingo, warrigal, warragal, Canis dingo"
        return name.split(",")[0]

    B, cols = len(images), 1 + len(maps)
    height = 2.8 * B + 0.8
    fig, axes = plt.subplots(B, cols, figsize=(2.6 * cols, height), squeeze=False)
    for i in range(B):
        ax = axes[i, 0]
        ax.imshow(images[i].permute(1, 2, 0).cpu().numpy())
        ax.set_title(f"true: {short(true_names[i])}" if true_names else "input", fontsize=10, fontweight="bold")
        for j, (name, m) in enumerate(maps.items(), start=1):
            ax = axes[i, j]
            ax.imshow(overlay(images[i], m[i]))
            pred, conf = preds[name][i]
            ok = true_names and pred == true_names[i]
            verdict = "" if not true_names else ", correct" if ok else ", wrong"
            ax.set_title(f"{name}: {short(pred)}\n{conf:.0%}{verdict}", fontsize=9,
                         color="black" if not true_names else "darkgreen" if ok else "firebrick")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}\n(each map scaled to its own max; bright = more attention)".lstrip("\n"),
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / height))
    save_figure(fig, path, dpi=80)


def placeholder(path, text):
    """A figure that only says `text`: DVC requires every declared plot, even with nothing to draw."""
    fig = pyplot().figure(figsize=(6, 1.2))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=12)
    save_figure(fig, path, dpi=80)
