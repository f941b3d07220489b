"""Stages train_full and train_lora: python -m stages.train full|lora

Runs unchanged under `torchrun --nproc_per_node=N -m stages.train ...` (DDP)."""
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from woof import config
from woof.data import check_splits, load_classes, load_split, sha256_file
from woof.errors import ParamError, capped, run_stage
from woof.io import write_json
from woof.models import check_method, check_weights_file, only_classifier_trains, pretrained_weights, save_model
from woof.step import Method
from woof.train import init_distributed, train_method

TRAIN = "data/prepared/train.safetensors"


def main(method):
    if method not in ("full", "lora"):
        raise ParamError(f"usage: python -m stages.train full|lora (got {method!r})")
    cfg = config.load()  # data.image_size was checked against the model by preprocess
    recipe = cfg.method(method)
    # Every param and input is checked before the model is built and the first step runs.
    weights = pretrained_weights(cfg.model)  # which bytes the run starts from
    pretrained = getattr(recipe, "pretrained", True)
    fused = bool(weights) and pretrained and check_weights_file(weights, cfg.model.name)
    probe = only_classifier_trains(check_method(cfg.model.name, Method.of(recipe), method, fused))
    rank, world, device = init_distributed(cfg.train.device)
    classes = load_classes("data/prepared/classes.json")
    train, val = load_split(TRAIN), load_split("data/prepared/val.safetensors")  # never test
    check_splits({"train": train, "val": val}, len(classes), cfg.data.image_size)
    if probe:  # the linear probe's batches are of cached features: one batch of them all at most
        capped(f"{method}.batch_size", recipe.batch_size, len(train[1]), f"the training images in {TRAIN}")
    elif recipe.batch_size > len(train[1]):
        raise ParamError(f"{method}.batch_size={recipe.batch_size} is more than the {len(train[1])} training images "
                         f"in {TRAIN}: use a smaller {method}.batch_size (or a larger data.train_fraction)")
    # The resume checkpoint lives outside the DVC output: outputs are deleted before a stage runs,
    # and `persist: true` would switch off DVC's run-cache for the stage.
    out, ckpt_dir = Path("models") / method, Path("checkpoints") / method
    model, history, metrics = train_method(method, cfg, classes, train, val, ckpt_dir, device, TRAIN,
                                           live_dir=f"dvclive/train_{method}")
    if rank == 0:
        metrics["pretrained_weights_sha256"] = sha256_file(weights) if weights else "timm hub default"
        model = model.cpu()
        saved = {"model": cfg.model.name, "num_classes": len(classes), "image_size": cfg.data.image_size,
                 "method": method, "classes": [c["wnid"] for c in classes], "params": asdict(cfg.method(method)),
                 **({"fused": True} if fused else {})}  # the fused form's keys (MobileOne) load into it only
        if method == "lora":
            from woof import lora  # not imported on the full path: lora.py is no dep of train_full
            lora.save_lora(model, out / "adapter.safetensors")
            metrics["adapter_mb"] = (out / "adapter.safetensors").stat().st_size / 2**20
            model = lora.merge_lora(model)
        save_model(model, out, saved)
        metrics["model_mb"] = (out / "model.safetensors").stat().st_size / 2**20
        write_json(f"metrics/train_{method}.json", metrics)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run is complete: nothing to resume
        if ckpt_dir.parent.is_dir() and not any(ckpt_dir.parent.iterdir()):
            ckpt_dir.parent.rmdir()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run_stage(main, sys.argv[1] if len(sys.argv) > 1 else "")
