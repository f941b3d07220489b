"""Stages train_full and train_lora: python -m stages.train full|lora

Runs unchanged under `torchrun --nproc_per_node=N -m stages.train ...` (DDP)."""
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from woof import config
from woof.data import load_classes, load_split, sha256_file
from woof.errors import ParamError, run_stage
from woof.io import write_csv, write_json
from woof.models import pretrained_weights, save_model
from woof.train import init_distributed, train_method

TRAIN = "data/prepared/train.safetensors"


def main(method):
    if method not in ("full", "lora"):
        raise ParamError(f"usage: python -m stages.train full|lora (got {method!r})")
    cfg = config.load()  # data.image_size was checked against the model by preprocess
    rank, world, device = init_distributed(cfg.train.device)
    classes = load_classes("data/prepared/classes.json")
    train, val = load_split(TRAIN), load_split("data/prepared/val.safetensors")  # never test
    # The resume checkpoint lives outside the DVC output: outputs are deleted before a stage runs,
    # and `persist: true` would switch off DVC's run-cache for the stage.
    out, ckpt_dir = Path("models") / method, Path("checkpoints") / method
    model, history, metrics = train_method(method, cfg, classes, train, val, ckpt_dir, device, TRAIN,
                                           live_dir=f"dvclive/train_{method}")
    if rank == 0:
        weights = pretrained_weights(cfg.model)  # which bytes the run started from
        metrics["pretrained_weights_sha256"] = sha256_file(weights) if weights else "timm hub default"
        model = model.cpu()
        saved = {"model": cfg.model.name, "num_classes": len(classes), "image_size": cfg.data.image_size,
                 "method": method, "classes": [c["wnid"] for c in classes], "params": asdict(cfg.method(method))}
        if method == "lora":
            from woof import lora  # not imported on the full path: lora.py is no dep of train_full
            lora.save_lora(model, out / "adapter.safetensors")
            metrics["adapter_mb"] = (out / "adapter.safetensors").stat().st_size / 2**20
            model = lora.merge_lora(model)
        save_model(model, out, saved)
        metrics["model_mb"] = (out / "model.safetensors").stat().st_size / 2**20
        write_json(f"metrics/train_{method}.json", metrics)
        write_csv(f"plots/train_{method}.csv", history)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run is complete: nothing to resume
        if ckpt_dir.parent.is_dir() and not any(ckpt_dir.parent.iterdir()):
            ckpt_dir.parent.rmdir()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run_stage(main, sys.argv[1] if len(sys.argv) > 1 else "")
