import io
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import numpy as np

from conftest import WNIDS, add_bytes, jpeg_bytes, make_archive
from woof.data import (center_crop, fetch, load_classes, load_eval_splits, load_split, pil_transform, preprocess,
                       random_resized_crop_flip, sha256_file, stratified_subset)
from woof.errors import UserError
from woof.io import read_json
from woof.models import create_model, data_config


@pytest.fixture(scope="module")
def cfg():
    return data_config(create_model("vit_tiny_patch16_224", img_size=32, pretrained=False), 32)


def test_fetch_local_path_and_file_url(archive, tmp_path):
    out = fetch(archive, tmp_path / "raw", sha256=sha256_file(archive))
    assert sorted(p.name for p in (out / "train").iterdir()) == WNIDS
    assert len(list((out / "val" / WNIDS[0]).iterdir())) == 3
    out2 = fetch(f"file://{archive}", tmp_path / "raw2")
    assert len(list(out2.rglob("*.JPEG"))) == 90


def test_fetch_checksum_mismatch_leaves_nothing(archive, tmp_path):
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch(archive, tmp_path / "raw", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_fetch_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        fetch(tmp_path / "nope.tgz", tmp_path / "raw")


@pytest.mark.parametrize("name", ["../evil.txt", "imagewoof2-test/../../evil.txt", "/tmp/evil.txt"])
def test_fetch_refuses_path_escape(tmp_path, name):
    bad = make_archive(tmp_path / "bad.tgz", per_class=(1, 1), extra={name: b"owned"})
    out = tmp_path / "work" / "raw"
    with pytest.raises(UserError, match="escapes the output folder"):
        fetch(bad, out)
    assert not out.exists() and not (tmp_path / "work" / "evil.txt").exists()
    assert list((tmp_path / "work").iterdir()) == []


def test_fetch_refuses_symlink(tmp_path):
    bad = tmp_path / "link.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("root/train/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UserError, match="links and devices are refused"):
        fetch(bad, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_fetch_truncated_archive_leaves_nothing(archive, tmp_path):
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        fetch(cut, tmp_path / "out" / "raw")
    assert list((tmp_path / "out").iterdir()) == []


def test_fetch_wrong_layout(tmp_path):
    bad = tmp_path / "flat.tgz"
    with tarfile.open(bad, "w:gz") as tar:
        add_bytes(tar, "images/a.JPEG", b"x")
    with pytest.raises(UserError, match="train/ and val/"):
        fetch(bad, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_preprocess_counts_and_skips_corrupt_images(archive, tmp_path, cfg):
    raw = fetch(archive, tmp_path / "raw")
    (raw / "train" / WNIDS[3] / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    good = (raw / "train" / WNIDS[4] / f"{WNIDS[4]}_0.JPEG").read_bytes()
    (raw / "train" / WNIDS[4] / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        stats = preprocess(raw, tmp_path / "prepared", cfg, split="official")
    assert stats == {"split": "official", "num_classes": 10, "skipped_images": 2,
                     "archive_sha256": sha256_file(archive),
                     "train_images": 60, "train_imagenet_val_origin": 20,
                     "val_images": 30, "val_imagenet_val_origin": 10}
    images, labels = load_split(tmp_path / "prepared" / "train.safetensors")
    assert images.dtype == torch.uint8 and images.shape == (60, 3, 35, 35)  # floor(32 / 0.9)
    assert torch.bincount(labels).tolist() == [6] * 10
    val_images, _ = load_split(tmp_path / "prepared" / "val.safetensors")
    assert val_images.shape == (30, 3, 32, 32)
    assert not (tmp_path / "prepared" / "test.safetensors").exists()
    classes = load_classes(tmp_path / "prepared" / "classes.json")
    assert classes[0] == {"wnid": "n02086240", "name": "Shih-Tzu", "imagenet_index": 155}


def test_clean_test_split_moves_every_imagenet_val_file(archive, tmp_path, cfg):
    raw = fetch(archive, tmp_path / "raw")
    stats = preprocess(raw, tmp_path / "prepared", cfg)  # the default: clean_test
    assert stats == {"split": "clean_test", "num_classes": 10, "skipped_images": 0,
                     "archive_sha256": sha256_file(archive),
                     "train_images": 40, "train_imagenet_val_origin": 0,
                     "val_images": 20, "val_imagenet_val_origin": 0,
                     "test_images": 30, "test_imagenet_val_origin": 30}
    files = read_json(tmp_path / "prepared" / "files.json")
    every = [f for split in files.values() for f in split]
    assert len(every) == len(set(every)) == 90  # each file in exactly one split
    assert all(Path(f).name.startswith("ILSVRC2012_val_") for f in files["test"])
    assert not any(Path(f).name.startswith("ILSVRC2012_val_") for f in files["train"] + files["val"])
    # Test images are decoded like val (the eval view), and come from both published splits.
    test_images, test_labels = load_split(tmp_path / "prepared" / "test.safetensors")
    assert test_images.shape == (30, 3, 32, 32) and torch.bincount(test_labels).tolist() == [3] * 10
    assert {f.split("/")[0] for f in files["test"]} == {"train", "val"}
    splits = load_eval_splits(tmp_path / "prepared")
    assert list(splits) == ["val", "test"] and splits["test"][2] == files["test"]


def test_clean_test_split_needs_imagenet_val_files(tmp_path, cfg):
    raw = tmp_path / "raw"
    for split in ("train", "val"):
        (raw / split / WNIDS[0]).mkdir(parents=True)
        (raw / split / WNIDS[0] / f"{WNIDS[0]}_1.JPEG").write_bytes(jpeg_bytes(0, 1))
    with pytest.raises(ValueError, match="data.split=official"):
        preprocess(raw, tmp_path / "prepared", cfg)
    with pytest.raises(ValueError, match="data.split must be one of"):
        preprocess(raw, tmp_path / "prepared", cfg, split="clean")
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("size", [(60, 45), (45, 60), (70, 70)])
def test_center_crop_of_train_cache_is_timm_eval_view(cfg, size):
    img = Image.open(io.BytesIO(jpeg_bytes(3, 7, size=size))).convert("RGB")
    eval_view = torch.from_numpy(np.array(pil_transform(cfg, 32, cfg["crop_pct"])(img))).permute(2, 0, 1)
    cache = torch.from_numpy(np.array(pil_transform(cfg, 35, 1.0)(img))).permute(2, 0, 1)
    assert center_crop(cache, 32).shape == (3, 32, 32)
    # Same pixels, the crop window at most one pixel off (rounding of two centre crops vs one).
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
              if torch.equal(torch.roll(cache, (dy, dx), (1, 2))[:, 1:33, 1:33], eval_view)]
    assert shifts


def test_train_fraction_is_stratified_and_seeded(archive, tmp_path, cfg):
    labels = [c for c in range(10) for _ in range(10)]
    keep = stratified_subset(labels, 0.2, seed=1)
    assert torch.bincount(torch.tensor(labels)[keep]).tolist() == [2] * 10
    assert keep == stratified_subset(labels, 0.2, seed=1) != stratified_subset(labels, 0.2, seed=2)
    raw = fetch(archive, tmp_path / "raw")
    stats = preprocess(raw, tmp_path / "prepared", cfg, train_fraction=0.5)
    assert stats["train_images"] == 20 and stats["val_images"] == 20 and stats["test_images"] == 30


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_bad_train_fraction(tmp_path, cfg, fraction):
    with pytest.raises(ValueError, match="train_fraction"):
        preprocess(tmp_path, tmp_path / "prepared", cfg, train_fraction=fraction)
    assert not (tmp_path / "prepared").exists()


def test_random_resized_crop_flip():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    full_crop_flip = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.0]] * 2)  # area 1, ratio 1, centred, flip
    out = random_resized_crop_flip(images, 8, full_crop_flip, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(out, images.flip(-1), atol=1e-4)
    rand = torch.rand(2, 5, generator=torch.Generator().manual_seed(0))
    a = random_resized_crop_flip(images, 6, rand)
    assert a.shape == (2, 3, 6, 6) and torch.equal(a, random_resized_crop_flip(images, 6, rand))
    assert a.min() >= images.min() and a.max() <= images.max()
