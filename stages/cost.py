"""cost stage: parameters, FLOPs and memory of each fine-tuning method -> metrics/cost.json.

Counting needs only the architecture, so the model is built with random weights (no download,
no data): full fine-tuning, linear probing, LoRA at the configured rank and targets, and frozen-k
(cost.freeze_blocks, else half the blocks, at most all of them). Counted on the CPU, whatever the
training device: the numbers are the architecture's. Logic and definitions in woof/analysis.py.
"""
import sys

import torch

from woof import analysis, config
from woof.errors import capped, run_stage, warn
from woof.io import write_json
from woof.models import check_image_size, check_method, create_model, fused_form, num_blocks
from woof.step import Method


def main(params_path="params.yaml", out="metrics/cost.json"):
    cfg = config.load(params_path)
    name, image_size = cfg.model.name, cfg.data.image_size
    check_image_size(name, image_size)
    fused = fused_form(cfg.model)  # the form the pipeline trains (MobileOne: fused convolutions)
    check_method(name, Method.of(cfg.lora), "lora", fused)  # the LoRA row: its params as train_lora would check them
    torch.manual_seed(0)

    def factory():
        return create_model(name, num_classes=10, img_size=image_size, pretrained=False, fused=fused)

    blocks = num_blocks(factory())
    if cfg.cost.freeze_blocks and not blocks:
        warn(f"cost.freeze_blocks={cfg.cost.freeze_blocks}, but {name} has no numbered blocks: no frozen-k row")
    elif cfg.cost.freeze_blocks:
        capped("cost.freeze_blocks", cfg.cost.freeze_blocks, blocks, f"{name}'s blocks")  # methods_from_params caps it
    methods = analysis.methods_from_params(cfg, blocks=blocks)
    table = analysis.cost_table(factory, methods, batch_size=cfg.cost.batch_size, image_size=image_size,
                                recipe=cfg.full)
    # The worked example: LeNet-5 on one 28x28 grey image, small enough to check by hand.
    table["lenet5"] = analysis.cost_table(analysis.LeNet5, analysis.LENET_METHODS, batch_size=1, image_size=28,
                                          recipe=cfg.full, in_chans=1)
    table["blocks"] = blocks  # the model's depth: the freezing curve's far end (the linear probe)
    write_json(out, table)
    print(analysis.format_table({k: v for k, v in table.items() if k not in ("lenet5", "blocks")}))
    print("LeNet-5 (batch 1, 28x28 grey):\n" + analysis.format_table(table["lenet5"]))


if __name__ == "__main__":
    run_stage(main, *sys.argv[1:])
