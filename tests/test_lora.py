"""woof.lora: exactness at init, freezing, merging, checkpoints, parameter counts, PEFT parity,
input validation, and the fused autograd function against the textbook two-branch formulation;
the same for DoRA."""
import ast
import copy
import functools

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import LeNet5
from woof import lora
from woof.lora import (DoRAConv2d, DoRALinear, LoRAConv2d, LoRALinear, _MergedDoRAConv2d, _MergedDoRALinear,
                       _MergedLoRAConv2d, _MergedLoRALinear, is_lora_name, load_lora, load_lora_state_dict,
                       lora_modules, lora_state_dict, merge_lora, save_lora, set_lora_enabled)
from woof.models import count_parameters, only_classifier_trains, set_trainable, trainable_prefixes


def apply_lora(model, targets, trainable=("head",), **kwargs):
    """The library as woof calls it (woof.step.Method): `trainable` names resolved by
    woof.models.trainable_prefixes, where "head" also means timm's classifier."""
    return lora.apply_lora(model, targets, trainable=trainable_prefixes(model, trainable), **kwargs)

VIT_TARGETS = r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
QKV = r"blocks\.\d+\.attn\.qkv"
RESNET_TARGETS = r"layer\d\.\d\.conv[12]"


@functools.cache
def _vit(img_size):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=img_size)


@functools.cache
def _resnet():
    torch.manual_seed(0)
    # zero_init_last=False: timm zeroes each block's last BatchNorm scale, which would zero every conv gradient
    return timm.create_model("resnet18", pretrained=False, num_classes=10, zero_init_last=False)


def vit(img_size=32):  # random weights, built once (the init is the slow part), a fresh copy per call
    return copy.deepcopy(_vit(img_size))


def resnet():
    return copy.deepcopy(_resnet())


MODELS = {"vit": (vit, VIT_TARGETS), "resnet": (resnet, RESNET_TARGETS)}


def images(n=2, size=32, channels=3, seed=1):  # 32 px: 4 patches for the ViT, 1x1 at the ResNet's end
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model, std=0.05, seed=2):
    """B starts at zero, which would make merge tests vacuous: give every adapter a real update
    (and every DoRA magnitude a move of a few per cent)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * std)
            if hasattr(m, "lora_magnitude"):
                m.lora_magnitude.mul_(1 + torch.randn(m.lora_magnitude.shape, generator=g) * std)


def set_fused(model, fused):
    for _, m in lora_modules(model):
        m.fused = fused


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m)) for n, m in model.named_modules()],
            {n: p.requires_grad for n, p in model.named_parameters()})


def assert_same_snapshot(a, b):
    assert a[0].keys() == b[0].keys()
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1] == b[1] and a[2] == b[2]


# ---- exactness, freezing, training

@pytest.mark.parametrize("name", MODELS)
def test_identical_at_init_frozen_base_and_switch_off_after_training(name):
    make, targets = MODELS[name]
    model = make().eval()  # eval: ResNet's BatchNorm statistics are buffers, they would move in train mode
    x = images()
    with torch.no_grad():
        original_out, original_features = model(x), model.forward_features(x)
    base = {n: p.clone() for n, p in model.named_parameters()}
    apply_lora(model, targets, rank=4, alpha=8)
    with torch.no_grad():
        assert torch.equal(model(x), original_out)

    head = model.pretrained_cfg["classifier"]  # "head" for the ViT, "fc" for the ResNet
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)  # all of them: freezing must hold anyway
    labels = torch.tensor([3, 7])
    for _ in range(20):
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    for n, p in model.named_parameters():
        if is_lora_name(n) or n.startswith(head + "."):
            assert p.requires_grad and not torch.equal(p, base.get(n, torch.zeros_like(p))), n
        else:
            assert not p.requires_grad and p.grad is None and torch.equal(p, base[n]), n

    set_lora_enabled(model, False)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), original_features)
        for n, p in model.named_parameters():  # with the untrained head back: the original model's logits
            if n.startswith(head + "."):
                p.copy_(base[n])
        assert torch.equal(model(x), original_out)
        set_lora_enabled(model, True)
        assert not torch.equal(model.forward_features(x), original_features)


def trainable_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_head_means_the_classifier_and_prefixes_are_literal_for_plain_modules():
    model = apply_lora(resnet(), RESNET_TARGETS, rank=2, alpha=2)
    assert model.fc.weight.requires_grad and not model.conv1.weight.requires_grad
    lenet = apply_lora(LeNet5(), ["fc1", "fc2"], rank=2, alpha=2, trainable=("fc3",))
    assert trainable_names(lenet) == ["fc1.lora_A", "fc1.lora_B", "fc2.lora_A", "fc2.lora_B",
                                      "fc3.weight", "fc3.bias"]
    assert trainable_names(apply_lora(vit(), QKV, rank=2, alpha=2, trainable=())) == [
        f"blocks.{i}.attn.qkv.lora_{ab}" for i in range(12) for ab in "AB"]
    # A ConvNeXt-style head: "head" is the whole head, the classifier `head.fc` included.
    net = nn.Sequential()
    net.add_module("body", nn.Linear(4, 4))
    net.add_module("head", nn.Sequential())
    net.head.add_module("norm", nn.LayerNorm(4))
    net.head.add_module("fc", nn.Linear(4, 2))
    net.pretrained_cfg = {"classifier": "head.fc"}
    assert trainable_names(apply_lora(net, "body", rank=1, alpha=1)) == [
        "body.lora_A", "body.lora_B", "head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"]
    # Full fine-tuning reads `trainable` the same way (one implementation, woof.models); but only
    # the classifier itself makes features cacheable: head.norm runs before the pre-logits.
    assert trainable_names(set_trainable(net, ["head"])) == [
        "head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"]
    assert not only_classifier_trains(net)
    assert only_classifier_trains(set_trainable(resnet(), ["head"]))
    # Prefixes end on dots: "blocks.1" is block 1, not blocks 10 and 11.
    lora_model = apply_lora(vit(), QKV, rank=2, alpha=2, trainable=("blocks.1",))
    for model in (lora_model, set_trainable(vit(), ["blocks.1"])):
        assert model.blocks[1].norm1.weight.requires_grad
        late = [p for b in (10, 11) for n, p in model.blocks[b].named_parameters() if not is_lora_name(n)]
        assert not any(p.requires_grad for p in late)


def test_naming_contract():
    model = apply_lora(vit(), QKV, rank=8, alpha=16)
    keys = model.state_dict().keys()
    assert {"blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.qkv.lora_A",
            "blocks.0.attn.qkv.lora_B"} <= keys
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)  # drop-in: still an nn.Linear
    assert set(lora_state_dict(model)) == {k for k in keys if "lora_" in k} | {"head.weight", "head.bias"}


# ---- merging

@pytest.mark.parametrize("name", MODELS)
def test_merged_model_matches_two_branch_model_and_loads_into_timm(name):
    make, targets = MODELS[name]
    model = apply_lora(make().eval(), targets, rank=4, alpha=8)
    randomize_adapters(model)
    x = images()
    merged = merge_lora(model)
    assert not lora_modules(merged) and lora_modules(model)  # the original keeps its adapters
    set_fused(model, False)  # the textbook h = W0·x + s·B·A·x, computed separately
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=0, atol=1e-5)
    fresh = timm.create_model("vit_tiny_patch16_224" if name == "vit" else "resnet18",
                              pretrained=False, num_classes=10, **({"img_size": 32} if name == "vit" else {}))
    fresh.load_state_dict(merged.state_dict(), strict=True)
    assert type(merged) is type(fresh)


@pytest.mark.parametrize("conv", [dict(stride=2, padding=1), dict(stride=1, padding=2, dilation=2),
                                  dict(stride=2, padding=0, bias=False), dict(padding="same")])
def test_conv_merge(conv):
    torch.manual_seed(0)
    layer = LoRAConv2d(nn.Conv2d(3, 8, 3, **conv), rank=4, alpha=8)
    randomize_adapters(layer)
    x = images(size=11)
    s = layer.scaling
    two_branch = (F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
                  + s * F.conv2d(F.conv2d(x, layer.lora_A, None, layer.stride, layer.padding, layer.dilation),
                                 layer.lora_B))
    merged = merge_lora(layer)
    assert type(merged) is nn.Conv2d
    with torch.no_grad():
        torch.testing.assert_close(merged(x), two_branch, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer(x), two_branch, rtol=0, atol=1e-5)


def test_linear_merge_and_switched_off_merge():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), rank=4, alpha=4, rslora=True)
    assert layer.scaling == 2.0  # alpha / sqrt(r)
    randomize_adapters(layer)
    x = torch.randn(5, 3, 16)
    two_branch = F.linear(x, layer.weight, layer.bias) + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    with torch.no_grad():
        torch.testing.assert_close(merge_lora(layer)(x), two_branch, rtol=0, atol=1e-5)
        set_lora_enabled(layer, False)
        assert torch.equal(merge_lora(layer).weight, layer.weight)


# ---- checkpoints

def test_adapter_round_trip_and_size(tmp_path):
    base = vit()
    model = apply_lora(copy.deepcopy(base), QKV, rank=8, alpha=16)
    randomize_adapters(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    path = tmp_path / "adapter.safetensors"
    save_lora(model, path)
    assert path.stat().st_size < 400_000  # the whole model is about 22 MB

    torch.manual_seed(123)  # different A initialisation: the file must overwrite it
    restored = load_lora(apply_lora(copy.deepcopy(base), QKV, rank=8, alpha=16), path)
    x = images()
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), model.eval()(x))

    other_rank = apply_lora(copy.deepcopy(base), QKV, rank=4, alpha=16)
    before = snapshot(other_rank)
    with pytest.raises(ValueError, match="shape"):
        load_lora(other_rank, path)
    assert_same_snapshot(before, snapshot(other_rank))
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(apply_lora(copy.deepcopy(base), VIT_TARGETS, rank=8, alpha=16), lora_state_dict(model))


# ---- parameter counts

def test_parameter_counts_lenet():
    lenet = LeNet5()
    assert count_parameters(lenet)["total"] == 44_426
    assert lenet(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    for n, p in lenet.named_parameters():
        p.requires_grad_(n.startswith("fc3."))  # linear probing
    assert count_parameters(lenet)["trainable"] == 850
    counts = count_parameters(apply_lora(LeNet5(), r"fc[123]", rank=2, alpha=2, trainable=()))
    assert counts["trainable"] == counts["lora"] == 1_348
    assert counts["total"] == 44_426 + 1_348
    assert counts["per_module"]["fc1"] == {"total": 30_840 + 752, "trainable": 752}


def test_parameter_counts_vit_tiny():
    model = vit(img_size=224)  # the position embedding's size depends on the image size
    assert count_parameters(model)["total"] == 5_526_346
    counts = count_parameters(apply_lora(model, QKV, rank=8, alpha=16))
    assert counts["trainable"] == 75_658
    assert counts["total"] == 5_526_346 + 12 * 8 * (192 + 576)


# ---- the library stands alone: woof's meaning of "head" lives in woof.models

def test_library_imports_only_torch_and_safetensors():
    tree = ast.parse(open(lora.__file__).read())
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"copy", "math", "numbers", "os", "re", "torch", "safetensors"}, imported


def test_library_trainable_is_literal_prefixes_or_a_predicate():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    wrap = functools.partial(lora.apply_lora, targets="0", rank=1, alpha=1)
    assert trainable_names(wrap(copy.deepcopy(net))) == ["0.lora_A", "0.lora_B"]  # default: adapters only
    assert trainable_names(wrap(copy.deepcopy(net), trainable="1")) == ["0.lora_A", "0.lora_B", "1.weight", "1.bias"]
    assert trainable_names(wrap(copy.deepcopy(net), trainable=lambda n: n.endswith("bias"))) == [
        "0.bias", "0.lora_A", "0.lora_B", "1.bias"]
    model = resnet()  # the library's "head" is literal: a ResNet has none (woof resolves it to `fc`)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"\['head'\] match no parameter.*trainable=\(\)"):
        lora.apply_lora(model, RESNET_TARGETS, rank=2, alpha=2, trainable=("head",))
    assert_same_snapshot(before, snapshot(model))


# ---- HF PEFT parity

@pytest.mark.parametrize("name,rslora", [("vit", False), ("vit", True), ("resnet", False)])
def test_matches_peft(name, rslora):
    peft = pytest.importorskip("peft")
    make, targets = MODELS[name]
    base = make().eval()
    ours = apply_lora(copy.deepcopy(base), targets, rank=4, alpha=8, rslora=rslora)
    randomize_adapters(ours)
    head = base.pretrained_cfg["classifier"]
    config = peft.LoraConfig(target_modules=targets, r=4, lora_alpha=8, use_rslora=rslora,
                             modules_to_save=[head])
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    theirs_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for n, m in lora_modules(ours):
            for ab in ("lora_A", "lora_B"):
                theirs_params[f"base_model.model.{n}.{ab}.default.weight"].copy_(getattr(m, ab))
        x = images()
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)
    assert count_parameters(ours)["trainable"] == count_parameters(theirs)["trainable"]


# ---- validation: a clear ValueError and an untouched model

@pytest.mark.parametrize("kwargs,match", [
    (dict(rank=0), "rank"), (dict(rank=-2), "rank"), (dict(rank=2.5), "rank"),
    (dict(alpha=0), "alpha"), (dict(alpha=-1.0), "alpha"),
    (dict(dropout=-0.1), "dropout"), (dict(dropout=1.0), "dropout"),
    (dict(targets=r"blocks\.\d+\.attn\.nothing"), "matches no module"),
    (dict(targets="("), "not a valid regex"),
    (dict(targets=r"blocks\.0\.norm1"), r"blocks\.0\.norm1.*LayerNorm"),
    (dict(targets=r"blocks\.0\.(attn|mlp\.fc1)"), r"blocks\.0\.attn.*Attention"),
    (dict(targets=r"blocks\.0\.attn\.qkv|blocks\.0\.mlp"), r"blocks\.0\.mlp.*Mlp"),
    (dict(trainable=("heads",)), "trainable"),
])
def test_bad_input_raises_and_leaves_model_untouched(kwargs, match):
    model = vit()
    before = snapshot(model)
    args = dict(targets=VIT_TARGETS, rank=4, alpha=8) | kwargs
    with pytest.raises(ValueError, match=match):
        apply_lora(model, **args)
    assert_same_snapshot(before, snapshot(model))


def test_unsupported_convolutions_and_double_wrapping():
    depthwise = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1))
    before = snapshot(depthwise)
    with pytest.raises(ValueError, match=r"'0'.*Conv2d.*groups"):
        apply_lora(depthwise, r"\d", rank=2, alpha=2, trainable=())
    assert_same_snapshot(before, snapshot(depthwise))

    model = apply_lora(vit(), QKV, rank=4, alpha=8)
    before = snapshot(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, QKV, rank=4, alpha=8)
    assert_same_snapshot(before, snapshot(model))
    with pytest.raises(ValueError, match="no LoRA layer"):
        set_lora_enabled(vit(), False)
    # nn.MultiheadAttention reads out_proj.weight itself, so wrapping its Linear subclass would do nothing
    mha = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="NonDynamicallyQuantizableLinear"):
        apply_lora(mha, r"0\.out_proj", rank=2, alpha=2, trainable=())


# ---- the fused autograd functions

def test_fused_functions_gradcheck():
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    # Linear with (B, N, C) input; every input needs a gradient, so every branch of backward runs.
    assert torch.autograd.gradcheck(_MergedLoRALinear.apply,
                                    (rand(2, 3, 5), rand(4, 5), rand(4), rand(2, 5), rand(4, 2), 1.5))
    # Convolution with stride 2, padding 1, dilation 1 and with dilation 2.
    for stride, padding, dilation in [((2, 2), (1, 1), (1, 1)), ((1, 1), (2, 2), (2, 2))]:
        assert torch.autograd.gradcheck(
            _MergedLoRAConv2d.apply, (rand(2, 3, 6, 6), rand(4, 3, 3, 3), rand(4), rand(2, 3, 3, 3),
                                      rand(4, 2, 1, 1), 0.5, stride, padding, dilation))


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_fused_gradients_match_two_branch_gradients(name, dora):
    make, targets = MODELS[name]
    model = apply_lora(make().eval().double(), targets, rank=4, alpha=8, dora=dora)
    randomize_adapters(model)
    x, labels = images().double(), torch.tensor([1, 2])
    grads = []
    for fused in (True, False):
        set_fused(model, fused)
        model.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 2
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-9, atol=1e-12, msg=n)


def test_dropout_uses_two_branches_in_training_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 16), rank=4, alpha=4, dropout=0.5)
    randomize_adapters(layer, std=1.0)
    x = torch.randn(8, 32)
    with torch.no_grad():
        assert not torch.equal(layer(x), layer(x))  # fresh dropout masks
        layer.eval()
        torch.testing.assert_close(layer(x), merge_lora(layer)(x), rtol=0, atol=1e-5)


def test_autocast_bf16_trains_float32_adapters():
    model = apply_lora(vit(), VIT_TARGETS, rank=4, alpha=8)
    randomize_adapters(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(images()), torch.tensor([0, 1]))
    loss.backward()
    qkv = model.blocks[3].attn.qkv
    assert qkv.lora_A.grad.dtype == qkv.lora_B.grad.dtype == torch.float32
    assert qkv.lora_A.grad.abs().sum() > 0 and qkv.lora_B.grad.abs().sum() > 0


def test_bf16_fused_forward_keeps_a_small_update_as_well_as_two_branches():
    """Under bf16 autocast the fused forward rounds W0 + s·B·A to bf16, so the part of a small
    update below W0's bf16 step (~0.4 % of |W0|) is lost in the forward pass. Full fine-tuning
    under autocast does the same to its fp32 master weights. The two-branch forward keeps the
    update apart, but its output is rounded to bf16 too, and the rest of the network adds its own
    bf16 error. Measured here with B ~ N(0, 1e-3), an early-training update that moves the logits
    by ~3 %: both formulations land ~1 % from the fp32 logits and recover the update's effect on
    the logits to ~40 %, fused no worse than 1.5x two-branch (1.3x / 0.9x measured)."""
    model = apply_lora(vit().eval(), VIT_TARGETS, rank=8, alpha=16)
    x = images(n=8)

    def logits(fused=True, bf16=False):
        set_fused(model, fused)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x).float()
    base32, base16 = logits(), logits(bf16=True)  # B == 0: both formulations compute W0·x
    randomize_adapters(model, std=1e-3)
    ref = logits()
    assert 0.01 < (ref - base32).norm() / ref.norm() < 0.1  # the update is small but not nothing
    error = {}
    for fused in (True, False):
        out = logits(fused, bf16=True)
        error[fused] = ((out - ref).norm() / ref.norm()).item()
        assert error[fused] < 0.03
        # how much of the update's effect on the logits the bf16 forward reproduces
        assert ((out - base16) - (ref - base32)).norm() / (ref - base32).norm() < 0.7
    assert error[True] < 1.5 * error[False]


def test_lora_on_lenet_convolutions_merges():
    model = apply_lora(LeNet5(), r"conv[12]", rank=2, alpha=4, trainable=())
    randomize_adapters(model)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        merged = merge_lora(model)
        set_fused(model, False)
        torch.testing.assert_close(merged(x), model(x), rtol=0, atol=1e-5)
    assert type(merged) is LeNet5 and type(merged.conv2) is nn.Conv2d


def test_benchmark_runs_and_prints_a_table():
    from woof import bench
    rows = {k: bench.LORA_ROWS[k] for k in ("full fine-tuning", "LoRA ours r=8 qkv +head")}
    results = bench.run(rows, batch_size=2, image_size=32, steps=1, warmup=1)
    table = bench.markdown(results)
    assert "| LoRA ours r=8 qkv +head | 75,658 |" in table
    assert all(r["images_per_s"] > 0 and r["peak_mb"] > 0 for r in results.values())
    # The frozen backbone has no weight gradients or AdamW state: it must need less memory.
    assert results["LoRA ours r=8 qkv +head"]["peak_mb"] < results["full fine-tuning"]["peak_mb"]


def test_benchmark_ablation_skips_only_the_adapter_gradients():
    """The "adapters frozen" row must still backpropagate through every block (else it would
    time a linear probe) while computing no adapter gradient."""
    from woof import bench
    torch.manual_seed(0)
    batch = (torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    step = bench._adapters_frozen(vit(32), batch)
    model = step.model
    assert len(lora_modules(model)) == 48
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["head.bias", "head.weight", "pos_embed"]
    seen = []
    model.blocks[0].attn.qkv.register_full_backward_hook(lambda m, gin, gout: seen.append(gout[0].shape))
    pos_embed, lora_a = model.pos_embed.detach().clone(), model.blocks[0].attn.qkv.lora_A.detach().clone()
    step()
    assert seen, "no gradient reached block 0"
    assert not torch.equal(model.pos_embed, pos_embed)
    assert torch.equal(model.blocks[0].attn.qkv.lora_A, lora_a)


# ---- DoRA

def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))


def convnet():  # padding, stride, no bias (PEFT's adapter ignores dilation: the reference test has it)
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.Conv2d(8, 4, 1, bias=False))


DORA_MODELS = {"mlp": (mlp, ["0", "2"], lambda: torch.randn(5, 3, 16, generator=torch.Generator().manual_seed(1))),
               "convnet": (convnet, ["0", "2", "3"], lambda: images(size=9)),
               "vit": (vit, VIT_TARGETS, images)}


def peft_name(name):
    """Our parameter's name in a PEFT model with modules_to_save=["head"]."""
    for ours, theirs in (("lora_A", "lora_A.default.weight"), ("lora_B", "lora_B.default.weight"),
                         ("lora_magnitude", "lora_magnitude_vector.default.weight"), ("head.", "head.modules_to_save.default.")):
        name = name.replace(ours, theirs)
    return f"base_model.model.{name}"


@pytest.mark.parametrize("name,dropout", [("mlp", 0.0), ("mlp", 0.3), ("convnet", 0.0), ("vit", 0.0)])
def test_dora_matches_peft_outputs_and_gradients(name, dropout):
    """Same weights, same input (same dropout mask): PEFT's use_dora=True computes the same
    output and the same gradient for every trainable parameter, magnitudes and head included."""
    peft = pytest.importorskip("peft")
    make, targets, inputs = DORA_MODELS[name]
    base = make()
    head = ["head"] if name == "vit" else []
    ours = lora.apply_lora(copy.deepcopy(base), targets, rank=4, alpha=8, dropout=dropout, dora=True, trainable=head)
    randomize_adapters(ours)
    config = peft.LoraConfig(target_modules=targets, r=4, lora_alpha=8, lora_dropout=dropout, use_dora=True,
                             modules_to_save=head)
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    mine = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    their = {n: p for n, p in theirs.named_parameters() if p.requires_grad}
    assert {peft_name(n) for n in mine} == set(their)
    with torch.no_grad():
        for n, p in mine.items():  # PEFT keeps a conv's magnitude as (1, out, 1, 1), ours as (out,)
            their[peft_name(n)].copy_(p.view_as(their[peft_name(n)]))
    for model in (ours, theirs):  # with dropout, in training: ours takes the two-branch path
        model.train(dropout > 0)
    x = inputs()
    outputs = []
    for model in (ours, theirs):
        torch.manual_seed(3)  # the same dropout mask
        out = model(x)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(4))).sum().backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=1e-5)
    for n, p in mine.items():
        torch.testing.assert_close(p.grad, their[peft_name(n)].grad.view_as(p), rtol=1e-5, atol=1e-5, msg=n)


@pytest.mark.parametrize("name", MODELS)
def test_dora_starts_as_the_original_and_merges_into_it(name):
    make, targets = MODELS[name]
    base = make().eval()
    x = images()
    with torch.no_grad():
        original = base(x)
    model = apply_lora(copy.deepcopy(base), targets, rank=4, alpha=8, dora=True)
    assert all(isinstance(m, (DoRALinear, DoRAConv2d)) for _, m in lora_modules(model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), original, rtol=0, atol=1e-5)  # m = ||W0||: g = 1
    randomize_adapters(model)
    merged = merge_lora(model)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=0, atol=1e-5)
        set_fused(model, False)  # PEFT's formulation, computed separately
        torch.testing.assert_close(merged(x), model(x), rtol=0, atol=1e-5)
        set_lora_enabled(model, False)
        assert torch.equal(model(x), original)
    fresh = timm.create_model("vit_tiny_patch16_224" if name == "vit" else "resnet18",
                              pretrained=False, num_classes=10, **({"img_size": 32} if name == "vit" else {}))
    fresh.load_state_dict(merged.state_dict(), strict=True)


def test_dora_adapter_round_trip_includes_the_magnitude(tmp_path):
    base = vit()
    model = apply_lora(copy.deepcopy(base), QKV, rank=8, alpha=16, dora=True)
    randomize_adapters(model)
    assert isinstance(model.blocks[0].attn.qkv, nn.Linear)  # drop-in
    magnitudes = {f"blocks.{i}.attn.qkv.lora_magnitude" for i in range(12)}
    assert magnitudes <= set(lora_state_dict(model)) and magnitudes <= set(trainable_names(model))
    assert count_parameters(model)["lora"] == 12 * (8 * (192 + 576) + 576)
    path = tmp_path / "adapter.safetensors"
    save_lora(model, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    torch.manual_seed(123)
    restored = load_lora(apply_lora(copy.deepcopy(base), QKV, rank=8, alpha=16, dora=True), path)
    x = images()
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), model.eval()(x))
    with pytest.raises(ValueError, match="unexpected.*lora_magnitude"):  # a DoRA file does not fit a LoRA model
        load_lora(apply_lora(copy.deepcopy(base), QKV, rank=8, alpha=16), path)


def test_dora_functions_match_autograd_with_a_detached_norm():
    """Every input needs a gradient (the base weight and bias too), so every branch of both
    backwards runs; the reference is autograd on the formula with the norm detached."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731

    def reference(x, weight, bias, A, B, m, s, op):
        merged = weight + s * (B.flatten(1) @ A.flatten(1)).view_as(weight)
        scale = m / merged.flatten(1).norm(dim=1).detach()
        out = op(x, merged)
        return (out * scale if out.dim() == 2 or op is F.linear else out * scale[:, None, None]) + \
            (bias if op is F.linear else bias[:, None, None])

    cases = [(_MergedDoRALinear.apply, F.linear, (rand(2, 3, 5), rand(4, 5), rand(4), rand(2, 5), rand(4, 2), rand(4)), ()),
             (_MergedDoRAConv2d.apply, functools.partial(F.conv2d, stride=2, padding=1, dilation=2),
              (rand(2, 3, 7, 7), rand(4, 3, 3, 3), rand(4), rand(2, 3, 3, 3), rand(4, 2, 1, 1), rand(4)),
              ((2, 2), (1, 1), (2, 2)))]
    for fn, op, inputs, conv in cases:
        gy = torch.randn(reference(*inputs, 1.5, op).shape, generator=g, dtype=torch.float64)
        fused = torch.autograd.grad(fn(*inputs, 1.5, *conv), inputs, gy)
        ref = torch.autograd.grad(reference(*inputs, 1.5, op), inputs, gy)
        for a, b in zip(fused, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dora_under_bf16_autocast():
    model = apply_lora(vit(), VIT_TARGETS, rank=4, alpha=8, dora=True)
    randomize_adapters(model)
    x, labels = images(), torch.tensor([0, 1])
    with torch.no_grad():
        ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.blocks[3].attn.qkv(torch.randn(2, 5, 192)).dtype == torch.bfloat16  # as LoRA's
        logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    assert (logits.float() - ref).norm() / ref.norm() < 0.05
    qkv = model.blocks[3].attn.qkv
    for p in (qkv.lora_A, qkv.lora_B, qkv.lora_magnitude):
        assert p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0 and p.grad.isfinite().all()
