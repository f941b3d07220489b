"""Benchmarks that print Markdown tables: `python -m woof.bench lora` (or `all`).

Every row trains the same model on the same batch with AdamW, so rows differ only by the method.
Throughput: a few warmup steps, then the median of timed steps, the rows taking turns step by step
(this CPU is shared: interleaving spreads another process's load over all rows, the median drops
the steps it interrupted).
Peak memory: on CUDA, torch.cuda.max_memory_allocated over one step. On CPU there is no allocator
counter, so one extra step runs under torch.profiler(profile_memory=True) and we replay its
allocator events (every CPU allocation and free, in time order): peak = bytes alive before the step
(weights, optimiser state, batch) + the highest running sum of the step's allocations and frees.
Both count tensor memory from PyTorch's allocator, not the process RSS (libraries' own buffers,
e.g. oneDNN scratch space, are not included).
"""
import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from woof.lora import apply_lora, count_parameters

ALL_LINEAR = r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
QKV = r"blocks\.\d+\.attn\.qkv"


def train_step(model, batch, lr=1e-3):
    """One AdamW training step on `batch`, as a closure: the unit every row of the table times."""
    images, labels = batch
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()

    def step():
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step.model, step.optimizer, step.batch = model, optimizer, batch
    return step


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps, n=10, warmup=3, device="cpu"):
    """Median seconds per call of each closure in `steps` (name -> callable).

    The closures take turns (round robin, in a rotating order), so a burst of load from another
    process on this shared machine hits every row alike instead of wrecking one of them."""
    device = torch.device(device)
    names = list(steps)
    for name in names:  # warmup: first-call allocations, AdamW state, oneDNN kernel selection
        for _ in range(warmup):
            steps[name]()
    times = {name: [] for name in names}
    for i in range(n):
        for name in names[i % len(names):] + names[:i % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            steps[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _persistent_bytes(tensors):
    """Bytes of distinct storages (views and shared weights count once)."""
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def peak_memory_mb(step, device="cpu"):
    """Peak tensor memory of one call of a `train_step` closure: what is alive between steps
    (parameters, buffers, optimiser state, batch) plus the step's own peak above that."""
    device = torch.device(device)
    state = [v for s in step.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    before = _persistent_bytes([*step.model.parameters(), *step.model.buffers(), *state, *step.batch])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return (before + torch.cuda.max_memory_allocated(device) - start) / 2**20
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return (before + peak) / 2**20


def measure_train_step(model, batch, steps=10, warmup=3):
    """{"images_per_s", "step_ms", "peak_mb", "trainable", "total"} for training `model` on `batch`."""
    step = train_step(model, batch)
    seconds = time_steps({"model": step}, steps, warmup, batch[0].device)["model"]
    return _row(step, seconds)


def _row(step, seconds):
    counts = count_parameters(step.model)
    return {"images_per_s": len(step.batch[0]) / seconds, "step_ms": 1000 * seconds,
            "peak_mb": peak_memory_mb(step, step.batch[0].device),
            "trainable": counts["trainable"], "total": counts["total"]}


# ---- rows: name -> function(model) returning the model to train (freezing/wrapping it as needed)

def _full(model):
    return model


def _ours(targets, rank=8, alpha=16):
    return lambda model: apply_lora(model, targets, rank=rank, alpha=alpha, trainable=("head",))


def _peft(targets, rank=8, alpha=16):
    def setup(model):
        from peft import LoraConfig, get_peft_model  # only the benchmark needs PEFT
        config = LoraConfig(target_modules=targets, r=rank, lora_alpha=alpha, lora_dropout=0.0,
                            modules_to_save=["head"])
        return get_peft_model(model, config)
    return setup


LORA_ROWS = {
    "full fine-tuning": _full,
    "LoRA ours r=8 qkv+proj+fc1+fc2 +head": _ours(ALL_LINEAR),
    "LoRA PEFT r=8 qkv+proj+fc1+fc2 +head": _peft(ALL_LINEAR),
    "LoRA ours r=8 qkv +head": _ours(QKV),
    "LoRA PEFT r=8 qkv +head": _peft(QKV),
}
SUITES = {"lora": LORA_ROWS, "all": LORA_ROWS}  # `all` grows as more rows are added


def run(rows, model_name="vit_tiny_patch16_224", batch_size=32, image_size=160, steps=10, warmup=3,
        device="cpu", seed=0):
    """Build every row's model (same seed: same initial weights), then time them interleaved."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    batch = (torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device),
             torch.randint(0, 10, (batch_size,), generator=g).to(device))
    steps_by_row = {}
    for name, setup in rows.items():
        torch.manual_seed(seed)
        model = timm.create_model(model_name, pretrained=False, num_classes=10, img_size=image_size)
        steps_by_row[name] = train_step(setup(model.to(device)), batch)
    seconds = time_steps(steps_by_row, steps, warmup, device)
    return {name: _row(step, seconds[name]) for name, step in steps_by_row.items()}


def markdown(results, reference="full fine-tuning"):
    ref = results.get(reference, {}).get("images_per_s")
    lines = ["| method | trainable params | images/s | vs full | step ms | peak memory MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        speedup = f"{r['images_per_s'] / ref:.2f}x" if ref else "-"
        lines.append(f"| {name} | {r['trainable']:,} | {r['images_per_s']:.1f} | {speedup} | "
                     f"{r['step_ms']:.0f} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default="lora", choices=sorted(SUITES))
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {args.model}, {args.image_size} px, batch {args.batch_size}, float32, AdamW, {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.steps} steps "
          f"after {args.warmup} warmup", flush=True)
    results = run(SUITES[args.suite], args.model, args.batch_size, args.image_size, args.steps,
                  args.warmup, args.device)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
