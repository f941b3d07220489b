"""What each fine-tuning method costs: parameters, FLOPs and memory.

A method is a small dict saying what trains (see `prepare`):
    {}                                        full fine-tuning: everything trains
    {"trainable": ["head"]}                   linear probing: only the classifier trains
    {"freeze_blocks": 6}                      the first 6 blocks (and the embeddings) are frozen
    {"lora": {"targets": ..., "rank": 8, "alpha": 16}}   LoRA adapters (+ whatever lora.trainable names)

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
  measured   the peak of live tensor memory over two AdamW training steps. On CPU it is tracked
             by `LiveTensorMemory`, a TorchDispatchMode adding up the storage bytes of every
             tensor alive (parameters, buffers, inputs, activations, gradients, optimiser state,
             temporaries); on CUDA it is torch.cuda.max_memory_allocated (allocator blocks, so a
             little higher). Neither counts the framework's own overhead (CUDA context, Python).
"""
import gc
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from woof.lora import apply_lora, lora_modules, merge_lora
from woof.models import count_parameters, set_trainable

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
LENET_METHODS = {"full": {}, "linear_probe": {"trainable": ["fc3"]},
                 "lora": {"lora": {"targets": ["fc1", "fc2", "fc3"], "rank": 2, "alpha": 2, "trainable": ()}}}


def prepare(model, method):
    """Set requires_grad (and add adapters) on a fresh model for one method; returns the model."""
    for p in model.parameters():
        p.requires_grad_(True)
    if "lora" in method:
        cfg = dict(method["lora"])
        # apply_lora freezes the base model itself; lora.trainable says what else trains.
        return apply_lora(model, cfg.pop("targets"), cfg.pop("rank"), cfg.pop("alpha"), **cfg)
    return set_trainable(model, method.get("trainable", ["all"]), method.get("freeze_blocks", 0))


def count_flops(fn):
    """FLOPs of every matmul/conv/attention that runs inside fn()."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _batch(batch_size, image_size, in_chans, device="cpu"):
    return torch.randn(batch_size, in_chans, image_size, image_size, device=device)  # (B, C, S, S)


def _train_step(model, x):
    out = model(x)  # (B, num_classes)
    target = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
    loss = F.cross_entropy(out, target)
    loss.backward()
    return loss


def train_flops(model, batch_size, image_size, in_chans=3):
    """FLOPs of one training step (forward + backward) on a batch."""
    model.train()
    x = _batch(batch_size, image_size, in_chans)
    flops = count_flops(lambda: _train_step(model, x))
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


class LiveTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storage, counted op by op (a CPU stand-in for max_memory_allocated).

    Every storage an op returns is counted once, until Python frees it (weakref callback).
    Tensors that existed before the mode (parameters, buffers) are added with `track`.
    """

    def __init__(self):
        super().__init__()
        self.live = {}  # id(storage) -> (weakref, nbytes)
        self.current = 0
        self.peak = 0

    def track(self, t):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        st = t.untyped_storage()
        key = id(st)
        if key in self.live:
            return
        nbytes = st.nbytes()

        def free(_ref, key=key, nbytes=nbytes):
            if self.live.pop(key, None) is not None:
                self.current -= nbytes

        self.live[key] = (weakref.ref(st, free), nbytes)
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            self.track(t)
        return out


def measured_peak_bytes(model, batch_size, image_size, in_chans=3, device="cpu", steps=2):
    """Peak memory of `steps` AdamW training steps (the second step already holds optimiser state)."""
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-6)

    def run():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            x = _batch(batch_size, image_size, in_chans, device)
            _train_step(model, x)
            opt.step()

    if torch.device(device).type == "cuda":
        gc.collect()  # earlier methods' tensors must not count towards this one's peak
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        tracker = LiveTensorMemory()
        for t in list(model.parameters()) + list(model.buffers()):
            tracker.track(t)
        with tracker:
            run()
        peak = tracker.peak
    opt.zero_grad(set_to_none=True)  # the model outlives this call: do not leave it holding grads
    return peak


def method_cost(model, batch_size, image_size, in_chans=3, device="cpu"):
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
        "train_flops": train_flops(model, batch_size, image_size, in_chans),
        "inference_flops": inference_flops(_for_inference(model), image_size, in_chans),
        "weights_mb": weight_bytes / MB,
        "grads_mb": grad_bytes / MB,
        "optimizer_mb": optimizer_bytes / MB,
        "activations_mb": act_bytes / MB,
    }
    row["analytic_total_mb"] = row["weights_mb"] + row["grads_mb"] + row["optimizer_mb"] + row["activations_mb"]
    row["measured_peak_mb"] = measured_peak_bytes(model, batch_size, image_size, in_chans, device) / MB
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}


def _for_inference(model):
    """LoRA models ship merged (the pipeline saves the merged weights), so count that architecture."""
    return merge_lora(model) if lora_modules(model) else model  # a merged copy: model keeps its adapters


def cost_table(model_factory, methods, batch_size, image_size, in_chans=3, device="cpu"):
    """{method name: costs} for each method, each on a fresh model from model_factory()."""
    table = {}
    for name, method in methods.items():
        model = prepare(model_factory(), method)
        table[name] = method_cost(model, batch_size, image_size, in_chans, device)
        # Say which rank / k the row is about, so a metrics diff shows it next to the numbers.
        if "lora" in method:
            table[name]["rank"] = method["lora"]["rank"]
        if method.get("freeze_blocks"):
            table[name]["freeze_blocks"] = method["freeze_blocks"]
        del model
    return table


def methods_from_params(cfg, blocks):
    """The four methods of the report, configured from params.yaml (cfg: woof.config.Config);
    `blocks`: num_blocks(model).

    frozen-k freezes cost.freeze_blocks blocks (null: half), at most all of them, so one
    setting works for every model (ViT-Tiny has 12 blocks, a ResNet 4 stages). A model without
    numbered blocks has no frozen-k row."""
    freeze = min(cfg.cost.freeze_blocks or max(1, blocks // 2), blocks)
    lora = cfg.lora
    lora_cfg = {"targets": lora.targets, "rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout,
                "rslora": lora.rslora, "trainable": lora.trainable}
    methods = {"full": {}, "linear_probe": {"trainable": ["head"]}, "lora": {"lora": lora_cfg}}
    if freeze:
        methods["frozen"] = {"freeze_blocks": freeze}
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
