"""ImageWoof-C: the clean test split under common corruptions at five severities, in the manner of
ImageNet-C (Hendrycks & Dietterich 2019), made with torchvision.transforms.v2 on the prepared uint8
tensors (the pixels the model sees). Deterministic: the only random corruption (noise) draws from a
generator seeded by (seed, corruption, severity), so every model sees the same bytes.

The levels are chosen so that the zero-shot head falls to roughly 40-70 % at severity 5 on the
clean test split (docs/protocol.md has the measurement); severity 0 is the clean image.
"""
import hashlib
import zlib

import torch
from torchvision.transforms.v2 import functional as TF

from woof.errors import ParamError

# corruption -> its strength at severities 1..5
LEVELS = {
    "gaussian_noise": (0.06, 0.09, 0.13, 0.18, 0.24),  # std of the noise on [0, 1] pixels
    "gaussian_blur": (1.0, 1.5, 2.0, 3.0, 4.0),         # sigma in pixels
    "jpeg": (25, 18, 15, 10, 7),                        # JPEG quality
    "contrast": (0.5, 0.4, 0.3, 0.2, 0.15),             # contrast factor (1 = unchanged)
    "pixelate": (0.75, 0.5, 0.4, 0.3, 0.2),             # downscale factor before upscaling back
}
SEVERITIES = (1, 2, 3, 4, 5)


def _noise(x, std, gen):
    noise = torch.randn(x.shape, generator=gen) * (255 * std)
    return (x.float() + noise).round().clamp(0, 255).to(torch.uint8)


def _blur(x, sigma, gen):
    k = 2 * int(3 * sigma + 0.5) + 1  # covers +-3 sigma
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def _pixelate(x, factor, gen):
    side = x.shape[-1]
    small = TF.resize(x, [max(1, round(side * factor))] * 2, antialias=True)  # area-like averaging
    return TF.resize(small, [side, side], interpolation=TF.InterpolationMode.NEAREST)


APPLY = {
    "gaussian_noise": _noise,
    "gaussian_blur": _blur,
    "jpeg": lambda x, q, gen: TF.jpeg(x, q),
    "contrast": lambda x, f, gen: TF.adjust_contrast(x, f),
    "pixelate": _pixelate,
}


def check(corruptions, severities):
    """Unknown corruptions or severities -> a ParamError naming the param."""
    unknown = [c for c in corruptions if c not in LEVELS]
    if unknown or not corruptions:
        raise ParamError(f"params.yaml: robustness.corruptions has {unknown or 'none'}: choose from {', '.join(LEVELS)}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise ParamError(f"params.yaml: robustness.severities has {bad or 'none'}: choose from {list(SEVERITIES)}")


def corrupt(images, name, severity, seed=0, batch_size=256):
    """uint8 (N, 3, S, S) -> the same images under `name` at `severity` (0: unchanged), uint8."""
    if severity == 0:
        return images.clone()
    level = LEVELS[name][severity - 1]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}/{severity}".encode()))
    return torch.cat([APPLY[name](images[i:i + batch_size], level, gen) for i in range(0, len(images), batch_size)])


def corrupted_split(images, labels, files, corruptions, severities, seed=0):
    """The corrupted copies of one split, corruption-major then severity then image, as one
    evaluation split: (images (N*K, 3, S, S), labels (N*K,), names "<file>#<corruption>-<severity>")."""
    keys = [(c, s) for c in corruptions for s in severities]
    out = torch.cat([corrupt(images, c, s, seed) for c, s in keys])
    names = [f"{f}#{c}-{s}" for c, s in keys for f in files]
    return out, labels.repeat(len(keys)), names


def fingerprint(images):
    """sha256 of the pixels (16 hex digits): equal iff two runs saw the same corrupted bytes."""
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()[:16]
