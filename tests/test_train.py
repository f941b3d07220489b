import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from dataclasses import replace

from conftest import ROOT
from woof import config, train
from woof.models import create_model, data_config, set_trainable
from woof.train import build_model, fit

CLASSES = [{"wnid": f"n{i}", "name": f"class {i}", "imagenet_index": i} for i in range(4)]


def tiny_data(n, size, seed):
    """Class-coloured noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    base = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]])[labels]
    images = base[:, :, None, None] + torch.randint(-30, 30, (n, 3, size, size), generator=g)
    return images.clamp(0, 255).to(torch.uint8), labels


def tiny_params(**full):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update(name="vit_tiny_patch16_224", weights=None)
    params["data"]["image_size"] = 32
    params["full"].update({"epochs": 3, "batch_size": 8, "lr": 1e-3, "pretrained": False,
                           "warmup_epochs": 0.5, **full})
    return params


@pytest.fixture(scope="module")
def data():
    return tiny_data(32, 35, 0), tiny_data(16, 32, 1)


def run(params, data, method="full", **kw):
    cfg = config.parse(params)
    model = build_model(method, cfg, CLASSES)
    history = fit(model, *data, cfg.method(method), data_config(model, 32), **kw)
    return model, history


def metrics_only(history):
    return [{k: v for k, v in h.items() if k not in ("epoch_seconds", "images_per_s", "elapsed_s")} for h in history]


def test_same_params_same_metrics(data):
    _, h1 = run(tiny_params(), data)
    _, h2 = run(tiny_params(), data)
    assert metrics_only(h1) == metrics_only(h2)
    assert h1[-1]["train_loss"] < h1[0]["train_loss"]
    _, h3 = run(tiny_params(seed=1), data)
    assert metrics_only(h3) != metrics_only(h1)


def test_resume_after_interruption_gives_identical_metrics(data, tmp_path, monkeypatch):
    _, uninterrupted = run(tiny_params(), data)
    save = train.save_checkpoint

    def save_then_crash(path, epoch, *args):
        save(path, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt("killed after epoch 1")
    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    live = tmp_path / "live"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_params(), data, ckpt_dir=tmp_path, fingerprint="abc", live_dir=live)
    monkeypatch.undo()
    first = torch.load(tmp_path / "last.pt", weights_only=True)
    assert first["epoch"] == 1
    resumed_model, resumed = run(tiny_params(), data, ckpt_dir=tmp_path, fingerprint="abc", live_dir=live)
    assert metrics_only(resumed) == metrics_only(uninterrupted)
    # The interrupted process's time is carried: the run's minutes count every epoch.
    first_elapsed = json.loads(first["history"])[0]["elapsed_s"]
    assert resumed[0]["elapsed_s"] == first_elapsed and resumed[-1]["elapsed_s"] > first_elapsed
    # dvclive's curves hold all three epochs once, not only the resumed process's two.
    curve = (live / "plots" / "metrics" / "val_acc.tsv").read_text().splitlines()
    assert [float(line.split("\t")[1]) for line in curve[1:]] == [h["val_acc"] for h in uninterrupted]
    assert json.loads((live / "metrics.json").read_text())["step"] == 2
    # A checkpoint written for other params is not resumed from.
    _, other = run(tiny_params(lr=5e-4), data, ckpt_dir=tmp_path, fingerprint="other")
    assert len(other) == 3 and metrics_only(other) != metrics_only(uninterrupted)


def test_bf16_autocast_trains(data):
    _, h = run(tiny_params(), data, precision="bf16")
    assert len(h) == 3 and all(torch.isfinite(torch.tensor(x["train_loss"])) for x in h)
    with pytest.raises(ValueError, match="precision"):
        run(tiny_params(), data, precision="fp8")


@pytest.mark.parametrize("key,value", [("epochs", -1), ("epochs", 0), ("batch_size", 0), ("lr", -1.0)])
def test_bad_params_are_clear_errors(data, key, value):
    with pytest.raises(ValueError, match=key):
        run(tiny_params(**{key: value}), data)


def test_batch_larger_than_dataset(data):
    with pytest.raises(ValueError, match="larger than the 32 training images"):
        run(tiny_params(batch_size=64), data)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model.name 'vit_nope'"):
        create_model("vit_nope", pretrained=False)


def test_freeze_blocks_stops_backprop_below_block_k():
    model = set_trainable(create_model("vit_tiny_patch16_224", img_size=32, pretrained=False), freeze_blocks=3)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= set(frozen)  # timm's stem group
    assert model.norm.weight.requires_grad and model.head.weight.requires_grad
    assert all(not p.requires_grad for p in model.blocks[2].parameters())
    assert all(p.requires_grad for p in model.blocks[3].parameters())
    seen = {}
    model.blocks[2].register_forward_hook(lambda m, i, o: seen.update(below=o.requires_grad))
    model.blocks[3].register_forward_hook(lambda m, i, o: seen.update(at=o.requires_grad))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert seen == {"below": False, "at": True}  # nothing below block 3 is in the autograd graph
    with pytest.raises(ValueError, match="12 blocks"):
        set_trainable(create_model("vit_tiny_patch16_224", img_size=32, pretrained=False), freeze_blocks=13)


def test_freeze_blocks_resnet_stages():
    model = set_trainable(create_model("resnet18", pretrained=False), freeze_blocks=2)
    assert not model.conv1.weight.requires_grad and not model.layer2[1].conv2.weight.requires_grad
    assert model.layer3[0].conv1.weight.requires_grad and model.fc.weight.requires_grad


def test_linear_probe_runs_backbone_once(data):
    model = build_model("full", config.parse(tiny_params(trainable=["head"])), CLASSES)
    calls = []
    model.patch_embed.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    head_before = model.head.weight.clone()
    blocks_before = model.blocks[0].mlp.fc1.weight.clone()
    history = fit(model, *data, replace(config.parse(tiny_params()).full, epochs=5), data_config(model, 32))
    assert sum(calls) == 32 + 16  # one pass over train and val, whatever the number of epochs
    assert len(history) == 5 and not torch.equal(model.head.weight, head_before)
    assert torch.equal(model.blocks[0].mlp.fc1.weight, blocks_before)


def _ddp_worker(rank, world, port, data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    _, history = run(tiny_params(), data, device="cpu")
    if rank == 0:
        out.put(metrics_only(history))
    torch.distributed.destroy_process_group()


def test_two_processes_match_one(data):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each worker: the same kernels, so the same rounding
    try:
        single = metrics_only(run(tiny_params(), data)[1])
    finally:
        torch.set_num_threads(threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, data, out), nprocs=2, start_method="spawn")
    double = out.get()
    assert len(single) == len(double) == 3
    for a, b in zip(single, double):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k


def test_test_split_never_reaches_training(archive, random_weights, tmp_path, monkeypatch):
    """The train stage hands fit the train and val tensors only: none of the clean test images."""
    import stages.train
    import woof.train
    from woof.data import fetch, load_split, preprocess
    raw = fetch(archive, tmp_path / "data" / "raw")
    cfg = data_config(create_model("vit_tiny_patch16_224", img_size=32, pretrained=False), 32)
    preprocess(raw, tmp_path / "data" / "prepared", cfg)
    params = tiny_params()
    params["model"]["weights"] = str(random_weights)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    seen = {}

    def spy(model, train, val, *args, **kwargs):
        seen["train"], seen["val"] = train, val
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(woof.train, "fit", spy)  # the one training path, train_method, calls it
    with pytest.raises(KeyboardInterrupt):
        stages.train.main("full")
    prepared = tmp_path / "data" / "prepared"
    files = yaml.safe_load((prepared / "files.json").read_text())
    # fit got exactly the prepared train and val tensors, whose files hold no test file ...
    for split in ("train", "val"):
        assert torch.equal(seen[split][0], load_split(prepared / f"{split}.safetensors")[0])
        assert not set(files[split]) & set(files["test"])
    assert len(seen["train"][0]) == 40 and len(seen["val"][0]) == 20
    # ... and no test image's pixels (val and test are both the 32 px eval view).
    test_images, _ = load_split(prepared / "test.safetensors")  # (30, 3, 32, 32)
    assert not (seen["val"][0][:, None] == test_images[None]).flatten(2).all(-1).any()


def test_layer_decay_gives_each_block_its_lr():
    """full.layer_decay: the head at lr, block k of D at lr * decay^(D - k), the embeddings lowest
    (timm's group_matcher), and a schedule that scales every group alike."""
    cfg = config.parse(tiny_params(layer_decay=0.5, lr=1e-3))
    model = build_model("full", cfg, CLASSES)
    opt, _ = train.make_optimizer(model, cfg.full, steps_per_epoch=4)
    # initial_lr: the scheduler's base (LambdaLR has already applied the first warmup factor to lr).
    lr_of = {n: g["initial_lr"] for g in opt.param_groups for p in g["params"] for n, q in model.named_parameters()
             if p is q}
    depth = len(model.blocks)
    assert lr_of["head.weight"] == pytest.approx(1e-3)
    for k in range(depth):
        assert lr_of[f"blocks.{k}.attn.qkv.weight"] == pytest.approx(1e-3 * 0.5 ** (depth - k))
    assert lr_of["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.5 ** (depth + 1)) == min(lr_of.values())
    # The schedule scales every group alike (the first warmup factor is already applied).
    assert len({round(g["lr"] / g["initial_lr"], 12) for g in opt.param_groups}) == 1
    # Off (null): one lr for every parameter, the optimiser of every recorded run.
    plain_cfg = config.parse(tiny_params(lr=1e-3))
    plain, _ = train.make_optimizer(build_model("full", plain_cfg, CLASSES), plain_cfg.full, 4)
    assert {g["initial_lr"] for g in plain.param_groups} == {1e-3}


def test_ema_is_what_evaluation_sees_and_resume_restores_it(data, tmp_path, monkeypatch):
    model, history = run(tiny_params(ema_decay=0.5), data)
    plain, plain_history = run(tiny_params(), data)
    # Same training steps (the EMA draws no randomness), other weights and other val numbers.
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in plain_history]
    assert [h["val_loss"] for h in history] != [h["val_loss"] for h in plain_history]
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
    # The returned (saved) model is the EMA: its val loss is the last epoch's.
    cfg = config.parse(tiny_params(ema_decay=0.5))
    val = train.evaluate_sharded(model, data[1], data_config(model, 32), "cpu", "fp32")
    assert val["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-6)
    # Killed after epoch 1 and resumed: the EMA comes back from the checkpoint.
    save = train.save_checkpoint

    def save_then_crash(path, epoch, *args):
        save(path, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_params(ema_decay=0.5), data, ckpt_dir=tmp_path, fingerprint="ema")
    monkeypatch.undo()
    assert "ema" in torch.load(tmp_path / "last.pt", weights_only=True)
    resumed_model, resumed = run(tiny_params(ema_decay=0.5), data, ckpt_dir=tmp_path, fingerprint="ema")
    assert metrics_only(resumed) == metrics_only(history)
    assert all(torch.equal(a, b) for a, b in zip(resumed_model.state_dict().values(), model.state_dict().values()))
    assert cfg.full.ema_decay == 0.5
