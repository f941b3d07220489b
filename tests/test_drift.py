"""How far fine-tuning moved the weights, on models with known changes."""
import pytest
import torch
from torch import nn

from woof import drift


def test_relative_change_by_hand():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    b = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b[0].weight.mul_(1.1)   # 10 % larger: the change is exactly 0.1 of the norm
        b[1].bias.add_(5.0)     # biases are not weight matrices: ignored
    changes = drift.relative_changes(a, b)
    assert set(changes) == {"0.weight", "1.weight"}
    assert changes["0.weight"] == pytest.approx(0.1, rel=1e-5) and changes["1.weight"] == 0.0


def test_summary_groups_blocks_and_keeps_the_head_apart():
    s = drift.summarize({"blocks.0.attn.qkv.weight": 0.2, "blocks.0.mlp.fc1.weight": 0.4,
                         "blocks.1.attn.qkv.weight": 0.1, "patch_embed.proj.weight": 0.3, "head.weight": 2.0})
    assert s["per_group"] == {"block 0": pytest.approx(0.3), "block 1": 0.1, "patch_embed": 0.3}
    assert s["overall"] == pytest.approx(0.25) and s["max"] == 0.4 and s["head"] == 2.0 and s["matrices"] == 4


def test_lora_moves_only_its_targets(tmp_path):
    from woof.lora import apply_lora, merge_lora
    from woof.models import create_model
    torch.manual_seed(0)
    base = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, pretrained=False)
    tuned = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, pretrained=False)
    tuned.load_state_dict(base.state_dict())
    apply_lora(tuned, r"blocks\.0\.attn\.qkv", rank=2, alpha=4)
    with torch.no_grad():
        tuned.blocks[0].attn.qkv.lora_B.normal_()
    moved = drift.drift(base, {"lora": merge_lora(tuned)})["lora"]
    assert moved["per_group"]["block 0"] > 0 and moved["per_group"]["block 1"] == 0
    drift.plot({"lora": moved}, tmp_path / "drift.png")
    assert (tmp_path / "drift.png").read_bytes()[:4] == b"\x89PNG"
