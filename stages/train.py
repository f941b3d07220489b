"""Stages train_full and train_lora: python -m stages.train full|lora

Runs unchanged under `torchrun --nproc_per_node=N -m stages.train ...` (DDP)."""
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from woof.data import load_classes, load_split, sha256_file
from woof.io import load_params, write_csv, write_json
from woof.models import pretrained_weights, save_model
from woof.train import init_distributed, train_method

TRAIN = "data/prepared/train.safetensors"


def main(method):
    if method not in ("full", "lora"):
        raise SystemExit(f"usage: python -m stages.train full|lora (got {method!r})")
    params = load_params()
    cfg = params[method]
    rank, world, device = init_distributed(params["train"]["device"])
    classes = load_classes("data/prepared/classes.json")
    train, val = load_split(TRAIN), load_split("data/prepared/val.safetensors")  # never test
    # The resume checkpoint lives outside the DVC output: outputs are deleted before a stage runs,
    # and `persist: true` would switch off DVC's run-cache for the stage.
    out, ckpt_dir = Path("models") / method, Path("checkpoints") / method
    model, history, metrics = train_method(method, params, classes, train, val, ckpt_dir, device, TRAIN)
    if rank == 0:
        weights = pretrained_weights(params["model"])  # which bytes the run started from
        metrics["pretrained_weights_sha256"] = sha256_file(weights) if weights else "timm hub default"
        model = model.cpu()
        config = {"model": params["model"]["name"], "num_classes": len(classes),
                  "image_size": params["data"]["image_size"], "method": method,
                  "classes": [c["wnid"] for c in classes], "params": cfg}
        if method == "lora":
            from woof import lora  # not imported on the full path: lora.py is no dep of train_full
            lora.save_lora(model, out / "adapter.safetensors")
            metrics["adapter_mb"] = (out / "adapter.safetensors").stat().st_size / 2**20
            model = lora.merge_lora(model)
        save_model(model, out, config)
        metrics["model_mb"] = (out / "model.safetensors").stat().st_size / 2**20
        write_json(f"metrics/train_{method}.json", metrics)
        write_csv(f"plots/train_{method}.csv", history)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run is complete: nothing to resume
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
