"""Benchmarks that print Markdown tables: `python -m woof.bench lora` (or `dora`, `settings`, `methods`,
`all`); `--model A B:224` measures several backbones in one run, `--json` keeps the rows.

A row is a name and a function `setup(model, batch) -> step`: it prepares a fresh model, usually
with a woof.step.Method, and returns a closure that runs one unit of work, usually the pipeline's
own training step (woof.step.train_step with woof.step.make_optimizer, in the row's precision,
compiled or not), so the table measures what `dvc repro` runs. Every row gets the same initial
weights and the same batch, so rows differ only by the method. To add rows, add entries to a dict
in SUITES; `settings` holds eager/compiled x fp32/bf16 for full, LoRA and the no-adapter bound.

Throughput: a few warmup calls, then the median of timed calls, the rows taking turns call by call
(this CPU is shared: interleaving spreads another process's load over all rows alike, the median
drops the calls it interrupted). "vs full" pairs the calls of one round: the median of the
per-round ratios full/row, with their interquartile range, so a reader sees how much of a
difference between two rows is noise.
Peak memory: on CUDA, torch.cuda.max_memory_allocated over one call. On CPU there is no allocator
counter, so one extra call runs under torch.profiler(profile_memory=True) and we replay its
allocator events (every CPU allocation and free, in time order): peak = bytes alive before the call
(weights, optimiser state, batch) + the highest running sum of the call's allocations and frees.
Both count tensor memory from PyTorch's allocator, not the process RSS (libraries' own buffers,
e.g. oneDNN scratch space, are not included).
"""
import argparse
import dataclasses
import os
import statistics
import time

import torch
import torch.nn as nn

import woof.step
from woof import config
from woof.analysis import count_flops, peak_tensor_bytes, step_closure
from woof.data import normalize, random_resized_crop_flip
from woof.evaluate import autocast, compile_unavailable, native_bf16
from woof.lora import lora_modules
from woof.models import count_parameters, create_model
from woof.step import Method, make_optimizer
from woof.io import machine, write_json
from woof.record import CNN_POINTWISE

ALL_LINEAR = r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
QKV = r"blocks\.\d+\.attn\.qkv"


def train_step(model, batch, precision="fp32", compile=False, recipe=None):
    """The pipeline's training step on `batch` as a closure (woof.analysis.step_closure), with
    params.yaml's full recipe unless another is given."""
    return step_closure(model, *batch, recipe or config.load().full, precision, compile)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps, n=20, warmup=3, device="cpu"):
    """Seconds of each of `n` calls of each closure in `steps` (name -> callable), interleaved:
    call i of every closure runs in round i."""
    device = torch.device(device)
    names = list(steps)
    for name in names:  # warmup: first-call allocations, AdamW state, oneDNN kernel selection
        for _ in range(warmup):
            steps[name]()
    times = {name: [] for name in names}
    for i in range(n):
        for name in names[i % len(names):] + names[:i % len(names)]:  # rotating order
            _sync(device)
            t0 = time.perf_counter()
            steps[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def peak_memory_mb(step, device="cpu"):
    """Peak tensor memory of one call of `step`, the tensors alive between calls included
    (woof.analysis.peak_tensor_bytes: the cost stage's measure)."""
    return peak_tensor_bytes(step, step.alive() if hasattr(step, "alive") else (), device) / 2**20


def measure(step, times, device="cpu"):
    """One table row for a closure whose calls took `times` seconds."""
    seconds = statistics.median(times)
    row = {"images": step.images, "times": times, "images_per_s": step.images / seconds,
           "step_ms": 1000 * seconds, "peak_mb": peak_memory_mb(step, device),
           "gflops": count_flops(step) / seconds / 1e9, "trainable": None, "total": None}
    if hasattr(step, "model"):
        counts = count_parameters(step.model)
        row.update(trainable=counts["trainable"], total=counts["total"])
    return row


# ---- rows: setup(model, batch) -> step closure

def _method(method, precision="fp32", compile=False):
    """A row that trains a woof.step.Method exactly as the pipeline does."""
    def setup(model, batch):
        return train_step(method.prepare(model), batch, precision, compile)
    return setup


FULL = Method()
LORA_ALL = Method(("head",), lora={"targets": ALL_LINEAR, "rank": 8, "alpha": 16})
LORA_QKV = Method(("head",), lora={"targets": QKV, "rank": 8, "alpha": 16})
DORA_ALL = Method(("head",), lora={"targets": ALL_LINEAR, "rank": 8, "alpha": 16, "dora": True})
# The least any adapter method can cost: the frozen network's forward and its input gradients
# (2 of the 3 matmuls of each linear layer), no adapter at all. Training the position embedding
# makes backpropagation run through every block; only the head learns otherwise.
BOUND = Method(("pos_embed", "head"))
PROBE = Method(("head",))


def _two_branch(model, batch):
    """Ablation: our LoRA layers computing the adapter as a separate low-rank branch (PEFT's
    formulation) instead of one matmul with the merged weight."""
    for _, m in lora_modules(LORA_ALL.prepare(model)):
        m.fused = False
    return train_step(model, batch)


def _peft(targets, rank=8, alpha=16, precision="fp32", compile=False, dora=False):
    def setup(model, batch):
        from peft import LoraConfig, get_peft_model  # a dev dependency: only the benchmark needs it
        peft_config = LoraConfig(target_modules=targets, r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                 modules_to_save=["head"], use_dora=dora)
        return train_step(get_peft_model(model, peft_config), batch, precision, compile)
    return setup


def _adapters_frozen(model, batch):
    """Ablation: our LoRA layers exactly as in the "ours" row (merged-weight forward, inputs saved,
    every input gradient computed), but with the adapters frozen, so the backward skips the four
    rank-r products of dA and dB and AdamW skips the adapters. Its gap to "ours" is what the
    adapter gradients cost. The position embedding trains, as in "bound", so that
    backpropagation still runs through every block (down to block 0's input, which "ours" skips:
    if anything, the gap understates that cost)."""
    model = LORA_ALL.prepare(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name == "pos_embed" or name.startswith("head."))
    return train_step(model, batch)


LORA_ROWS = {
    "full fine-tuning": _method(FULL),
    "LoRA ours r=8 qkv+proj+fc1+fc2 +head": _method(LORA_ALL),
    "LoRA PEFT r=8 qkv+proj+fc1+fc2 +head": _peft(ALL_LINEAR),
    "LoRA ours r=8 qkv +head": _method(LORA_QKV),
    "LoRA PEFT r=8 qkv +head": _peft(QKV),
    "ablation: ours r=8 qkv+proj+fc1+fc2, two-branch (fused=False)": _two_branch,
    "ablation: ours r=8 qkv+proj+fc1+fc2, adapters frozen (no rank-r gradient products)": _adapters_frozen,
    "bound: no adapter, backprop through the frozen blocks": _method(BOUND),
    "DoRA ours r=8 qkv+proj+fc1+fc2 +head": _method(DORA_ALL),
    "DoRA PEFT r=8 qkv+proj+fc1+fc2 +head": _peft(ALL_LINEAR, dora=True),
}

# ---- issue 33 rows: DoRA against LoRA at the same rank and targets (the programme's r = 8 and 32,
# alpha = 2r), and against PEFT's DoRA.
def _all_linear(rank, dora=False):
    return Method(("head",), lora={"targets": ALL_LINEAR, "rank": rank, "alpha": 2 * rank, "dora": dora})


DORA_ROWS = {
    "full fine-tuning": _method(FULL),
    "LoRA ours r=8 qkv+proj+fc1+fc2 +head": _method(LORA_ALL),
    "DoRA ours r=8 qkv+proj+fc1+fc2 +head": _method(DORA_ALL),
    "DoRA PEFT r=8 qkv+proj+fc1+fc2 +head": _peft(ALL_LINEAR, dora=True),
    "LoRA ours r=32 qkv+proj+fc1+fc2 +head": _method(_all_linear(32)),
    "DoRA ours r=32 qkv+proj+fc1+fc2 +head": _method(_all_linear(32, dora=True)),
    "DoRA PEFT r=32 qkv+proj+fc1+fc2 +head": _peft(ALL_LINEAR, 32, 64, dora=True),
}

# ---- issue 22 rows: full, LoRA and the no-adapter bound in every setting of train.precision x
# train.compile, to choose the defaults by measurement.
SETTINGS = {"eager fp32": ("fp32", False), "compiled fp32": ("fp32", True),
            "eager bf16": ("bf16", False), "compiled bf16": ("bf16", True)}
SETTING_ROWS = {f"{name}, {setting}": _method(method, *SETTINGS[setting])
                for setting in SETTINGS
                for name, method in (("full fine-tuning", FULL), ("LoRA ours r=8 qkv+proj+fc1+fc2 +head", LORA_ALL),
                                     ("bound", BOUND))}
# PEFT at the extremes (its compile takes minutes on 2 cores): ours against it in the same setting.
SETTING_ROWS.update({f"LoRA PEFT r=8 qkv+proj+fc1+fc2 +head, {setting}": _peft(ALL_LINEAR, 8, 16, *SETTINGS[setting])
                     for setting in ("eager fp32", "compiled bf16")})


# ---- issue 6 rows: every method in fp32 and bf16, the linear probe with and without cached
# features, frozen-k, and the input pipeline alone.

def _probe_cached(epochs=5, precision="fp32"):
    """Linear probe as woof.train does it: the backbone runs once per image, then `epochs` passes
    of head-only steps on the cached features. One call = the whole probe for this batch, counted
    as `epochs` images per image, so images/s compares with a training step's."""
    def setup(model, batch):
        images, labels = batch
        PROBE.prepare(model).eval()
        head = model.get_classifier()
        optimizer, scheduler = make_optimizer(head, config.load().full, steps_per_epoch=1000)
        loss_fn = nn.CrossEntropyLoss()

        def probe():
            with torch.no_grad(), autocast(images.device, precision):
                feats = model.forward_head(model.forward_features(images), pre_logits=True).float()
            for _ in range(epochs):
                woof.step.train_step(head, feats, labels, loss_fn, optimizer, scheduler)
        probe.images, probe.model = epochs * len(images), model
        probe.alive = lambda: [*model.parameters(), *model.buffers(), images, labels]
        return probe
    return setup


def _forward_only(model, batch):
    """One inference pass: the unit the probe's cost is compared with."""
    images = batch[0]
    model.eval()

    def forward():
        with torch.no_grad():
            model(images)
    forward.images, forward.model = len(images), model
    return forward


def _tensor_loader(model, batch, cache_size=None):
    """The pipeline's input: random resized crop + flip + normalise of a uint8 batch from the
    in-memory cache (what woof.train does per step)."""
    size = batch[0].shape[-1]
    cache_size = cache_size or int(size / 0.9)
    g = torch.Generator().manual_seed(0)
    cache = torch.randint(0, 256, (256, 3, cache_size, cache_size), dtype=torch.uint8, generator=g)

    def load():
        idx = torch.randint(0, len(cache), (len(batch[0]),), generator=g)
        x = random_resized_crop_flip(cache[idx], size, torch.rand(len(idx), 5, generator=g))
        normalize(x, (0.5,) * 3, (0.5,) * 3)
    load.images = len(batch[0])
    return load


def _pil_loader(model, batch):
    """What typical fine-tuning notebooks do: torchvision ImageFolder over JPEG files, timm's PIL
    training transform per sample (decode, RandomResizedCrop, flip, ToTensor, Normalize),
    DataLoader with batch collation, no worker processes."""
    import tempfile
    from PIL import Image
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder
    size = batch[0].shape[-1]
    tmp = tempfile.TemporaryDirectory(prefix="woof-bench-")  # removed when `load` is garbage-collected
    root = tmp.name
    g = torch.Generator().manual_seed(0)
    for c in range(2):
        os.makedirs(f"{root}/{c}")
        for i in range(64):  # ImageWoof-160-like JPEGs: shortest side 160, 4:3
            pixels = torch.randint(0, 256, (160, 213, 3), dtype=torch.uint8, generator=g).numpy()
            Image.fromarray(pixels).save(f"{root}/{c}/{i}.jpg", quality=85)
    transform = create_transform(size, is_training=True, mean=(0.5,) * 3, std=(0.5,) * 3)
    loader = torch.utils.data.DataLoader(ImageFolder(root, transform), batch_size=len(batch[0]),
                                         shuffle=True, num_workers=0, drop_last=True)
    batches = iter(())

    def load():
        nonlocal batches
        try:
            next(batches)
        except StopIteration:
            batches = iter(loader)
            next(batches)
    load.images, load.tmp = len(batch[0]), tmp  # the JPEGs must live as long as the closure
    return load


ALL_ROWS = {
    "full fine-tuning": _method(FULL),
    "full fine-tuning, bf16": _method(FULL, "bf16"),
    "LoRA ours r=8 qkv+proj+fc1+fc2 +head": _method(LORA_ALL),
    "LoRA ours r=8 qkv+proj+fc1+fc2 +head, bf16": _method(LORA_ALL, "bf16"),
    "LoRA PEFT r=8 qkv+proj+fc1+fc2 +head": _peft(ALL_LINEAR),
    "LoRA PEFT r=8 qkv+proj+fc1+fc2 +head, bf16": _peft(ALL_LINEAR, precision="bf16"),
    "frozen first 6 blocks": _method(Method(freeze_blocks=6)),
    "frozen first 6 blocks, bf16": _method(Method(freeze_blocks=6), "bf16"),
    "linear probe, backbone every step": _method(PROBE),
    "linear probe, backbone every step, bf16": _method(PROBE, "bf16"),
    "linear probe, cached features (5 epochs)": _probe_cached(),
    "linear probe, cached features (5 epochs), bf16": _probe_cached(precision="bf16"),
    "inference forward pass (reference for the probe)": _forward_only,
    "data: cached uint8 tensors, batched crop/flip": _tensor_loader,
    "data: ImageFolder + PIL transforms per sample": _pil_loader,
}


# ---- issue 33: each method the programme compares, on either backbone (`--model mobileone_s0
# --image-size 224`): adapters on a ViT's linear layers, on a CNN's 1x1 convolutions.
def _on_backbone(kind, rank=8):
    def setup(model, batch):
        recipe = config.load().full
        if kind == "llrd":
            recipe = dataclasses.replace(recipe, layer_decay=0.75)
        if kind in ("full", "llrd"):
            return train_step(FULL.prepare(model), batch, recipe=recipe)
        targets = ALL_LINEAR if hasattr(model, "blocks") else CNN_POINTWISE
        method = Method(("head",), lora={"targets": targets, "rank": rank, "alpha": 2 * rank, "dora": kind == "dora"})
        return train_step(method.prepare(model), batch)
    return setup


METHOD_ROWS = {"full fine-tuning": _on_backbone("full"), "full fine-tuning, layer decay 0.75": _on_backbone("llrd"),
               "LoRA r=8 +head": _on_backbone("lora"), "DoRA r=8 +head": _on_backbone("dora")}
SUITES = {"lora": LORA_ROWS, "dora": DORA_ROWS, "settings": SETTING_ROWS, "methods": METHOD_ROWS, "all": ALL_ROWS}


def matmul_gflops(device="cpu", n=2048, dtype=torch.float32, repeats=5):
    """What this machine's BLAS reaches on a large square matmul: the ceiling for the rows above."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = statistics.median(time_steps({"mm": lambda: a @ b}, repeats, 2, device)["mm"])
    return 2 * n ** 3 / seconds / 1e9


def run(rows, model_name="vit_tiny_patch16_224", batch_size=32, image_size=160, steps=20, warmup=3,
        device="cpu", seed=0):
    """Set every row up (same seed: same initial weights, same batch), then time them interleaved."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    batch = (torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device),
             torch.randint(0, 10, (batch_size,), generator=g).to(device))
    step_of = {}
    for name, setup in rows.items():
        torch.manual_seed(seed)
        # a reparameterizable CNN (MobileOne) trains in its fused form, as the pipeline's release weights are
        model = create_model(model_name, num_classes=10, img_size=image_size, pretrained=False,
                             fused=model_name.startswith("mobileone")).to(device)
        try:
            step_of[name] = setup(model, batch)
        except ImportError as e:  # PEFT rows without PEFT installed (requirements-dev.txt)
            print(f"  skipped {name!r}: {e}", flush=True)
    times = time_steps(step_of, steps, warmup, device)
    return {name: measure(step, times[name], device) for name, step in step_of.items()}


def paired_speedup(ref_times, times):
    """Median and quartiles of ref/row over the rounds (call i of both ran in round i)."""
    ratios = [r / t for r, t in zip(ref_times, times, strict=True)]
    if len(ratios) < 2:
        return statistics.median(ratios), None, None
    q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q2, q1, q3


# Ours against PEFT on the same configuration (a target of issue 2), paired round by round too.
HEAD_TO_HEAD = ("r=8 qkv+proj+fc1+fc2 +head", "r=8 qkv +head", "r=8 qkv+proj+fc1+fc2 +head, bf16",
                "r=8 qkv+proj+fc1+fc2 +head, eager fp32", "r=8 qkv+proj+fc1+fc2 +head, compiled bf16")


def head_to_head(results):
    """A line per configuration with both "LoRA ours" and "LoRA PEFT" rows: ours' speed-up, IQR."""
    lines = []
    for setting in HEAD_TO_HEAD:
        ours, peft = results.get(f"LoRA ours {setting}"), results.get(f"LoRA PEFT {setting}")
        if ours and peft:
            mid, q1, q3 = paired_speedup(peft["times"], ours["times"])
            iqr = "" if q1 is None else f" (IQR {q1:.2f}-{q3:.2f})"
            lines.append(f"- ours vs PEFT, {setting}: {mid:.2f}x{iqr}")
    return "\n".join(lines)


# DoRA's cost: its step time against LoRA's at the same rank (and ours against PEFT's DoRA).
DORA_PAIRS = (("DoRA ours r=8 qkv+proj+fc1+fc2 +head", "LoRA ours r=8 qkv+proj+fc1+fc2 +head"),
              ("DoRA ours r=32 qkv+proj+fc1+fc2 +head", "LoRA ours r=32 qkv+proj+fc1+fc2 +head"),
              ("DoRA ours r=8 qkv+proj+fc1+fc2 +head", "DoRA PEFT r=8 qkv+proj+fc1+fc2 +head"),
              ("DoRA ours r=32 qkv+proj+fc1+fc2 +head", "DoRA PEFT r=32 qkv+proj+fc1+fc2 +head"),
              ("DoRA r=8 +head", "LoRA r=8 +head"))  # the methods suite, on either backbone


def dora_costs(results):
    """A line per pair in DORA_PAIRS with both rows: the first row's step time as a multiple of the
    second's (median over rounds of the per-round ratio), IQR."""
    lines = []
    for row, ref in DORA_PAIRS:
        if row in results and ref in results:
            mid, q1, q3 = paired_speedup(results[row]["times"], results[ref]["times"])  # row's time / ref's
            iqr = "" if q1 is None else f" (IQR {q1:.2f}-{q3:.2f})"
            lines.append(f"- {row}: {mid:.2f}x the step time of {ref}{iqr}")
    return "\n".join(lines)


def markdown(results, reference="full fine-tuning", peak_gflops=None):
    """The table; "vs full" is against `reference`, or the first row where there is none."""
    if reference not in results and results:
        reference = next(iter(results))
    ref = results.get(reference)
    lines = ["| method | trainable params | images/s | vs full (IQR) | step ms | GFLOP/s | peak memory MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        speedup = "-"
        if ref:  # per image: a call may count several passes over its batch (the cached probe)
            mid, q1, q3 = paired_speedup(ref["times"], r["times"])
            per_image = r["images"] / ref["images"]
            speedup = f"{mid * per_image:.2f}x"
            if q1 is not None and name != reference:
                speedup += f" ({q1 * per_image:.2f}-{q3 * per_image:.2f})"
        trainable = "-" if r["trainable"] is None else f"{r['trainable']:,}"
        gflops = f"{r['gflops']:.0f}" if r["gflops"] else "-"
        peak = (peak_gflops or {}).get("bf16" if "bf16" in name else "fp32")
        if r["gflops"] and peak:
            gflops += f" ({100 * r['gflops'] / peak:.0f}%)"
        lines.append(f"| {name} | {trainable} | {r['images_per_s']:.1f} | {speedup} | "
                     f"{r['step_ms']:.0f} | {gflops} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def settings_summary(results):
    """The throughput targets, from the `settings` rows (paired by round, like the table):
    the fastest setting for full fine-tuning against eager fp32, and LoRA against the
    no-adapter bound in that setting."""
    full = {setting: results.get(f"full fine-tuning, {setting}") for setting in SETTINGS}
    if not all(full.values()):
        return ""
    base = full["eager fp32"]["times"]
    speed = {setting: paired_speedup(base, row["times"])[0] for setting, row in full.items()}
    best = max(speed, key=speed.get)
    lines = [f"- full fine-tuning, {setting}: {speed[setting]:.2f}x eager fp32" for setting in SETTINGS]
    lora, bound = results.get(f"LoRA ours r=8 qkv+proj+fc1+fc2 +head, {best}"), results.get(f"bound, {best}")
    if lora and bound:
        vs_bound = paired_speedup(bound["times"], lora["times"])[0]  # LoRA's speed / the bound's
        lines.append(f"- fastest setting for full fine-tuning: {best}; there LoRA runs at {vs_bound:.2f}x "
                     f"the no-adapter bound's speed and {paired_speedup(full[best]['times'], lora['times'])[0]:.2f}x "
                     f"full fine-tuning's")
    return "\n".join(lines)


def kernels(device="cpu"):
    """What the matmuls can use here: bf16 rates differ by 20x between CPUs with and without
    native bf16 (AVX512-BF16 / AMX), so the bench says which it found."""
    if str(device).startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA {torch.version.cuda}, compute capability {major}.{minor}, bf16 {torch.cuda.is_bf16_supported()}"
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    native = "native (AVX512-BF16 or AMX)" if native_bf16(device) else "emulated: train.precision=auto picks fp32"
    return (f"CPU capability {torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 {'yes' if bf16 else 'no'} "
            f"({native}), torch.compile {compile_unavailable('cpu') or 'available'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default="lora", choices=sorted(SUITES))
    parser.add_argument("--model", nargs="+", default=["vit_tiny_patch16_224"],
                        help="one table per model, in this one run; MODEL:SIZE sets its image size (else --image-size)")
    parser.add_argument("--json", default=None, help="also write each model's rows (medians, peak memory) to this file")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# kernels: {kernels(args.device)}", flush=True)
    peak = {"fp32": matmul_gflops(args.device), "bf16": matmul_gflops(args.device, dtype=torch.bfloat16)}
    every = {}
    for spec in args.model:
        name, _, size = spec.partition(":")
        size = int(size) if size else args.image_size
        print(f"\n# {name}, {size} px, batch {args.batch_size}, the pipeline's step (timm AdamW, "
              f"params.yaml's full recipe), fp32 eager unless the row says otherwise, "
              f"{machine(args.device)}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
              f"median of {args.steps} steps after {args.warmup} warmup, {time.strftime('%Y-%m-%d')}", flush=True)
        results = every[name] = run(SUITES[args.suite], name, args.batch_size, size, args.steps, args.warmup,
                                    args.device)
        print(markdown(results, peak_gflops=peak))
        if summary := settings_summary(results):
            print(f"\nSettings, paired by round:\n{summary}")
        if pairs := head_to_head(results):
            print(f"\nSame configuration, paired by round:\n{pairs}")
        if dora := dora_costs(results):
            print(f"\nDoRA's step time, paired by round:\n{dora}")
        if "linear probe, cached features (5 epochs)" in results:
            probe = results["linear probe, cached features (5 epochs)"]
            forward = results["inference forward pass (reference for the probe)"]
            # One probe call covers 5 epochs of a batch; one forward call, one pass over it.
            cost = probe["step_ms"] / forward["step_ms"]
            print(f"Whole 5-epoch linear probe = {cost:.2f} forward passes over the training set.")
        tensors = results.get("data: cached uint8 tensors, batched crop/flip")
        pil = results.get("data: ImageFolder + PIL transforms per sample")
        if tensors and pil:
            steps = [r["images_per_s"] for n, r in results.items()
                     if not n.startswith(("data", "inference")) and "cached" not in n]
            print(f"Input pipeline: cached tensors deliver {tensors['images_per_s'] / max(steps):.1f}x the "
                  f"images/s of the fastest training step above and {tensors['images_per_s'] / pil['images_per_s']:.1f}x "
                  f"the per-sample PIL pipeline.")
    if args.json:
        write_json(args.json, {"suite": args.suite, "machine": machine(args.device), "threads": torch.get_num_threads(),
                               "batch_size": args.batch_size, "steps": args.steps, "date": time.strftime("%Y-%m-%d"),
                               "models": {m: {row: {k: r[k] for k in ("images_per_s", "step_ms", "peak_mb", "trainable")}
                                              for row, r in res.items()} for m, res in every.items()}})
    print(f"\nLarge matmul (2048^3) on this machine: {peak['fp32']:.0f} GFLOP/s fp32, "
          f"{peak['bf16']:.0f} GFLOP/s bf16; the % column is against the row's precision.")
    return every


if __name__ == "__main__":
    main()
