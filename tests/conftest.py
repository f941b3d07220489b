"""Shared fixtures: a small generated ImageWoof-like archive and random pretrained-style weights,
so that no test needs the internet or ../shared."""
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WOOF_SHARED", ROOT.parent / "shared"))
WNIDS = ["n02086240", "n02087394", "n02088364", "n02089973", "n02093754",
         "n02096294", "n02099601", "n02105641", "n02111889", "n02115641"]


@pytest.fixture(autouse=True)
def no_mirrors_from_the_shell(monkeypatch):
    """A shell that exported the offline mirrors (README "Offline") must not change what a test
    fetches or loads: tests that want a mirror set it themselves."""
    for var in ("WOOF_FETCH_URL", "WOOF_WEIGHTS", "WOOF_DEBUG"):
        monkeypatch.delenv(var, raising=False)


def jpeg_bytes(label, seed, size=(48, 40)):
    """A noisy image whose mean colour depends on the class, so tiny models can learn it."""
    rng = np.random.default_rng(seed)
    base = np.array([(label * 25) % 256, (label * 80) % 256, 255 - label * 25], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def image_name(wnid, label, split, i):
    """Like ImageWoof's: every third image of a class comes from ImageNet's validation set."""
    if i % 3 == 2:
        return f"ILSVRC2012_val_{label * 1000 + i + (500 if split == 'val' else 0):08d}.JPEG"
    return f"{wnid}_{i}.JPEG"


def make_archive(path, per_class=(6, 3), root="imagewoof2-test", extra=None):
    """An ImageWoof-layout .tgz: root/{train,val}/<wnid>/*.JPEG, both kinds of file name (a third
    are ILSVRC2012_val_*: with the defaults 40 train, 20 val and 30 test images under clean_test).
    extra: {member name: bytes}."""
    with tarfile.open(path, "w:gz") as tar:
        for split, n in zip(("train", "val"), per_class):
            for label, wnid in enumerate(WNIDS):
                for i in range(n):
                    add_bytes(tar, f"{root}/{split}/{wnid}/{image_name(wnid, label, split, i)}",
                              jpeg_bytes(label, label * 1000 + i + (500 if split == "val" else 0)))
        for name, data in (extra or {}).items():
            add_bytes(tar, name, data)
    return path


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("archive") / "imagewoof2-test.tgz")


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory):
    """A random-init vit_tiny_patch16_224 state dict with its 1000-class head, standing in for the
    pretrained file (model.weights) where the hub cannot be reached."""
    import timm
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


needs_shared = pytest.mark.skipif(not (SHARED / "data" / "imagewoof2-mini.tgz").exists(),
                                  reason=f"{SHARED} (local ImageWoof mirror) not available")


from woof.analysis import LeNet5  # noqa: E402,F401  (the small model of the tests and the cost stage's worked example)
