"""Parameter / FLOP / memory accounting, checked on the classic LeNet-5 exercise, a small ViT and
the cost stage on a ResNet; plus the woof.models helpers the accounting builds on."""
import json
import runpy

import pytest
import timm
import torch
import yaml
from torch import nn

from conftest import ROOT, LeNet5
from woof import analysis, config
from woof.models import count_parameters, create_model, num_blocks
from woof.step import Method

RECIPE = config.load(ROOT / "params.yaml").full  # the optimiser's settings: they change no count

FULL, PROBE, LORA = (analysis.LENET_METHODS[k] for k in ("full", "linear_probe", "lora"))


def counts(model):
    c = count_parameters(model)
    return c["total"], c["trainable"]


def test_lenet_parameter_counts():
    assert counts(FULL.prepare(LeNet5())) == (44_426, 44_426)
    assert counts(PROBE.prepare(LeNet5())) == (44_426, 850)
    # 2*(256+120) + 2*(120+84) + 2*(84+10): adapters only, the base stays frozen.
    assert counts(LORA.prepare(LeNet5())) == (44_426 + 1_348, 1_348)


def test_linear_flops():
    layer = nn.Linear(32, 16)
    x = torch.randn(4, 32)
    assert analysis.count_flops(lambda: layer(x)) == 2 * 4 * 32 * 16


def test_cost_table_on_lenet():
    methods = {"full": FULL, "linear_probe": PROBE, "lora": LORA}
    table = analysis.cost_table(LeNet5, methods, batch_size=8, image_size=28, recipe=RECIPE, in_chans=1)
    full, probe, lora = table["full"], table["linear_probe"], table["lora"]
    assert full["total_params"] == 44_426 and probe["trainable_params"] == 850
    # A frozen backbone skips weight gradients and the backward below fc3.
    assert probe["train_flops"] < full["train_flops"]
    assert probe["inference_flops"] == full["inference_flops"] > 0
    for row in table.values():
        assert row["optimizer_mb"] * analysis.MB == pytest.approx(8 * row["trainable_params"], abs=1)
        assert row["grads_mb"] * analysis.MB == pytest.approx(4 * row["trainable_params"], abs=1)
        assert row["weights_mb"] * analysis.MB == pytest.approx(4 * row["total_params"], rel=1e-3)
        assert row["activations_mb"] > 0
        # The peak holds at least the weights, the optimiser state and the gradients.
        assert row["measured_peak_mb"] >= row["weights_mb"] + row["optimizer_mb"]
    assert probe["activations_mb"] < full["activations_mb"]
    assert lora["trainable_params"] == 1_348 and lora["rank"] == 2
    assert probe["train_flops"] < lora["train_flops"] < full["train_flops"]
    assert lora["inference_flops"] == full["inference_flops"]  # merged for inference
    rows = [line.split("|")[1].strip() for line in analysis.format_table(table).splitlines()[2:]]
    assert rows == ["full", "linear_probe", "lora"]


def test_peak_tensor_bytes_replays_allocations_and_frees():
    kept = torch.zeros(256)  # 1 KiB alive before the call, counted once although passed twice

    def fn():
        a = torch.zeros(1024)  # 4 KiB
        b = torch.zeros(2048)  # 8 KiB
        del a
        c = torch.zeros(512)  # 2 KiB once a is freed: the peak stays at 12 KiB
        return b, c
    assert analysis.peak_tensor_bytes(fn, [kept, kept[:10]]) == 1024 + 4096 + 8192


def test_freeze_blocks_on_tiny_vit():
    # A 4-block ViT-Tiny keeps the test fast; the accounting does not depend on depth.
    make = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,  # noqa: E731
                                     depth=4, num_classes=10)
    methods = {"full": Method(), "frozen": Method(freeze_blocks=2), "linear_probe": Method(("head",))}
    table = analysis.cost_table(make, methods, batch_size=2, image_size=32, recipe=RECIPE)
    full, frozen, probe = table["full"], table["frozen"], table["linear_probe"]
    assert probe["trainable_params"] == 192 * 10 + 10
    assert probe["trainable_params"] < frozen["trainable_params"] < full["trainable_params"]
    assert probe["train_flops"] < frozen["train_flops"] < full["train_flops"]
    assert full["inference_flops"] == frozen["inference_flops"]
    assert frozen["freeze_blocks"] == 2


def test_cost_stage_on_resnet18(tmp_path):
    """cost.freeze_blocks is set for ViT-Tiny's 12 blocks; a ResNet has 4 stages: clamp, not crash.
    LoRA goes on the ResNet's 3x3 convolutions."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["name"], params["data"]["image_size"] = "resnet18", 32
    params["lora"].update(targets=r"layer\d\.\d\.conv[12]", rank=2, alpha=4, trainable=["head"])
    params["cost"].update(batch_size=2, freeze_blocks=6)
    assert analysis.methods_from_params(config.parse(params), blocks=4)["frozen"] == Method(freeze_blocks=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "cost.json"
    # runpy: the stage script as dvc runs it, without needing the repository root on sys.path
    runpy.run_path(str(ROOT / "stages" / "cost.py"))["main"](str(tmp_path / "params.yaml"), str(out))
    table = json.loads(out.read_text())
    assert set(table) == {"full", "linear_probe", "lora", "frozen", "lenet5", "blocks"}
    assert table["blocks"] == 4  # resnet18's stages: the freezing curve's far end in the paper
    lenet = table["lenet5"]  # the worked example, the same whatever the model
    assert lenet["full"]["total_params"] == 44_426 and lenet["lora"]["trainable_params"] == 1_348
    full, probe, lora, frozen = (table[k] for k in ("full", "linear_probe", "lora", "frozen"))
    assert full["total_params"] == 11_181_642  # resnet18 with a 10-class fc
    assert probe["trainable_params"] == 512 * 10 + 10
    assert frozen["freeze_blocks"] == 4 and frozen["trainable_params"] == probe["trainable_params"]
    # 16 convolutions (2 per BasicBlock, 8 blocks) with rank-2 adapters, plus the fc head.
    assert lora["trainable_params"] > probe["trainable_params"] and lora["rank"] == 2
    assert lora["inference_flops"] == full["inference_flops"]
    assert probe["train_flops"] < lora["train_flops"] < full["train_flops"]


def test_methods_without_numbered_blocks_have_no_frozen_row():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["lora"].update(targets="fc1", rank=2, alpha=2)
    params["cost"]["freeze_blocks"] = 6
    assert num_blocks(LeNet5()) == 0
    assert set(analysis.methods_from_params(config.parse(params), blocks=0)) == {"full", "linear_probe", "lora"}
    params["cost"]["freeze_blocks"] = None  # null: half the blocks
    assert analysis.methods_from_params(config.parse(params), blocks=12)["frozen"] == Method(freeze_blocks=6)


# ---- woof.models: the model factory the cost stage uses

def test_create_model_rejects_classes_without_an_imagenet_row(random_weights):
    with pytest.raises(ValueError, match=r"positions \[1\]"):
        create_model("vit_tiny_patch16_224", img_size=32, weights=random_weights, class_indices=[5, -1])


def test_create_model_retries_without_img_size_only_for_models_without_it(monkeypatch):
    assert num_blocks(create_model("resnet18", img_size=32, pretrained=False)) == 4  # CNN: img_size dropped
    calls = []

    def broken(*args, **kwargs):
        calls.append(kwargs)
        raise TypeError("something else went wrong")
    monkeypatch.setattr(timm, "create_model", broken)
    with pytest.raises(TypeError, match="something else"):
        create_model("vit_tiny_patch16_224", img_size=32, pretrained=False)
    assert len(calls) == 1  # surfaced, not retried
