"""What each fine-tuning method costs: parameters, FLOPs and memory.

A method is a woof.step.Method saying what trains, and a step is woof.step.train_step with the
pipeline's optimiser: the training loop and the benchmark use the same two definitions.
    Method()                                   full fine-tuning: everything trains
    Method(("head",))                          linear probing: only the classifier trains
    Method(freeze_blocks=6)                    the first 6 blocks (and the embeddings) are frozen
    Method(("head",), lora={"targets": ..., "rank": 8, "alpha": 16})   LoRA adapters (+ the head)

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode, which sees every aten op that
actually runs, so a frozen backbone's cheaper backward (no weight gradients, and no input
gradients below the first trainable layer) is counted as it happens, not assumed. It counts
matmuls, convolutions and attention only (2 FLOPs per multiply-add); element-wise ops, norms and
the optimiser step are left out, as in every published FLOP count.

Memory, in MB (2**20 bytes), has two sides:
  analytic   weights (all parameters and buffers), gradients (one per trainable parameter),
             AdamW state (exp_avg + exp_avg_sq: 2 x trainable, fp32 = 8 bytes per trainable
             parameter) and activations = the tensors autograd saves for backward in one forward
             pass (unique storages, parameters excluded), recorded with saved_tensors_hooks.
  measured   the peak tensor memory of a training step once AdamW holds its state
             (`peak_tensor_bytes`, which the benchmark uses too): the storages alive before
             the step plus the step's own peak above them. On CPU there is no allocator
             counter, so the step runs under torch.profiler(profile_memory=True) and its
             allocator events (every allocation and free, in time order) are replayed; on CUDA
             it is torch.cuda.max_memory_allocated (allocator blocks, so a little higher).
             Neither counts the framework's own overhead (CUDA context, Python, oneDNN scratch).
"""
import contextlib
import gc
import os

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import woof.step
from woof.evaluate import compiled
from woof.lora import lora_modules, merge_lora
from woof.models import count_parameters
from woof.step import Method, make_optimizer

MB = 2 ** 20


class LeNet5(nn.Module):
    """The classic exercise (28x28 grey input, 44,426 parameters): the cost stage's worked example,
    small enough to check every count by hand."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.pool = nn.AvgPool2d(2)
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):  # (B, 1, 28, 28)
        x = self.pool(torch.tanh(self.conv1(x)))  # (B, 6, 12, 12)
        x = self.pool(torch.tanh(self.conv2(x)))  # (B, 16, 4, 4)
        x = torch.tanh(self.fc1(x.flatten(1)))  # (B, 120)
        return self.fc3(torch.tanh(self.fc2(x)))  # (B, 10)


# Full fine-tuning, probing the last layer, LoRA r=2 on the three linear layers (1,348 adapter parameters).
LENET_METHODS = {"full": Method(), "linear_probe": Method(("fc3",)),
                 "lora": Method((), lora={"targets": ["fc1", "fc2", "fc3"], "rank": 2, "alpha": 2})}


def count_flops(fn):
    """FLOPs of every matmul/conv/attention that runs inside fn()."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _batch(batch_size, image_size, in_chans, device="cpu"):
    return torch.randn(batch_size, in_chans, image_size, image_size, device=device)  # (B, C, S, S)


def step_closure(model, x, y, recipe, precision="fp32", compile=False):
    """The pipeline's training step on one fixed batch, as a closure: woof.step.train_step with
    woof.step.make_optimizer and the label-smoothed loss of `recipe`. The closure carries `images`
    per call, the `model` (parameter counts) and `alive()`, the tensors kept between calls (for
    peak memory). The benchmark's rows and the cost stage both take their step from here."""
    optimizer, scheduler = make_optimizer(model, recipe, steps_per_epoch=1000)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    forward = compiled(model, compile, x.device)
    model.train()

    def step():
        woof.step.train_step(forward, x, y, loss_fn, optimizer, scheduler, precision)

    def alive():
        state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return [*model.parameters(), *model.buffers(), *state, x, y]
    step.images, step.model, step.alive = len(x), model, alive
    return step


def _step(model, batch_size, image_size, in_chans, recipe, device="cpu"):
    """step_closure on a random batch whose labels are all 0."""
    x = _batch(batch_size, image_size, in_chans, device)
    return step_closure(model, x, torch.zeros(batch_size, dtype=torch.long, device=device), recipe)


def train_flops(model, batch_size, image_size, recipe, in_chans=3):
    """FLOPs of one training step (forward + backward; the optimiser's are not counted) on a batch."""
    model.train()
    flops = count_flops(_step(model, batch_size, image_size, in_chans, recipe))
    model.zero_grad(set_to_none=True)
    return flops


@torch.no_grad()
def inference_flops(model, image_size, in_chans=3):
    """FLOPs of the forward pass for one image."""
    model.eval()
    x = _batch(1, image_size, in_chans)
    return count_flops(lambda: model(x))


def activation_bytes(model, batch_size, image_size, in_chans=3):
    """Bytes autograd keeps alive between forward and backward (what activation memory is)."""
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:  # weights saved for backward are not activations
            seen[st.data_ptr()] = st.nbytes()
        return t

    x = _batch(batch_size, image_size, in_chans)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())


def _distinct_bytes(tensors):
    """Bytes of distinct storages (views and shared weights count once)."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto writes 'profiler_start/stop' lines (and GPU probing errors) straight to fd 2."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_tensor_bytes(fn, alive=(), device="cpu"):
    """Peak tensor memory of one call of fn(): the distinct storages of `alive` (what exists
    between calls: weights, optimiser state, batch) plus the call's own peak above them."""
    device = torch.device(device)
    before = _distinct_bytes(alive)
    if device.type == "cuda":
        gc.collect()  # earlier tensors freed late must not count
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return before + torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return before + peak


def measured_peak_bytes(model, batch_size, image_size, recipe, in_chans=3, device="cpu"):
    """Peak tensor memory of a training step that already has AdamW state (the second step)."""
    model.to(device).train()
    step = _step(model, batch_size, image_size, in_chans, recipe, device)
    step()  # creates the optimiser state
    peak = peak_tensor_bytes(step, step.alive(), device)
    model.zero_grad(set_to_none=True)  # the model outlives this call: do not leave it holding grads
    return peak


def method_cost(model, batch_size, image_size, recipe, in_chans=3, device="cpu"):
    """Cost of one prepared model (requires_grad already set for its method)."""
    counts = count_parameters(model)
    weight_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    # AdamW keeps exp_avg and exp_avg_sq per trainable parameter, in fp32.
    optimizer_bytes = 2 * 4 * counts["trainable"]
    act_bytes = activation_bytes(model, batch_size, image_size, in_chans)
    row = {
        "total_params": counts["total"],
        "trainable_params": counts["trainable"],
        "train_flops": train_flops(model, batch_size, image_size, recipe, in_chans),
        "inference_flops": inference_flops(_for_inference(model), image_size, in_chans),
        "weights_mb": weight_bytes / MB,
        "grads_mb": grad_bytes / MB,
        "optimizer_mb": optimizer_bytes / MB,
        "activations_mb": act_bytes / MB,
    }
    row["analytic_total_mb"] = row["weights_mb"] + row["grads_mb"] + row["optimizer_mb"] + row["activations_mb"]
    row["measured_peak_mb"] = measured_peak_bytes(model, batch_size, image_size, recipe, in_chans, device) / MB
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}


def _for_inference(model):
    """LoRA models ship merged (the pipeline saves the merged weights), so count that architecture."""
    return merge_lora(model) if lora_modules(model) else model  # a merged copy: model keeps its adapters


def cost_table(model_factory, methods, batch_size, image_size, recipe, in_chans=3, device="cpu"):
    """{method name: costs} for each woof.step.Method, each on a fresh model from model_factory();
    recipe: the optimiser's settings (woof.config.Recipe; they change no count)."""
    table = {}
    for name, method in methods.items():
        model = method.prepare(model_factory())
        table[name] = method_cost(model, batch_size, image_size, recipe, in_chans, device)
        # Say which rank / k the row is about, so a metrics diff shows it next to the numbers.
        if method.lora:
            table[name]["rank"] = method.lora["rank"]
        if method.freeze_blocks:
            table[name]["freeze_blocks"] = method.freeze_blocks
        del model
    return table


def methods_from_params(cfg, blocks):
    """The four methods of the report, configured from params.yaml (cfg: woof.config.Config);
    `blocks`: num_blocks(model).

    frozen-k freezes cost.freeze_blocks blocks (null: half), at most all of them, so one
    setting works for every model (ViT-Tiny has 12 blocks, a ResNet 4 stages). A model without
    numbered blocks has no frozen-k row."""
    freeze = min(cfg.cost.freeze_blocks or max(1, blocks // 2), blocks)
    methods = {"full": Method(), "linear_probe": Method(("head",)), "lora": Method.of(cfg.lora)}
    if freeze:
        methods["frozen"] = Method(freeze_blocks=freeze)
    return methods


def format_table(table):
    """Markdown table of a cost table (for the terminal)."""
    import pandas as pd
    rows = [{"method": name, "total params": f"{r['total_params']:,}", "trainable": f"{r['trainable_params']:,}",
             "train GFLOPs/step": f"{r['train_flops'] / 1e9:.3f}", "inference GFLOPs/img": f"{r['inference_flops'] / 1e9:.3f}",
             **{label: f"{r[key]:.1f}" for key, label in (("weights_mb", "weights MB"), ("grads_mb", "grads MB"),
                                                          ("optimizer_mb", "AdamW MB"), ("activations_mb", "activations MB"),
                                                          ("measured_peak_mb", "measured peak MB"))}}
            for name, r in table.items()]
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * 9) + "\n"
