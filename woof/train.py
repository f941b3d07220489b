"""Fine-tuning loop shared by every method: full, linear probe, frozen-k, from scratch, LoRA.

One process or many (torchrun + DistributedDataParallel), fp32 or bf16 autocast, a checkpoint
after every epoch that a rerun resumes from, and bit-identical results for the same params on
the same CPU."""
import hashlib
import json
import math
import os
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from woof.data import center_crop, normalize, random_resized_crop_flip, sha256_file
from woof.evaluate import autocast, classification_metrics, predict
from woof.io import atomic_path
from woof.models import create_model, only_classifier_trains, pretrained_weights, set_trainable


EVAL_BATCH_SIZE = 128  # inference only: it changes speed, never results

# ---------------------------------------------------------------------------------------------
# building the model for a method

def build_model(method, params, classes):
    """The timm model with exactly the parameters the method trains left trainable."""
    cfg, model_cfg = params[method], params["model"]
    torch.manual_seed(cfg.get("seed", 0))  # random heads, LoRA A matrices, from-scratch weights
    pretrained = cfg.get("pretrained", True)
    indices = [c["imagenet_index"] for c in classes]
    head_from_imagenet = pretrained and model_cfg.get("head_init", "imagenet") == "imagenet" \
        and min(indices) >= 0
    model = create_model(model_cfg["name"], num_classes=len(classes),
                         img_size=params["data"]["image_size"], weights=pretrained_weights(model_cfg),
                         pretrained=pretrained, class_indices=indices if head_from_imagenet else None)
    if method == "lora":
        from woof import lora  # only the LoRA path needs it: lora.py is no dependency of train_full
        lora.apply_lora(model, cfg["targets"], rank=cfg["rank"], alpha=cfg["alpha"],
                        dropout=cfg.get("dropout", 0.0), rslora=cfg.get("rslora", False),
                        trainable=tuple(cfg.get("trainable", ["head"])))
    else:
        set_trainable(model, cfg.get("trainable", ["all"]), cfg.get("freeze_blocks", 0))
    return model


def train_method(method, params, classes, train, val, ckpt_dir, device="cpu", train_file=None):
    """Build `method`'s model and fit it: the one training path of the train stages and the
    experiment programme. -> (model, history, run metrics). A checkpoint in ckpt_dir written by
    the same params and training data is resumed from."""
    from woof.models import data_config
    model = build_model(method, params, classes)
    dcfg = data_config(model, params["data"]["image_size"])
    start = time.perf_counter()
    history = fit(model, train, val, params[method], dcfg, ckpt_dir=ckpt_dir, device=device,
                  precision=params["train"]["precision"],
                  fingerprint=fingerprint(params, method, train_file, train[1]))
    metrics = run_metrics(history, model, device, (time.perf_counter() - start) / 60, rank_and_world()[1])
    metrics["precision"] = params["train"]["precision"]
    return model, history, metrics


def check_config(cfg):
    """Clear errors for params that would otherwise fail deep inside the loop."""
    for key in ("epochs", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {cfg[key]!r}")
    for key in ("lr", "weight_decay", "warmup_epochs", "label_smoothing"):
        if cfg.get(key, 0) < 0:
            raise ValueError(f"{key} must be >= 0, got {cfg[key]!r}")


# ---------------------------------------------------------------------------------------------
# distributed helpers (all no-ops in a single process)

def init_distributed(device="auto"):
    """-> (rank, world_size, device). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, f"cuda:{local}"
    return rank, world, "cpu"


def rank_and_world():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def all_sum(values, device):
    """Sum a list of floats over ranks."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------------------------------------
# optimisation

def make_optimizer(model, cfg, steps_per_epoch):
    """AdamW without weight decay on biases, norms and the parameters the model itself exempts
    (timm's no_weight_decay(): position embedding, class token); linear warmup then cosine decay
    to 0, stepped every batch."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.get("weight_decay", 0.0)},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg["lr"])
    total = cfg["epochs"] * steps_per_epoch
    warmup = round(cfg.get("warmup_epochs", 0) * steps_per_epoch)

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


# ---------------------------------------------------------------------------------------------
# the loop

def fit(model, train, val, cfg, data_cfg, ckpt_dir=None, fingerprint="", device="cpu",
        precision="fp32", on_epoch_end=None):
    """Train `model` on cached uint8 tensors and return the per-epoch history.

    train, val: (images uint8 (N, 3, S, S), labels (N,)); train images are the larger cache that
    random resized crops are taken from, val images are at the input size.
    ckpt_dir: where the per-epoch checkpoint lives; a checkpoint with the same fingerprint is
    resumed from, any other is ignored."""
    check_config(cfg)
    rank, world = rank_and_world()
    torch.manual_seed(cfg.get("seed", 0))
    size = data_cfg["input_size"][-1]
    images, labels = train
    if cfg["batch_size"] % world:
        raise ValueError(f"batch_size {cfg['batch_size']} is not divisible by {world} processes")
    if only_classifier_trains(model):
        return fit_linear_probe(model, train, val, cfg, data_cfg, device, precision, rank)
    steps = len(images) // cfg["batch_size"]
    if steps == 0:
        raise ValueError(f"batch_size {cfg['batch_size']} is larger than the {len(images)} training images")
    model.to(device)
    opt, sched = make_optimizer(model, cfg, steps)
    g = torch.Generator().manual_seed(cfg.get("seed", 0))
    history, start_epoch = [], 0
    ckpt = Path(ckpt_dir) / "last.pt" if ckpt_dir else None
    if ckpt and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            g.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            history, start_epoch = json.loads(state["history"]), state["epoch"]
            if rank == 0:
                print(f"resuming from {ckpt} after epoch {start_epoch}")
    ddp = DistributedDataParallel(model) if world > 1 else model
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.get("label_smoothing", 0.0))
    local = cfg["batch_size"] // world
    scale, hflip = tuple(cfg.get("crop_scale", (0.35, 1.0))), cfg.get("hflip", 0.5)
    for epoch in range(start_epoch, cfg["epochs"]):
        model.train()
        perm = torch.randperm(len(images), generator=g)
        totals = [0.0, 0.0, 0.0]  # loss sum, correct, count
        start = time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=rank != 0, unit="step")
        for step in bar:
            # Every rank draws the global batch's indices and crop parameters, then takes its slice:
            # the result is the same whatever the number of processes.
            idx = perm[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]]
            rand = torch.rand(len(idx), 5, generator=g)
            idx, rand = idx[rank * local:(rank + 1) * local], rand[rank * local:(rank + 1) * local]
            x = random_resized_crop_flip(images[idx].to(device), size, rand, scale, hflip=hflip)
            x = normalize(x, data_cfg["mean"], data_cfg["std"])  # (B, 3, size, size)
            y = labels[idx].to(device)
            with autocast(device, precision):
                logits = ddp(x)  # (B, C)
                loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals[0] += loss.item() * len(y)
            totals[1] += (logits.argmax(1) == y).sum().item()
            totals[2] += len(y)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{totals[1] / totals[2]:.3f}")
        train_seconds = time.perf_counter() - start
        loss_sum, correct, count = all_sum(totals, device)
        val_metrics = evaluate_sharded(model, val, data_cfg, device, precision)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / count, "train_acc": correct / count,
                        "val_loss": val_metrics["loss"], "val_acc": val_metrics["top1"],
                        "epoch_seconds": train_seconds, "images_per_s": count / train_seconds,
                        "lr": sched.get_last_lr()[0]})
        if rank == 0:
            print(" ".join(f"{k}={v:.4g}" for k, v in history[-1].items()))
            if ckpt:
                save_checkpoint(ckpt, epoch + 1, model, opt, sched, g, history, fingerprint)
        if on_epoch_end:
            on_epoch_end(epoch + 1)
    return history


def evaluate_sharded(model, val, data_cfg, device, precision):
    """Val loss and top-1 with each rank predicting its own shard, summed over ranks."""
    rank, world = rank_and_world()
    images, labels = val[0][rank::world], val[1][rank::world]
    logits, _ = predict(model, images, data_cfg, EVAL_BATCH_SIZE, device, precision)
    m = classification_metrics(logits, labels)
    loss_sum, correct, count = all_sum([m["loss"] * m["n"], m["top1"] * m["n"], m["n"]], device)
    return {"loss": loss_sum / count, "top1": correct / count}


def save_checkpoint(path, epoch, model, opt, sched, generator, history, fingerprint):
    """Everything needed to continue bit-identically; plain tensors and strings only, so that it
    loads with weights_only=True."""
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "generator": generator.get_state(),
             "torch_rng": torch.get_rng_state(), "history": json.dumps(history),
             "fingerprint": fingerprint}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def fit_linear_probe(model, train, val, cfg, data_cfg, device, precision, rank=0):
    """Linear probing without running the frozen backbone every epoch: features of the train and
    val images are extracted once (center view, no augmentation), then only the head trains."""
    size = data_cfg["input_size"][-1]
    head = model.get_classifier()
    model.to(device)
    start = time.perf_counter()
    def features(x):
        return model.forward_head(model.forward_features(x), pre_logits=True)  # (B, D)
    feats = {}
    for name, (images, labels) in (("train", (center_crop(train[0], size), train[1])), ("val", val)):
        out, _ = predict(model, images, data_cfg, EVAL_BATCH_SIZE, device, precision,
                         desc=f"features {name}" if rank == 0 else None, forward=features)
        feats[name] = (out.to(device), labels.to(device))
    extract_seconds = time.perf_counter() - start
    x_train, y_train = feats["train"]
    steps = max(1, len(x_train) // cfg["batch_size"])
    opt, sched = make_optimizer(head, cfg, steps)
    g = torch.Generator().manual_seed(cfg.get("seed", 0))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.get("label_smoothing", 0.0))
    history = []
    for epoch in range(cfg["epochs"]):
        start = time.perf_counter()
        perm = torch.randperm(len(x_train), generator=g)
        totals = [0.0, 0.0, 0]
        for step in range(steps):
            idx = perm[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]].to(device)
            logits = head(x_train[idx])
            loss = loss_fn(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            totals[0] += loss.item() * len(idx)
            totals[1] += (logits.argmax(1) == y_train[idx]).sum().item()
            totals[2] += len(idx)
        seconds = time.perf_counter() - start + (extract_seconds if epoch == 0 else 0.0)
        with torch.no_grad():
            m = classification_metrics(head(feats["val"][0]).cpu(), feats["val"][1].cpu())
        history.append({"epoch": epoch + 1, "train_loss": totals[0] / totals[2],
                        "train_acc": totals[1] / totals[2], "val_loss": m["loss"], "val_acc": m["top1"],
                        "epoch_seconds": seconds, "images_per_s": totals[2] / seconds,
                        "lr": sched.get_last_lr()[0]})
    return history


# ---------------------------------------------------------------------------------------------
# bookkeeping

def fingerprint(params, method, train_file=None, train_labels=None):
    """Identifies a run: a checkpoint is resumed only by the run it was written by (same params,
    same training file, same training labels: a subset of the file is another run)."""
    h = hashlib.sha256()
    h.update(json.dumps([params[method], params["model"], params["data"],
                         params.get("train", {})], sort_keys=True, default=str).encode())
    if train_file:
        h.update(sha256_file(train_file).encode())
    if train_labels is not None:
        h.update(train_labels.numpy().tobytes())
    return h.hexdigest()


def machine(device="cpu"):
    """What the numbers were measured on, for metrics and reports: GPU name, or CPU model and cores."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "CPU"
    return f"{model} ({os.cpu_count()} cores)"


def peak_memory_mb(device):
    """GPU: peak allocated by tensors. CPU: peak resident set size of the process (includes the
    cached dataset), the number `time -v` would report."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_metrics(history, model, device, minutes, world_size=1):
    """The flat metrics of a training run (metrics/train_<method>.json)."""
    last = history[-1]
    seconds = sum(h["epoch_seconds"] for h in history)
    cuda = str(device).startswith("cuda")
    return {"epochs": len(history), "world_size": world_size, "hardware": machine(device),
            "train_minutes": minutes,
            "train_images_per_s": sum(h["epoch_seconds"] * h["images_per_s"] for h in history) / seconds,
            **parameter_counts(model), "peak_memory_mb": peak_memory_mb(device),
            "peak_memory_kind": "cuda_allocated" if cuda else "rss",
            **{f"final_{k}": last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}}


def parameter_counts(model):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": 100.0 * trainable / total}

