"""Attention maps on small random-weight ViTs (no download, a few seconds on CPU)."""
import json
import runpy
from pathlib import Path

import pytest
import timm
import torch
import yaml

from woof import attention

SIZE = 64  # 4 x 4 patches of 16 px


def vit(seed, num_classes=5):
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes,
                              img_size=SIZE)
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return vit(0), vit(1)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))  # (B, 3, H, W)


def assert_maps(maps, shape):
    assert maps.shape == shape
    assert torch.isfinite(maps).all()
    assert (maps >= 0).all() and maps.amax() > 0
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(shape[:-2]))


def test_fused_attention_hides_the_matrix_from_hooks(models, images):
    # The regression this module guards against: timm creates models with the fused path on, where
    # softmax(QK^T) never exists and attn_drop is never called, so naive hooks see nothing.
    model = models[0]
    assert all(b.attn.fused_attn for b in model.blocks), "timm default changed: fused path is off"
    seen = []
    hooks = [b.attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(o)) for b in model.blocks]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    assert seen == []


def test_capture_switches_fused_attention_off_and_back(models, images):
    model = models[0]
    with torch.no_grad(), attention.capture_attention(model) as attns:
        model(images)
    assert len(attns) == len(model.blocks)
    N = 1 + (SIZE // 16) ** 2
    assert attns[0].shape == (2, 3, N, N)  # (B, heads, N, N)
    torch.testing.assert_close(attns[0].sum(-1), torch.ones(2, 3, N))  # softmax rows
    assert all(b.attn.fused_attn for b in model.blocks)  # restored


def test_cls_attention(models, images):
    maps = attention.cls_attention(models[0], images)
    assert_maps(maps, (2, 3, 4, 4))  # (B, heads, h, w)
    assert_maps(maps.mean(1), (2, 4, 4))
    other = attention.cls_attention(models[1], images)
    assert not torch.allclose(maps, other, atol=1e-4)  # different models, different maps
    assert not torch.allclose(maps[0], maps[1], atol=1e-4)  # different images, different maps


def test_gradient_rollout(models, images):
    model = models[0]
    rollout = attention.gradient_rollout(model, images, torch.tensor([0, 1]))
    assert_maps(rollout, (2, 4, 4))
    other_label = attention.gradient_rollout(model, images, torch.tensor([2, 3]))
    assert not torch.allclose(rollout, other_label, atol=1e-4)  # class-specific
    other_model = attention.gradient_rollout(models[1], images, torch.tensor([0, 1]))
    assert not torch.allclose(rollout, other_model, atol=1e-4)
    assert all(p.grad is None for p in model.parameters())  # no side effect on training state


def test_prefix_tokens():
    # registers: CLS at 0, then 4 register tokens, then patches
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=SIZE,
                              reg_tokens=4).eval()
    assert model.num_prefix_tokens == 5
    x = torch.randn(1, 3, SIZE, SIZE)
    assert_maps(attention.cls_attention(model, x), (1, 3, 4, 4))
    assert_maps(attention.gradient_rollout(model, x, torch.tensor([1])), (1, 4, 4))


def test_metrics():
    uniform = torch.full((2, 3, 10, 10), 0.01)
    assert attention.entropy(uniform).allclose(torch.ones(2, 3))
    assert attention.center_mass(uniform.mean(1)).allclose(torch.full((2,), 0.5))  # area 0.5
    peak = torch.zeros(2, 10, 10)
    peak[:, 5, 5] = 1
    assert attention.entropy(peak).allclose(torch.zeros(2), atol=1e-6)
    assert attention.center_mass(peak).allclose(torch.ones(2))
    a = torch.rand(2, 10, 10)
    assert attention.correlation(a, 2 * a + 1).allclose(torch.ones(2))
    assert attention.correlation(a, -a).allclose(-torch.ones(2))

    cls_maps = {"pretrained": uniform, "full": uniform.clone()}
    cls_maps["full"][:, :, 0, 0] += 0.5
    cls_maps["full"] /= 1.5  # still sums to 1, but peaked: lower entropy
    m = attention.attention_metrics(cls_maps, {"pretrained": peak, "full": peak})
    assert set(m) >= {"pretrained", "full", "corr", "rollout_corr"}
    assert m["pretrained"]["cls_entropy"] > m["full"]["cls_entropy"]
    assert m["rollout_corr"]["pretrained_full"] == pytest.approx(1.0)


def test_choose_images_spread_over_classes():
    labels = torch.arange(100) % 10
    idx = attention.choose_images(labels, 8, seed=0)
    assert len(set(idx)) == 8 and len(set(labels[idx].tolist())) == 8
    assert idx == attention.choose_images(labels, 8, seed=0)  # seeded
    assert idx != attention.choose_images(labels, 8, seed=1)
    idx = attention.choose_images(labels, 25, seed=0)  # more images than classes: 2-3 per class
    assert sorted(torch.bincount(labels[idx]).tolist()) == [2] * 5 + [3] * 5
    assert len(attention.choose_images(labels[:3], 8)) == 3


def test_attention_grid_writes_the_format_its_suffix_names(tmp_path, models, images):
    uint8 = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    maps = {name: attention.cls_attention(m, images).mean(1) for name, m in zip(("a", "b"), models)}
    names = ["dingo, warrigal", "beagle"]
    preds = {"a": [("beagle", 0.5), ("beagle", 0.9)], "b": [("dingo, warrigal", 0.7), ("dingo", 0.3)]}
    for name, magic in (("grid.png", b"\x89PNG\r\n\x1a\n"), ("grid.jpg", b"\xff\xd8\xff")):
        attention.attention_grid(tmp_path / name, uint8, maps, names, preds, title="test")
        assert (tmp_path / name).read_bytes()[:len(magic)] == magic
    rgb = attention.overlay(uint8[0], maps["a"][0])
    assert rgb.shape == (SIZE, SIZE, 3) and 0 <= rgb.min() and rgb.max() <= 1


def test_unsupported():
    assert attention.unsupported(vit(0)) is None
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=3)
    assert attention.unsupported(cnn) == "has no attention layers"
    gap = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=SIZE,
                            class_token=False, global_pool="avg")
    assert attention.unsupported(gap) == "has no CLS token"


def test_stage_skips_a_cnn_backbone(tmp_path, monkeypatch):
    """model.name=resnet18 (the backbone comparison): no maps, but every declared output and exit 0."""
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["model"].update(name="resnet18", weights=None)
    params["data"]["image_size"], params["attention"]["num_images"] = 32, 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # no data or models: the stage must not need them to skip
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "stages" / "visualize_attention.py"),
                   run_name="__main__")
    assert json.loads((tmp_path / "metrics" / "attention.json").read_text()) == \
        {"skipped": "resnet18 has no attention layers"}
    for name in ("attention_cls.jpg", "attention_rollout.jpg"):
        assert (tmp_path / "plots" / name).read_bytes()[:3] == b"\xff\xd8\xff"
