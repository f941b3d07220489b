"""How far fine-tuning moved a model from its pretrained weights: per weight matrix the relative
change ||W - W0||_F / ||W0||_F, summarised per block and over the whole backbone; and the straight
path between the two (WiSE-FT, Wortsman et al. 2022).

LoRA's merged weights are W0 + (alpha/r) B A, so its change is the adapter's update alone; full
fine-tuning may move every weight. Used by the evaluate stage (metrics/drift.json, plots/drift.png)
and read by the paper.
"""
import re

import torch

from woof.io import pyplot, save_figure


def relative_changes(pretrained, tuned):
    """{parameter name: ||W - W0|| / ||W0||} for the weight matrices (2-D and up) both models share."""
    before = pretrained.state_dict()
    out = {}
    for name, w in tuned.state_dict().items():
        w0 = before.get(name)
        if w0 is None or w0.shape != w.shape or w.ndim < 2 or not w.is_floating_point():
            continue
        norm = w0.float().norm()
        if norm > 0:
            out[name] = ((w.float() - w0.float()).norm() / norm).item()
    return out


def _group(name):
    m = re.match(r"blocks\.(\d+)\.", name)
    return f"block {int(m.group(1))}" if m else name.split(".")[0]


def summarize(changes):
    """-> {"overall": mean over the backbone's matrices (head excluded), "max": ..., "per_group":
    {block or module: mean}, "head": the classifier's change}."""
    backbone = {k: v for k, v in changes.items() if not k.startswith("head")}
    groups = {}
    for name, v in backbone.items():
        groups.setdefault(_group(name), []).append(v)
    head = [v for k, v in changes.items() if k.startswith("head")]
    return {"overall": sum(backbone.values()) / max(1, len(backbone)), "max": max(backbone.values(), default=0.0),
            "per_group": {g: sum(v) / len(v) for g, v in groups.items()},
            "head": head[0] if head else None, "matrices": len(backbone)}


def drift(pretrained, models):
    """{model name: summarize(relative_changes(pretrained, model))} for every fine-tuned model."""
    with torch.no_grad():
        return {name: summarize(relative_changes(pretrained, m)) for name, m in models.items()}


def interpolate(pretrained, tuned, a):
    """WiSE-FT: the state dict (1 - a) theta_0 + a theta_ft (torch.lerp: exactly theta_0 at a = 0
    and theta_ft at a = 1). For a merged LoRA model this scales its update, the adapter's B A and
    the head's change, by a. Integer buffers are the tuned model's."""
    before, after = pretrained.state_dict(), tuned.state_dict()
    if before.keys() != after.keys():
        raise ValueError(f"cannot interpolate models with other parameters: {sorted(before.keys() ^ after.keys())[:3]}")
    return {k: torch.lerp(before[k], w, a) if w.is_floating_point() else w for k, w in after.items()}


def plot(result, path):
    """Mean relative change per block, one line per fine-tuned model (log scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, s in result.items():
        blocks = sorted((int(g.split()[1]), v) for g, v in s["per_group"].items() if g.startswith("block "))
        if blocks:
            ax.plot([b for b, _ in blocks], [v for _, v in blocks], "o-", label=f"{name} (mean {s['overall']:.3g})")
    ax.set_yscale("log")
    ax.set(xlabel="block", ylabel="||W - W0|| / ||W0|| (mean over the block)",
           title="How far fine-tuning moved the pretrained weights")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
