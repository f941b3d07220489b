"""Fine-tuning loop shared by every method: full, linear probe, frozen-k, from scratch, LoRA.

One process or many (torchrun + DistributedDataParallel), fp32 or bf16 autocast, a checkpoint
after every epoch that a rerun resumes from, and bit-identical results for the same params on
the same CPU."""
import hashlib
import json
import os
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import woof.step
from woof.data import center_crop, normalize, random_resized_crop_flip, sha256_file
from woof.errors import ParamError
from woof.evaluate import classification_metrics, compiled, predict, resolve_precision
from woof.io import atomic_path, machine
from woof.models import count_parameters, create_model, data_config, only_classifier_trains, pretrained_weights
from woof.step import Method, make_optimizer


# ---------------------------------------------------------------------------------------------
# building the model for a method

def build_model(method, cfg, classes):
    """The timm model with exactly the parameters the method trains left trainable.
    cfg: woof.config.Config; method: "full" or "lora"."""
    recipe = cfg.method(method)
    torch.manual_seed(recipe.seed)  # random heads, LoRA A matrices, from-scratch weights
    pretrained = getattr(recipe, "pretrained", True)  # LoRA always starts from the pretrained model
    indices = [c["imagenet_index"] for c in classes]
    head_from_imagenet = pretrained and cfg.model.head_init == "imagenet"
    if head_from_imagenet and min(indices) < 0:
        unknown = [c["wnid"] for c in classes if c["imagenet_index"] < 0]
        raise ParamError(f"model.head_init=imagenet, but the classes {unknown[:3]} are not ImageNet classes: "
                         "set model.head_init: random")
    model = create_model(cfg.model.name, num_classes=len(classes), img_size=cfg.data.image_size,
                         weights=pretrained_weights(cfg.model), pretrained=pretrained,
                         class_indices=indices if head_from_imagenet else None)
    return Method.of(recipe).prepare(model)


def train_method(method, cfg, classes, train, val, ckpt_dir, device="cpu", train_file=None, live_dir=None):
    """Build `method`'s model and fit it: the one training path of the train stages and the
    experiment programme. -> (model, history, run metrics). A checkpoint in ckpt_dir written by
    the same params and training data is resumed from; live_dir: where dvclive logs the epochs."""
    model = build_model(method, cfg, classes)
    dcfg = data_config(model, cfg.data.image_size)
    precision = resolve_precision(cfg.train.precision, device)
    history = fit(model, train, val, cfg.method(method), dcfg, ckpt_dir=ckpt_dir, device=device,
                  precision=precision, eval_batch_size=cfg.evaluate.batch_size,
                  fingerprint=fingerprint(cfg, method, train_file, train[1]), live_dir=live_dir,
                  compile=cfg.train.compile)
    metrics = run_metrics(history, model, device, rank_and_world()[1])
    metrics.update(precision=precision, compile=cfg.train.compile)
    return model, history, metrics


# ---------------------------------------------------------------------------------------------
# distributed helpers (all no-ops in a single process)

def init_distributed(device="auto"):
    """-> (rank, world_size, device). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK.
    device: auto (a GPU if there is one), cpu, or cuda (refused when there is no GPU)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if device == "cuda" and not torch.cuda.is_available():
        raise ParamError("train.device=cuda, but torch sees no GPU on this machine: use train.device=auto "
                         "(a GPU when there is one) or cpu")
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
# the loop

def fit(model, train, val, recipe, data_cfg, ckpt_dir=None, fingerprint="", device="cpu",
        precision="fp32", eval_batch_size=128, live_dir=None, compile=False):
    """Train `model` on cached uint8 tensors and return the per-epoch history.

    train, val: (images uint8 (N, 3, S, S), labels (N,)); train images are the larger cache that
    random resized crops are taken from, val images are at the input size.
    recipe: woof.config.Recipe (epochs, batch_size, lr, ...), already validated.
    ckpt_dir: where the per-epoch checkpoint lives; a checkpoint with the same fingerprint is
    resumed from, any other is ignored. Each history row's elapsed_s counts the whole run, the
    epochs of an interrupted process included.
    live_dir: dvclive logs every epoch there (rank 0), for `dvc exp show` while the run goes on.
    precision: fp32 or bf16 (autocast); compile: torch.compile the training and eval forward."""
    rank, world = rank_and_world()
    run_start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    size = data_cfg["input_size"][-1]
    images, labels = train
    batch = recipe.batch_size
    if batch % world:
        raise ParamError(f"batch_size {batch} is not divisible by {world} processes")
    if only_classifier_trains(model):
        return fit_linear_probe(model, train, val, recipe, data_cfg, device, precision, eval_batch_size, rank)
    steps = len(images) // batch
    if steps == 0:
        raise ParamError(f"batch_size {batch} is larger than the {len(images)} training images")
    model.to(device)
    opt, sched = make_optimizer(model, recipe, steps)
    # An exponential moving average of the weights (recipe.ema_decay; None: off): the EMA is what
    # is evaluated every epoch and what the run returns, so it is what gets saved.
    ema_decay = recipe.ema_decay
    ema = ModelEmaV3(model, decay=ema_decay) if ema_decay else None
    g = torch.Generator().manual_seed(recipe.seed)
    history, start_epoch = [], 0
    ckpt = Path(ckpt_dir) / "last.pt" if ckpt_dir else None
    if ckpt and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["fingerprint"] == fingerprint:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            g.set_state(state["generator"])
            if ema is not None:
                ema.module.load_state_dict(state["ema"])
            torch.set_rng_state(state["torch_rng"])
            history, start_epoch = json.loads(state["history"]), state["epoch"]
            if rank == 0:
                print(f"resuming from {ckpt} after epoch {start_epoch}")
    carried = history[-1]["elapsed_s"] if history else 0.0  # the interrupted processes' time
    live = open_live(live_dir, history) if rank == 0 else None
    forward = compiled(DistributedDataParallel(model) if world > 1 else model, compile, device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    local = batch // world
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        perm = torch.randperm(len(images), generator=g)
        totals = [0.0, 0.0, 0.0]  # loss sum, correct, count
        start = time.perf_counter()
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=rank != 0, unit="step")
        for step in bar:
            # Every rank draws the global batch's indices and crop parameters, then takes its slice:
            # the result is the same whatever the number of processes.
            idx = perm[step * batch:(step + 1) * batch]
            rand = torch.rand(len(idx), 5, generator=g)
            idx, rand = idx[rank * local:(rank + 1) * local], rand[rank * local:(rank + 1) * local]
            x = random_resized_crop_flip(images[idx].to(device), size, rand, recipe.crop_scale, hflip=recipe.hflip)
            x = normalize(x, data_cfg["mean"], data_cfg["std"])  # (B, 3, size, size)
            y = labels[idx].to(device)
            loss, logits = woof.step.train_step(forward, x, y, loss_fn, opt, sched, precision)
            if ema is not None:
                ema.update(model, step=epoch * steps + step)
            totals[0] += loss.item() * len(y)
            totals[1] += (logits.argmax(1) == y).sum().item()
            totals[2] += len(y)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{totals[1] / totals[2]:.3f}")
        train_seconds = time.perf_counter() - start
        loss_sum, correct, count = all_sum(totals, device)
        val_metrics = evaluate_sharded(ema.module if ema else model, val, data_cfg, device, precision,
                                       eval_batch_size, forward=forward if world == 1 and ema is None else None)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / count, "train_acc": correct / count,
                        "val_loss": val_metrics["loss"], "val_acc": val_metrics["top1"],
                        "epoch_seconds": train_seconds, "images_per_s": count / train_seconds,
                        "lr": sched.get_last_lr()[0], "elapsed_s": carried + time.perf_counter() - run_start})
        if rank == 0:
            print(" ".join(f"{k}={v:.4g}" for k, v in history[-1].items()))
            log_epoch(live, history[-1])
            if ckpt:
                save_checkpoint(ckpt, epoch + 1, model, opt, sched, g, history, fingerprint, ema)
    if live:
        live.end()
    if ema is not None:  # the run's result is the average
        model.load_state_dict(ema.module.state_dict())
    return history


def open_live(live_dir, history=()):
    """A dvclive logger in live_dir (None: no logging) that already holds `history`'s epochs:
    after a resume the curves continue from the checkpoint's epochs instead of restarting."""
    if not live_dir:
        return None
    from dvclive import Live
    # Inside a DVC stage the metrics are declared in dvc.yaml: dvclive must neither write its own
    # dvc.yaml nor make an experiment commit.
    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    for row in history:
        log_epoch(live, row)
    return live


def log_epoch(live, row):
    if live is None:
        return
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
        live.log_metric(key, row[key])
    live.next_step()


def evaluate_sharded(model, val, data_cfg, device, precision, batch_size=128, forward=None):
    """Val loss and top-1 with each rank predicting its own shard, summed over ranks.
    forward: what runs the model (its compiled version), model itself by default."""
    rank, world = rank_and_world()
    images, labels = val[0][rank::world], val[1][rank::world]
    logits, _ = predict(model, images, data_cfg, batch_size, device, precision, forward=forward)
    m = classification_metrics(logits, labels)
    loss_sum, correct, count = all_sum([m["loss"] * m["n"], m["top1"] * m["n"], m["n"]], device)
    return {"loss": loss_sum / count, "top1": correct / count}


def save_checkpoint(path, epoch, model, opt, sched, generator, history, fingerprint, ema=None):
    """Everything needed to continue bit-identically; plain tensors and strings only, so that it
    loads with weights_only=True."""
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "generator": generator.get_state(),
             "torch_rng": torch.get_rng_state(), "history": json.dumps(history),
             "fingerprint": fingerprint, **({"ema": ema.module.state_dict()} if ema is not None else {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def fit_linear_probe(model, train, val, recipe, data_cfg, device, precision, eval_batch_size=128, rank=0):
    """Linear probing without running the frozen backbone every epoch: features of the train and
    val images are extracted once (center view, no augmentation), then only the head trains."""
    run_start = time.perf_counter()
    size = data_cfg["input_size"][-1]
    head = model.get_classifier()
    model.to(device)
    start = time.perf_counter()
    def features(x):
        return model.forward_head(model.forward_features(x), pre_logits=True)  # (B, D)
    feats = {}
    for name, (images, labels) in (("train", (center_crop(train[0], size), train[1])), ("val", val)):
        out, _ = predict(model, images, data_cfg, eval_batch_size, device, precision,
                         desc=f"features {name}" if rank == 0 else None, forward=features)
        feats[name] = (out.to(device), labels.to(device))
    extract_seconds = time.perf_counter() - start
    x_train, y_train = feats["train"]
    steps = max(1, len(x_train) // recipe.batch_size)
    opt, sched = make_optimizer(head, recipe, steps)
    g = torch.Generator().manual_seed(recipe.seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    history = []
    for epoch in range(recipe.epochs):
        start = time.perf_counter()
        perm = torch.randperm(len(x_train), generator=g)
        totals = [0.0, 0.0, 0]
        for step in range(steps):
            idx = perm[step * recipe.batch_size:(step + 1) * recipe.batch_size].to(device)
            loss, logits = woof.step.train_step(head, x_train[idx], y_train[idx], loss_fn, opt, sched)
            totals[0] += loss.item() * len(idx)
            totals[1] += (logits.argmax(1) == y_train[idx]).sum().item()
            totals[2] += len(idx)
        seconds = time.perf_counter() - start + (extract_seconds if epoch == 0 else 0.0)
        with torch.no_grad():
            m = classification_metrics(head(feats["val"][0]).cpu(), feats["val"][1].cpu())
        history.append({"epoch": epoch + 1, "train_loss": totals[0] / totals[2],
                        "train_acc": totals[1] / totals[2], "val_loss": m["loss"], "val_acc": m["top1"],
                        "epoch_seconds": seconds, "images_per_s": totals[2] / seconds,
                        "lr": sched.get_last_lr()[0], "elapsed_s": time.perf_counter() - run_start})
    return history


# ---------------------------------------------------------------------------------------------
# bookkeeping

def fingerprint(cfg, method, train_file=None, train_labels=None):
    """Identifies a run: a checkpoint is resumed only by the run it was written by (same params,
    same training file, same training labels: a subset of the file is another run)."""
    h = hashlib.sha256()
    p = cfg.to_dict()
    h.update(json.dumps([p[method], p["model"], p["data"], p["train"]], sort_keys=True, default=str).encode())
    if train_file:
        h.update(sha256_file(train_file).encode())
    if train_labels is not None:
        h.update(train_labels.numpy().tobytes())
    return h.hexdigest()


def peak_memory_mb(device):
    """GPU: peak allocated by tensors. CPU: peak resident set size of the process (includes the
    cached dataset), the number `time -v` would report."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_metrics(history, model, device, world_size=1):
    """The flat metrics of a training run (metrics/train_<method>.json). train_minutes: the
    training loop's wall-clock with its per-epoch val passes, over every process of a resumed run."""
    last = history[-1]
    minutes = last["elapsed_s"] / 60
    seconds = sum(h["epoch_seconds"] for h in history)
    cuda = str(device).startswith("cuda")
    return {"epochs": len(history), "world_size": world_size, "hardware": machine(device),
            "train_minutes": minutes,
            "train_images_per_s": sum(h["epoch_seconds"] * h["images_per_s"] for h in history) / seconds,
            **parameter_counts(model), "peak_memory_mb": peak_memory_mb(device),
            "peak_memory_kind": "cuda_allocated" if cuda else "rss",
            **{f"final_{k}": last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}}


def parameter_counts(model):
    """The record's three parameter columns, from the one counter (woof.models.count_parameters)."""
    c = count_parameters(model)
    return {"trainable_params": c["trainable"], "total_params": c["total"], "trainable_pct": c["trainable_pct"]}
