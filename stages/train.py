"""Stages train_full and train_lora: python -m stages.train full|lora

Runs unchanged under `torchrun --nproc_per_node=N -m stages.train ...` (DDP)."""
import shutil
import sys
import time
from pathlib import Path

import torch.distributed as dist

from woof import lora
from woof.data import load_classes, load_split
from woof.io import load_params, write_csv, write_json
from woof.models import data_config, save_model
from woof.train import build_model, fingerprint, fit, init_distributed, parameter_counts, peak_memory_mb


def main(method):
    if method not in ("full", "lora"):
        raise SystemExit(f"usage: python -m stages.train full|lora (got {method!r})")
    params = load_params()
    cfg, run = params[method], params.get("train", {})
    rank, world, device = init_distributed(run.get("device", "auto"))
    classes = load_classes("data/prepared/classes.json")
    train, val = load_split("data/prepared/train.safetensors"), load_split("data/prepared/val.safetensors")
    model = build_model(method, params, classes)
    counts = parameter_counts(model)
    dcfg = data_config(model, params["data"]["image_size"])
    out, ckpt_dir = Path("models") / method, Path("models") / method / "checkpoint"
    start = time.perf_counter()
    history = fit(model, train, val, cfg, dcfg, ckpt_dir=ckpt_dir, device=device,
                  precision=run.get("precision", "fp32"),
                  fingerprint=fingerprint(params, method, "data/prepared/train.safetensors"))
    minutes = (time.perf_counter() - start) / 60
    if rank == 0:
        config = {"model": params["model"]["name"], "num_classes": len(classes),
                  "image_size": params["data"]["image_size"], "method": method,
                  "classes": [c["wnid"] for c in classes], "params": cfg}
        model = model.cpu()
        metrics = {"epochs": cfg["epochs"], "precision": run.get("precision", "fp32"), "world_size": world,
                   "train_minutes": minutes,
                   "train_images_per_s": sum(h["epoch_seconds"] * h["images_per_s"] for h in history)
                   / sum(h["epoch_seconds"] for h in history),
                   **counts, "peak_memory_mb": peak_memory_mb(device)}
        if method == "lora":
            lora.save_lora(model, out / "adapter.safetensors")
            metrics["adapter_mb"] = (out / "adapter.safetensors").stat().st_size / 2**20
            model = lora.merge_lora(model)
        save_model(model, out, config)
        metrics["model_mb"] = (out / "model.safetensors").stat().st_size / 2**20
        last = history[-1]
        metrics.update({f"final_{k}": last[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")})
        write_json(f"metrics/train_{method}.json", metrics)
        write_csv(f"plots/train_{method}.csv", history)
        # The run is complete: the resume checkpoint has served its purpose.
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
