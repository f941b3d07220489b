"""woof.step: one method definition and one training step for the loop, the bench and the cost
stage; torch.compile and bf16 agree with eager fp32; train.precision=auto detects, never assumes."""
import copy
import warnings

import pytest
import timm
import torch
import torch.nn as nn

import woof.evaluate
import woof.step
from conftest import ROOT, LeNet5
from test_train import CLASSES, run, tiny_params
from woof import analysis, bench, config
from woof.evaluate import compiled, resolve_precision
from woof.step import Method, make_optimizer

RECIPE = config.load(ROOT / "params.yaml").full
LORA = Method(("head",), lora={"targets": r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)",
                               "rank": 4, "alpha": 8})


def small_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=4)


def one_step(model, forward, precision, x, y):
    opt, sched = make_optimizer(model, RECIPE, steps_per_epoch=10)
    loss, logits = woof.step.train_step(forward, x, y, nn.CrossEntropyLoss(), opt, sched, precision)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("method", [Method(), LORA], ids=["full", "lora"])
def test_compiled_step_agrees_with_eager(method, precision):
    """Loss and every trainable parameter's gradient, compiled (inductor) against eager, on a
    2-block ViT; the LoRA rows go through woof.lora's autograd function under dynamo."""
    if woof.evaluate.compile_unavailable("cpu"):
        pytest.skip(f"torch.compile unavailable: {woof.evaluate.compile_unavailable('cpu')}")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 4, (4,), generator=g)
    eager = method.prepare(small_vit())
    other = copy.deepcopy(eager)
    loss_e, grads_e = one_step(eager, eager, precision, x, y)
    loss_c, grads_c = one_step(other, compiled(other, True), precision, x, y)
    tol = 1e-4 if precision == "fp32" else 3e-2  # bf16: both round, in different orders
    assert loss_c.item() == pytest.approx(loss_e.item(), rel=tol)
    assert grads_c.keys() == grads_e.keys() and len(grads_e) > 2
    if method.lora:
        assert any("lora_B" in n for n in grads_e)
    for name in grads_e:  # B starts at zero: on the first step A's gradient is exactly 0 in both
        assert relative_error(grads_c[name], grads_e[name]) < tol or grads_e[name].norm() == 0, name


def test_bf16_step_is_close_to_fp32():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 4, (4,), generator=g)
    a = small_vit()
    b = copy.deepcopy(a)
    loss32, grads32 = one_step(a, a, "fp32", x, y)
    loss16, grads16 = one_step(b, b, "bf16", x, y)
    assert loss16.dtype == torch.float32  # the loss is taken in fp32 under autocast
    assert loss16.item() == pytest.approx(loss32.item(), rel=3e-2)
    assert relative_error(grads16["head.weight"], grads32["head.weight"]) < 0.1


def test_the_loop_the_bench_and_the_cost_stage_take_the_one_step(monkeypatch):
    """Replace woof.step.train_step by a spy: the training loop, a bench row and the cost stage
    all run through it, so none of them can keep a step of its own."""
    callers = []
    real = woof.step.train_step

    def spy(forward, *args, **kwargs):
        callers.append(type(forward).__name__)
        return real(forward, *args, **kwargs)
    monkeypatch.setattr(woof.step, "train_step", spy)

    from test_train import tiny_data
    data = tiny_data(16, 35, 0), tiny_data(8, 32, 1)
    run(tiny_params(epochs=1), data)
    loop = len(callers)
    assert loop == 16 // 8  # one call per batch
    bench.run({"full": bench.ALL_ROWS["full fine-tuning"]}, batch_size=2, image_size=32, steps=1, warmup=0)
    after_bench = len(callers)
    assert after_bench > loop
    analysis.cost_table(LeNet5, {"full": Method()}, batch_size=2, image_size=28, recipe=RECIPE, in_chans=1)
    assert len(callers) > after_bench
    # The probe's head-only epochs take it as well.
    run(tiny_params(epochs=1, trainable=["head"]), data)
    assert callers[-1] == "Linear"


def test_method_of_a_recipe_is_what_the_pipeline_builds():
    cfg = config.parse(tiny_params(freeze_blocks=1))
    assert Method.of(cfg.full) == Method(("all",), 1)
    lora = Method.of(cfg.lora)
    assert lora.trainable == ("head",) and lora.lora["rank"] == cfg.lora.rank
    assert Method.of(cfg.lora).prepare(small_vit()) is not None
    assert Method(("head",)).prepare(small_vit()).head.weight.requires_grad


def test_precision_auto_detects_native_bf16(monkeypatch):
    for avx512_bf16, amx, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto", "cpu") == expected
        assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    params = tiny_params()
    params["train"]["precision"] = "auto"
    assert config.parse(params).train.precision == "auto"
    params["train"]["precision"] = "fp16"
    with pytest.raises(config.ConfigError, match="train.precision must be one of fp32, bf16, auto"):
        config.parse(params)


def test_compile_unavailable_falls_back_to_eager_with_a_warning(monkeypatch):
    monkeypatch.setattr(woof.evaluate, "compile_unavailable", lambda device_type: "no C++ compiler")
    model = nn.Linear(2, 2)
    with pytest.warns(UserWarning, match=r"train.compile=true, but torch.compile is unavailable here "
                                         r"\(no C\+\+ compiler\): running eager"):
        assert compiled(model, True) is model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compiled(model, False) is model


def test_the_default_settings_repeat_and_resume(tmp_path, monkeypatch):
    """params.yaml's train.precision and train.compile through the loop (compiled bf16 on a CPU
    with native bf16): the same run twice gives the same metrics, an interrupted run resumes to
    them, and the checkpoint holds the module's own (unprefixed) state."""
    from test_train import metrics_only, tiny_data
    from woof import train
    data = tiny_data(16, 35, 0), tiny_data(8, 32, 1)
    cfg = config.parse(tiny_params(epochs=2))  # the train section is params.yaml's
    precision = resolve_precision(cfg.train.precision, "cpu")

    def fit(**kw):
        model = train.build_model("full", cfg, CLASSES)
        model.blocks = model.blocks[:1]  # one block: a quick compile
        return train.fit(model, *data, cfg.full, train.data_config(model, 32), precision=precision,
                         compile=cfg.train.compile, **kw)
    uninterrupted = fit()
    assert metrics_only(fit()) == metrics_only(uninterrupted)
    save = train.save_checkpoint

    def save_then_crash(path, epoch, *args):
        save(path, epoch, *args)
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fit(ckpt_dir=tmp_path, fingerprint="c")
    monkeypatch.undo()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in state["model"])
    assert metrics_only(fit(ckpt_dir=tmp_path, fingerprint="c")) == metrics_only(uninterrupted)
