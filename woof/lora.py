"""LoRA (Hu et al., ICLR 2022) for any PyTorch model: nn.Linear and nn.Conv2d layers, loralib style.

    model = apply_lora(model, r"blocks\\.\\d+\\.(attn\\.qkv|attn\\.proj|mlp\\.fc1|mlp\\.fc2)", rank=8, alpha=16,
                       trainable=("head",))   # dora=True for DoRA
    ... train (only the adapters and the head have requires_grad) ...
    save_lora(model, "adapter.safetensors")      # adapters + head only, a few hundred KB
    plain = merge_lora(model)                     # the original architecture, W0 + s·B·A folded in

A wrapped layer computes h = W0·x + b + s·B·A·dropout(x), s = alpha/r (alpha/sqrt(r) with rslora).
B starts at zero, so a freshly wrapped model computes exactly what the original did.

Speed: with dropout 0 the adapter is linear in x, so the layer runs as ONE matmul with the merged
weight W0 + s·B·A (a cheap r-rank update of a small matrix). The backward computes dx with the
merged weight and dA, dB through thin rank-r products; the full-size weight-gradient matmul that
full fine-tuning pays for (and the separate low-rank branch that PEFT pays for) is never run.
Adapter parameters are called lora_A / lora_B (and lora_magnitude for DoRA); the utilities below
find them by the "lora_" prefix.

DoRA (Liu et al., ICML 2024; apply_lora(..., dora=True)) splits each adapted weight into a magnitude
m and a direction: W = m·(W0 + s·B·A) / ||W0 + s·B·A||, the norm per output channel and treated as a
constant in the backward (the paper's section 4.3, as PEFT does), m initialised to ||W0||. It runs
the same way: one matmul with the merged direction, rank-r products for dA and dB.

A standalone library: it imports only torch and safetensors.
"""
import copy
import math
import numbers
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def _merge(weight, A, B, scaling):
    """W0 + s·B·A for Linear (out, in) and Conv2d (out, in, kh, kw) weights alike."""
    return torch.addmm(weight.flatten(1), B.flatten(1), A.flatten(1), alpha=scaling).view_as(weight)


class _MergedLoRALinear(torch.autograd.Function):
    """y = x·(W0 + s·B·A)ᵀ + b with rank-r weight gradients: never forms the (out, in) gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, scaling):
        merged = _merge(weight, A, B, scaling)  # (out, in); exactly W0 while B == 0
        ctx.save_for_backward(x, weight, A, B)  # not `merged`: rebuilding it costs less than keeping it
        ctx.scaling, ctx.bias_dtype = scaling, None if bias is None else bias.dtype
        return F.linear(x, merged, bias)

    @staticmethod
    def backward(ctx, gy):
        x, weight, A, B = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_bb, _ = ctx.needs_input_grad
        dt, s = gy.dtype, ctx.scaling  # under autocast gy may be bf16 while x and A, B are float32
        dx = dw = db = da = dbb = None
        if need_x:
            dx = (gy @ _merge(weight, A, B, s).to(dt)).to(x.dtype)  # (..., in)
        if need_w or need_b or need_a or need_bb:
            gy2 = gy.reshape(-1, gy.shape[-1])  # (M, out), M = all leading dims (batch, tokens)
            x2 = x.reshape(-1, x.shape[-1]).to(dt)  # (M, in)
        if need_a:  # dA = s·Bᵀ·gyᵀ·x, (r, M) @ (M, in); s goes on the smallest factor
            da = ((gy2 @ (B * s).to(dt)).t() @ x2).to(A.dtype)
        if need_bb:  # dB = s·gyᵀ·(x·Aᵀ), computed as ((x·Aᵀ)ᵀ·gy)ᵀ: the faster order for BLAS here
            dbb = ((x2 @ (A * s).to(dt).t()).t() @ gy2).t().to(B.dtype)
        if need_w:  # only when the base weight was made trainable too
            dw = (gy2.t() @ x2).to(weight.dtype)
        if need_b:
            db = gy2.sum(0).to(ctx.bias_dtype)
        return dx, dw, db, da, dbb, None


class _MergedLoRAConv2d(torch.autograd.Function):
    """The same trick for convolutions: one conv with the merged kernel, rank-r kernel gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, scaling, stride, padding, dilation):
        # B is a 1x1 conv, so B∘A is a conv with kernel B·A: fold it into W0.
        merged = _merge(weight, A, B, scaling)
        ctx.save_for_backward(x, weight, A, B)
        ctx.conf = (scaling, stride, padding, dilation)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.conv2d(x, merged, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, gy):  # gy: (N, out, Ho, Wo)
        x, weight, A, B = ctx.saved_tensors
        s, stride, padding, dilation = ctx.conf
        need_x, need_w, need_b, need_a, need_bb = ctx.needs_input_grad[:5]
        dt = gy.dtype
        dx = dw = db = da = dbb = None
        conv_grad = (stride, padding, dilation)
        if need_x:
            dx = torch.nn.grad.conv2d_input(x.shape, _merge(weight, A, B, s).to(dt), gy, *conv_grad).to(x.dtype)
        x_ = x.to(dt)
        if need_a:  # gradient at A's output is Bᵀ·gy (a 1x1 conv, r channels), then A's kernel gradient
            gu = F.conv2d(gy, (B * s).to(dt).flatten(1).t()[:, :, None, None])  # (N, r, Ho, Wo)
            da = torch.nn.grad.conv2d_weight(x_, A.shape, gu, *conv_grad).to(A.dtype)
        if need_bb:
            u = F.conv2d(x_, (A * s).to(dt), None, *conv_grad)  # (N, r, Ho, Wo), recomputed: it is thin
            dbb = torch.einsum("nohw,nrhw->or", gy, u).view_as(B).to(B.dtype)
        if need_w:
            dw = torch.nn.grad.conv2d_weight(x_, weight.shape, gy, *conv_grad).to(weight.dtype)
        if need_b:
            db = gy.sum((0, 2, 3)).to(ctx.bias_dtype)
        return dx, dw, db, da, dbb, None, None, None, None


def _norm(merged, dtype):
    """DoRA's per-output-channel L2 norm of a (out, ...) weight, in `dtype`: (out,)."""
    return torch.linalg.vector_norm(merged.flatten(1), dim=1, dtype=dtype)


class _MergedDoRALinear(torch.autograd.Function):
    """y = g·x·(W0 + s·B·A)ᵀ + b with g = m / ||W0 + s·B·A|| per output row, the norm a constant.
    One matmul with the merged direction; dm needs that matmul's output z, so z is kept (as PEFT
    keeps its base output) instead of being recomputed by a second full-size product."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, magnitude, scaling):
        merged = _merge(weight, A, B, scaling)  # (out, in)
        norm = _norm(merged, magnitude.dtype)  # (out,)
        scale = magnitude / norm  # g, (out,)
        z = F.linear(x, merged)  # (..., out)
        ctx.save_for_backward(x, weight, A, B, z, scale, norm)
        ctx.scaling, ctx.bias_dtype = scaling, None if bias is None else bias.dtype
        # g·z + b in the weights' precision (a bf16 g would scale a whole channel by its rounding
        # error), returned in z's dtype as LoRA's output is.
        return (z * scale if bias is None else torch.addcmul(bias, z, scale)).to(z.dtype)

    @staticmethod
    def backward(ctx, gy):
        x, weight, A, B, z, scale, norm = ctx.saved_tensors
        need_x, need_w, need_b, need_a, need_bb, need_m, _ = ctx.needs_input_grad
        dt, s = gy.dtype, ctx.scaling
        dx = dw = db = da = dbb = dm = None
        if need_x:  # dx = gy·diag(g)·M: the merged DoRA weight
            dx = (gy @ (scale[:, None] * _merge(weight, A, B, s)).to(dt)).to(x.dtype)  # (..., in)
        if need_w or need_b or need_a or need_bb or need_m:
            gy2 = gy.reshape(-1, gy.shape[-1])  # (M, out)
            x2 = x.reshape(-1, x.shape[-1]).to(dt)  # (M, in)
        if need_a:  # dA = s·Bᵀ·diag(g)·gyᵀ·x: g and s go on B, the smallest factor
            da = ((gy2 @ (B * (s * scale[:, None])).to(dt)).t() @ x2).to(A.dtype)
        if need_bb:  # dB = s·diag(g)·gyᵀ·(x·Aᵀ)
            dbb = ((x2 @ (A * s).to(dt).t()).t() @ gy2).t().to(B.dtype) * scale[:, None]
        if need_m:  # dm = Σ gy·z / ||M|| over all leading dims
            dm = (gy2 * z.reshape(gy2.shape)).sum(0).to(norm.dtype) / norm
        if need_w:
            dw = (gy2.t() @ x2).to(weight.dtype) * scale[:, None]
        if need_b:
            db = gy2.sum(0).to(ctx.bias_dtype)
        return dx, dw, db, da, dbb, dm, None


class _MergedDoRAConv2d(torch.autograd.Function):
    """DoRA for convolutions: one conv with the merged direction, g applied per output channel."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, magnitude, scaling, stride, padding, dilation):
        merged = _merge(weight, A, B, scaling)  # (out, in, kh, kw)
        norm = _norm(merged, magnitude.dtype)  # (out,)
        scale = magnitude / norm
        z = F.conv2d(x, merged, None, stride, padding, dilation)  # (N, out, Ho, Wo)
        ctx.save_for_backward(x, weight, A, B, z, scale, norm)
        ctx.conf = (scaling, stride, padding, dilation)
        ctx.bias_dtype = None if bias is None else bias.dtype
        g = scale[:, None, None]
        return (z * g if bias is None else torch.addcmul(bias[:, None, None], z, g)).to(z.dtype)

    @staticmethod
    def backward(ctx, gy):  # gy: (N, out, Ho, Wo)
        x, weight, A, B, z, scale, norm = ctx.saved_tensors
        s, stride, padding, dilation = ctx.conf
        need_x, need_w, need_b, need_a, need_bb, need_m = ctx.needs_input_grad[:6]
        dt = gy.dtype
        dx = dw = db = da = dbb = dm = None
        conv_grad = (stride, padding, dilation)
        if need_x:
            kernel = (scale[:, None, None, None] * _merge(weight, A, B, s)).to(dt)
            dx = torch.nn.grad.conv2d_input(x.shape, kernel, gy, *conv_grad).to(x.dtype)
        x_ = x.to(dt)
        if need_a:  # as LoRA's, with g folded into B
            gu = F.conv2d(gy, (B.flatten(1) * (s * scale[:, None])).to(dt).t()[:, :, None, None])  # (N, r, Ho, Wo)
            da = torch.nn.grad.conv2d_weight(x_, A.shape, gu, *conv_grad).to(A.dtype)
        if need_bb:
            u = F.conv2d(x_, (A * s).to(dt), None, *conv_grad)  # (N, r, Ho, Wo)
            dbb = (torch.einsum("nohw,nrhw->or", gy, u).to(B.dtype) * scale[:, None]).view_as(B)
        if need_m:
            dm = (gy * z).sum((0, 2, 3)).to(norm.dtype) / norm
        if need_w:
            dw = torch.nn.grad.conv2d_weight(x_, weight.shape, gy, *conv_grad).to(weight.dtype) \
                * scale[:, None, None, None]
        if need_b:
            db = gy.sum((0, 2, 3)).to(ctx.bias_dtype)
        return dx, dw, db, da, dbb, dm, None, None, None, None


class _LoRA:
    """What LoRALinear and LoRAConv2d share: adapter parameters, scaling, dropout, the on/off switch."""

    @staticmethod
    def unsupported(base):
        """Why `base` cannot take an adapter, or None."""
        return None

    def _init_lora(self, base, rank, alpha, dropout, rslora, a_shape, b_shape):
        nn.Module.__init__(self)
        # The base layer's configuration (in_features, or kernel_size, stride, padding, ...) and its
        # very parameter objects: the state-dict keys `...weight` / `...bias` stay as they were.
        self.__dict__.update({k: v for k, v in vars(base).items() if not k.startswith("_")})
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.rslora = rank, alpha, rslora
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        like = dict(device=self.weight.device, dtype=self.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(a_shape, **like))
        self.lora_B = nn.Parameter(torch.zeros(b_shape, **like))  # zero: the model starts unchanged
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as PEFT (and nn.Linear) do
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_enabled = True
        self.fused = True  # False: always the classic two-branch forward (a reference, for tests and ablations)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def _two_paths(self):
        # Dropout acts on the adapter's input only, so W0 cannot absorb B·A: run both branches.
        return not self.fused or (self.training and isinstance(self.lora_dropout, nn.Dropout))

    def merged_weight(self):
        """W0 + s·B·A, shaped like W0."""
        with torch.no_grad():
            return _merge(self.weight, self.lora_A, self.lora_B, self.scaling)

    def extra_repr(self):
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, rslora={self.rslora}"


class LoRALinear(_LoRA, nn.Linear):
    """nn.Linear plus a rank-r adapter. Shares (does not copy) the base layer's weight and bias, so
    the state-dict keys stay `...weight` / `...bias` and the layer is a drop-in replacement."""

    def __init__(self, base, rank, alpha, dropout=0.0, rslora=False):
        self._init_lora(base, rank, alpha, dropout, rslora, (rank, base.in_features), (base.out_features, rank))

    def forward(self, x):  # x: (..., in)
        if not self.lora_enabled:
            return F.linear(x, self.weight, self.bias)
        if self._two_paths():
            low_rank = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., out)
            return F.linear(x, self.weight, self.bias) + self.scaling * low_rank
        return _MergedLoRALinear.apply(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scaling)

    def to_plain(self):
        plain = nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None,
                                   device=self.weight.device, dtype=self.weight.dtype)
        return _fill_plain(self, plain)


class LoRAConv2d(_LoRA, nn.Conv2d):
    """nn.Conv2d plus an adapter: A is a conv with r output channels and the base layer's kernel size,
    stride, padding and dilation; B is a 1x1 conv from r to the output channels."""

    @staticmethod
    def unsupported(base):
        if base.groups != 1:
            return f"grouped convolutions (groups={base.groups}) are not supported"
        if base.padding_mode != "zeros":
            return f"padding_mode={base.padding_mode!r} is not supported, only 'zeros'"
        pads = [d * (k - 1) for k, d in zip(base.kernel_size, base.dilation)]
        if base.padding == "same" and any(p % 2 for p in pads):
            return "padding='same' with an even kernel (asymmetric padding) is not supported"
        return None

    def __init__(self, base, rank, alpha, dropout=0.0, rslora=False):
        if self.unsupported(base):
            raise ValueError(self.unsupported(base))
        self._init_lora(base, rank, alpha, dropout, rslora, (rank, base.in_channels, *base.kernel_size),
                        (base.out_channels, rank, 1, 1))
        if isinstance(self.padding, str):  # 'valid' / 'same' -> numbers, which the backward needs
            pads = [d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation)]
            self.padding = tuple(pads) if self.padding == "same" else (0, 0)

    def forward(self, x):  # x: (N, in, H, W)
        conv = (self.stride, self.padding, self.dilation)
        if not self.lora_enabled:
            return F.conv2d(x, self.weight, self.bias, *conv)
        if self._two_paths():
            low_rank = F.conv2d(F.conv2d(self.lora_dropout(x), self.lora_A, None, *conv), self.lora_B)
            return F.conv2d(x, self.weight, self.bias, *conv) + self.scaling * low_rank
        return _MergedLoRAConv2d.apply(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scaling, *conv)

    def to_plain(self):
        plain = nn.utils.skip_init(nn.Conv2d, self.in_channels, self.out_channels, self.kernel_size,
                                   stride=self.stride, padding=self.padding, dilation=self.dilation,
                                   bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        return _fill_plain(self, plain)


class _DoRA(_LoRA):
    """What DoRALinear and DoRAConv2d add to LoRA: the magnitude m, one number per output channel."""

    def _init_dora(self):
        with torch.no_grad():  # m = ||W0||: the wrapped layer starts as the original (up to rounding)
            self.lora_magnitude = nn.Parameter(_norm(self.weight, self.weight.dtype))  # (out,)

    def dora_scale(self):
        """g = m / ||W0 + s·B·A|| per output channel, (out,); the norm is detached (DoRA, section 4.3)."""
        with torch.no_grad():
            norm = _norm(_merge(self.weight, self.lora_A, self.lora_B, self.scaling), self.lora_magnitude.dtype)
        return self.lora_magnitude / norm

    def merged_weight(self):
        """m·(W0 + s·B·A) / ||W0 + s·B·A||, shaped like W0."""
        with torch.no_grad():
            merged = _merge(self.weight, self.lora_A, self.lora_B, self.scaling)
            scale = self.lora_magnitude / _norm(merged, self.lora_magnitude.dtype)
            return (merged * scale.view(-1, *[1] * (merged.dim() - 1))).to(merged.dtype)


class DoRALinear(_DoRA, LoRALinear):
    """LoRALinear with DoRA's magnitude: a drop-in nn.Linear, parameters lora_A, lora_B, lora_magnitude."""

    def __init__(self, base, rank, alpha, dropout=0.0, rslora=False):
        super().__init__(base, rank, alpha, dropout, rslora)
        self._init_dora()

    def forward(self, x):  # x: (..., in)
        if not self.lora_enabled:
            return F.linear(x, self.weight, self.bias)
        if self._two_paths():  # PEFT's formulation: W0·x + b + (g - 1)·W0·x' + g·s·B·A·x', x' = dropout(x)
            xd, g = self.lora_dropout(x), self.dora_scale()
            low_rank = F.linear(F.linear(xd, self.lora_A), self.lora_B)  # (..., out)
            return (F.linear(x, self.weight, self.bias) + (g - 1) * F.linear(xd, self.weight)
                    + g * self.scaling * low_rank)
        return _MergedDoRALinear.apply(x, self.weight, self.bias, self.lora_A, self.lora_B, self.lora_magnitude,
                                       self.scaling)


class DoRAConv2d(_DoRA, LoRAConv2d):
    """LoRAConv2d with DoRA's magnitude, the norm over each output channel's (in, kh, kw) kernel."""

    def __init__(self, base, rank, alpha, dropout=0.0, rslora=False):
        super().__init__(base, rank, alpha, dropout, rslora)
        self._init_dora()

    def forward(self, x):  # x: (N, in, H, W)
        conv = (self.stride, self.padding, self.dilation)
        if not self.lora_enabled:
            return F.conv2d(x, self.weight, self.bias, *conv)
        if self._two_paths():
            xd, g = self.lora_dropout(x), self.dora_scale()[:, None, None]  # (out, 1, 1)
            low_rank = F.conv2d(F.conv2d(xd, self.lora_A, None, *conv), self.lora_B)  # (N, out, Ho, Wo)
            return (F.conv2d(x, self.weight, self.bias, *conv) + (g - 1) * F.conv2d(xd, self.weight, None, *conv)
                    + g * self.scaling * low_rank)
        return _MergedDoRAConv2d.apply(x, self.weight, self.bias, self.lora_A, self.lora_B, self.lora_magnitude,
                                       self.scaling, *conv)


def _fill_plain(lora, plain):
    # What the layer computes now: with the adapter switched off that is W0 alone.
    weight = lora.merged_weight() if lora.lora_enabled else lora.weight.detach().clone()
    plain.weight = nn.Parameter(weight, requires_grad=lora.weight.requires_grad)
    plain.bias = lora.bias
    return plain.train(lora.training)


# Exact types only: subclasses may override forward (timm's Conv2dSame, StdConv2d) or be bypassed
# by their owner (nn.MultiheadAttention reads out_proj.weight directly), so wrapping them is unsafe.
_SUPPORTED = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}
_DORA = {nn.Linear: DoRALinear, nn.Conv2d: DoRAConv2d}


def is_lora_name(name):
    return any(part.startswith("lora_") for part in name.split("."))


def lora_modules(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _LoRA)]


def _trains(model, trainable):
    """`trainable` as a predicate on parameter names: a predicate as is, or prefixes on dot
    boundaries ("blocks.1" is block 1, not blocks 10 and 11), each matching some parameter."""
    if callable(trainable):
        return trainable
    prefixes = (trainable,) if isinstance(trainable, str) else tuple(trainable)

    def under(name, prefix):
        return name == prefix or name.startswith(prefix + ".")

    def trains(name):
        return any(under(name, p) for p in prefixes)
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in prefixes if not any(under(n, p) for n in names)]
    if unmatched:  # a typo would otherwise silently train nothing
        raise ValueError(f"trainable={list(prefixes)}: {unmatched} match no parameter of {type(model).__name__} "
                         f"(use trainable=() to train the adapters only)")
    return trains


def apply_lora(model, targets, rank, alpha, dropout=0.0, rslora=False, trainable=(), dora=False):
    """Wrap, in place, every nn.Linear / nn.Conv2d whose qualified name fully matches the regex
    `targets` (a LoRA layer, or a DoRA layer with dora=True); freeze every other parameter except
    what `trainable` names: parameter-name prefixes such as ("head",), or a predicate on parameter
    names. Returns model.

    Everything is checked before anything changes: on a ValueError the model is untouched."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if not isinstance(targets, str):  # a list of regexes means any of them
        targets = "|".join(f"(?:{t})" for t in targets)
    try:
        pattern = re.compile(targets)
    except re.error as e:
        raise ValueError(f"targets={targets!r} is not a valid regex: {e}") from None
    trains = _trains(model, trainable)
    layers = _DORA if dora else _SUPPORTED
    matches = [(n, m) for n, m in model.named_modules() if n and pattern.fullmatch(n)]
    if not matches:
        examples = [n for n, m in model.named_modules() if type(m) in _SUPPORTED][:6]
        raise ValueError(f"targets={targets!r} matches no module of {type(model).__name__}; "
                         f"LoRA-able modules include {examples}")
    for name, module in matches:
        if isinstance(module, _LoRA):
            raise ValueError(f"targets={targets!r}: module {name!r} already has LoRA ({type(module).__name__})")
        if type(module) not in _SUPPORTED:
            raise ValueError(f"targets={targets!r} matches module {name!r} of type {type(module).__name__}, "
                             f"which LoRA does not support (only nn.Linear and nn.Conv2d)")
        reason = layers[type(module)].unsupported(module)
        if reason:
            raise ValueError(f"targets={targets!r} matches module {name!r} of type {type(module).__name__}: {reason}")
    # Everything is valid: from here on nothing fails, so a model is never left half-wrapped.
    for name, module in matches:
        parent, _, child = name.rpartition(".")
        lora = layers[type(module)](module, int(rank), alpha, float(dropout), bool(rslora))
        setattr(model.get_submodule(parent), child, lora)
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora_name(name) or bool(trains(name)))
    return model


def merge_lora(model):
    """A copy of `model` with every adapter folded into its layer (W0 + s·B·A): plain nn.Linear /
    nn.Conv2d again, so its state dict loads strictly into a fresh model of the original class.
    `model` itself is left as it is."""
    merged = copy.deepcopy(model)
    for name, module in lora_modules(merged):
        parent, _, child = name.rpartition(".")
        plain = module.to_plain()
        if not name:
            return plain
        setattr(merged.get_submodule(parent), child, plain)
    return merged


def set_lora_enabled(model, enabled):
    """Switch every adapter off (the base model, bit for bit) or back on."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no LoRA layer (call apply_lora first)")
    for _, module in modules:
        module.lora_enabled = bool(enabled)
    return model


def lora_state_dict(model):
    """The adapters plus every other trainable parameter (the new head): what fine-tuning changed."""
    return {n: p.detach() for n, p in model.named_parameters() if is_lora_name(n) or p.requires_grad}


def load_lora_state_dict(model, state):
    """Strict inverse of lora_state_dict: same keys and shapes, or a ValueError and no change."""
    own = lora_state_dict(model)
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"LoRA state does not fit {type(model).__name__}: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        raise ValueError(f"LoRA state shape mismatch for {wrong[:5]}: e.g. {tuple(state[wrong[0]].shape)} "
                         f"in the file, {tuple(own[wrong[0]].shape)} in the model (different rank?)")
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(state[k])
    return model


def save_lora(model, path):
    """Write lora_state_dict(model) as safetensors, atomically: a reader sees the old file or the
    whole new one. The rank is in the tensors' shapes; alpha and the targets are the caller's to keep."""
    state = {k: v.cpu().contiguous() for k, v in lora_state_dict(model).items()}
    path = os.fspath(path)
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp")  # a sibling: os.replace is atomic within one file system
    try:
        save_file(state, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_lora(model, path):
    return load_lora_state_dict(model, load_file(str(path), device="cpu"))

