"""Parameter / FLOP / memory accounting, checked on the classic LeNet-5 exercise."""
import json

import pytest
import torch
from torch import nn

from woof import analysis


class LeNet5(nn.Module):
    """28x28 grey input; 44,426 parameters."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)  # (B, 6, 24, 24)
        self.conv2 = nn.Conv2d(6, 16, 5)  # (B, 16, 8, 8)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(256, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))  # (B, 6, 12, 12)
        x = self.pool(torch.relu(self.conv2(x)))  # (B, 16, 4, 4)
        x = x.flatten(1)  # (B, 256)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


FULL = {}
PROBE = {"trainable": ["fc3"]}
LORA = {"lora": {"targets": ["fc1", "fc2", "fc3"], "rank": 2, "alpha": 2, "trainable": ()}}


def test_lenet_parameter_counts():
    full = analysis.count_parameters(analysis.prepare(LeNet5(), FULL))
    assert full == {"total": 44_426, "trainable": 44_426}
    probe = analysis.count_parameters(analysis.prepare(LeNet5(), PROBE))
    assert probe == {"total": 44_426, "trainable": 850}


def test_lenet_lora_parameter_counts():
    pytest.importorskip("woof.lora")
    lora = analysis.count_parameters(analysis.prepare(LeNet5(), LORA))
    # 2*(256+120) + 2*(120+84) + 2*(84+10): adapters only, the base stays frozen.
    assert lora == {"total": 44_426 + 1_348, "trainable": 1_348}


def test_linear_flops():
    layer = nn.Linear(32, 16)
    x = torch.randn(4, 32)
    assert analysis.count_flops(lambda: layer(x)) == 2 * 4 * 32 * 16


def test_cost_table_on_lenet(tmp_path):
    methods = {"full": FULL, "linear_probe": PROBE}
    try:
        import woof.lora  # noqa: F401
        methods["lora"] = LORA
    except ImportError:
        pass
    table = analysis.cost_table(LeNet5, methods, batch_size=8, image_size=28, in_chans=1)
    full, probe = table["full"], table["linear_probe"]
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
    if "lora" in table:
        assert table["lora"]["trainable_params"] == 1_348
        assert table["lora"]["rank"] == 2
        assert probe["train_flops"] < table["lora"]["train_flops"] < full["train_flops"]
        assert table["lora"]["inference_flops"] == full["inference_flops"]  # merged for inference
    analysis.write_cost(tmp_path / "cost.json", table)
    assert json.loads((tmp_path / "cost.json").read_text())["full"]["total_params"] == 44_426
    assert "| full |" in analysis.format_table(table)


def test_live_tensor_memory_counts_allocations():
    with analysis.LiveTensorMemory() as mem:
        a = torch.zeros(1024)  # 4 KiB
        b = torch.zeros(2048)  # 8 KiB
        del a
        c = torch.zeros(512)  # 2 KiB
    assert mem.peak == 4096 + 8192
    assert mem.current == 8192 + 2048
    del b, c


def test_freeze_blocks_on_tiny_vit():
    import timm
    # A 4-block ViT-Tiny keeps the test fast; the accounting does not depend on depth.
    make = lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,  # noqa: E731
                                     depth=4, num_classes=10)
    methods = {"full": {}, "frozen": {"freeze_blocks": 2}, "linear_probe": {"trainable": ["head"]}}
    table = analysis.cost_table(make, methods, batch_size=2, image_size=32)
    full, frozen, probe = table["full"], table["frozen"], table["linear_probe"]
    assert probe["trainable_params"] == 192 * 10 + 10
    assert probe["trainable_params"] < frozen["trainable_params"] < full["trainable_params"]
    assert probe["train_flops"] < frozen["train_flops"] < full["train_flops"]
    assert full["inference_flops"] == frozen["inference_flops"]
    assert frozen["freeze_blocks"] == 2
