"""ImageWoof: download, safe extraction, one-time decoding into uint8 tensors, and batched
augmentation on those tensors (no per-sample PIL work while training)."""
import hashlib
import math
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import warnings
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.data import ImageNetInfo, create_transform
from tqdm import tqdm

from woof.errors import InputError, ParamError, UserError, reading, warn
from woof.io import atomic_path, read_json, write_json

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SPLITS = ("train", "val")  # the folders of an ImageWoof archive
# ImageWoof was cut out of ImageNet: files named like this come from ImageNet's *validation* set;
# all others (<wnid>_<n>.JPEG) are ImageNet-1k training images the pretrained backbone has seen.
IMAGENET_VAL_PREFIX = "ILSVRC2012_val_"
DATA_SPLITS = {
    # train and val as published; ~96 % of both were ImageNet-1k training images of the backbone
    "official": "ImageWoof's published train/val split",
    # every ImageNet-val-origin image (from train and val alike) moves into `test`, which nothing
    # trains on or is chosen on; train and val keep the rest
    "clean_test": "published split with every ImageNet-val-origin image moved to test",
}


# ---------------------------------------------------------------------------------------------
# fetch

def archive_location(fetch_cfg):
    """Where the archive is read from: $WOOF_FETCH_URL (a local mirror: a location, not a param,
    so pointing at a copy of the same bytes changes nothing DVC tracks), else fetch.url.
    The archive's identity is fetch.sha256, checked when set, and recorded in metrics/data.json."""
    return os.environ.get("WOOF_FETCH_URL") or fetch_cfg.url


def fetch(url, out_dir, sha256=None):
    """Download (or copy) the ImageWoof archive, check it, and extract it to out_dir/{train,val},
    with out_dir/archive.json naming the archive and its sha256.

    url: http(s) URL, file:// URL or plain local path. Nothing is left at out_dir on failure."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch.", dir=out_dir.parent) as tmp:
        archive = _local_archive(url, Path(tmp))
        check_archive_format(archive, url)
        digest = sha256_file(archive)
        if sha256 and digest != sha256.lower():
            raise InputError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest} "
                             "(set fetch.sha256 to the new value to accept this archive)")
        with atomic_path(out_dir, is_dir=True) as staging:
            extracted = Path(tmp) / "extracted"
            safe_extract(archive, extracted, name=url)
            root = _find_split_root(extracted, url)
            for split in SPLITS:
                shutil.move(str(root / split), str(staging / split))
            write_json(staging / "archive.json", {"archive": Path(urllib.parse.urlparse(str(url)).path).name,
                                                  "sha256": digest})
    return out_dir


def _local_archive(url, tmp):
    parsed = urllib.parse.urlparse(str(url))
    if parsed.scheme in ("http", "https"):
        dest = tmp / Path(parsed.path).name
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
        except OSError as e:  # URLError, HTTPError, timeouts, refused connections
            reason = getattr(e, "reason", None) or e
            raise InputError(f"could not download fetch.url {url} ({reason}); without internet, point "
                             "WOOF_FETCH_URL at a local copy of the archive (`make offline SHARED=...` does)") from e
        return dest
    path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else url)
    if not path.is_file():
        raise InputError(f"fetch.url {url}: {'a folder, not an archive' if path.is_dir() else 'no such file'}")
    return path


# What the first bytes of each archive kind the fetch accepts look like (tarfile reads them all).
_ARCHIVE_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}


def check_archive_format(path, url):
    """Refuse at once a file that is no (compressed) tar archive, e.g. an HTML error or login page
    saved under the archive's name, instead of 'truncated or corrupt' after reading it."""
    with open(path, "rb") as f:
        head = f.read(512)
    if any(head.startswith(m) for m in _ARCHIVE_MAGIC) or head[257:262] == b"ustar":
        return
    looks = "an HTML page" if head.lstrip()[:1] == b"<" else f"bytes {head[:8]!r}"
    raise InputError(f"{url} is not a gzip, bzip2, xz or tar archive: its first bytes look like {looks} "
                     "(a login or error page saved instead of the archive?); download it again")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def safe_extract(archive, dest, name=None):
    """Extract a tar archive, refusing any member that would land outside `dest` and any link
    or device file (a malicious archive must not write elsewhere on the machine).
    name: how messages call the archive (its URL; default: the path)."""
    name = name or archive
    dest = Path(dest).resolve()
    dest.mkdir(parents=True)
    try:
        with open(archive, "rb") as raw, \
                tqdm.wrapattr(raw, "read", total=Path(archive).stat().st_size,
                              desc=f"extract {Path(archive).name}") as f, \
                tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                target = (dest / member.name).resolve()
                if not target.is_relative_to(dest):
                    raise InputError(f"archive {name}: unsafe member {member.name!r}: it escapes the output folder")
                if not (member.isfile() or member.isdir()):
                    raise InputError(f"archive {name}: unsafe member {member.name!r}: links and devices are refused")
                tar.extract(member, dest, filter="data")
    except UserError:
        raise  # an InputError is an OSError too: not "truncated"
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise InputError(f"archive {name} is truncated or corrupt ({e}): download it again") from e


def _find_split_root(extracted, name):
    for candidate in [extracted, *sorted(p for p in extracted.rglob("*") if p.is_dir())]:
        if all((candidate / s).is_dir() for s in SPLITS):
            return candidate
    raise InputError(f"archive {name} has no folder with train/ and val/ subfolders (ImageWoof layout): "
                     "check fetch.url")


# ---------------------------------------------------------------------------------------------
# preprocess

def class_table(wnids):
    """wnid, human-readable name and ImageNet-1k index of each class (timm's ImageNet metadata)."""
    info = ImageNetInfo()
    names = info.label_names()
    rows = []
    for wnid in wnids:
        index = names.index(wnid) if wnid in names else -1
        rows.append({"wnid": wnid, "name": info.index_to_description(index) if index >= 0 else wnid,
                     "imagenet_index": index})
    return rows


def is_imagenet_val(path):
    return Path(path).name.startswith(IMAGENET_VAL_PREFIX)


def split_files(raw_dir, wnids, split="clean_test"):
    """{split: (files, labels)} of the prepared splits: train and val, plus test for clean_test."""
    if split not in DATA_SPLITS:
        raise ParamError(f"data.split must be one of {', '.join(DATA_SPLITS)}, got {split!r}")
    listed = {s: _list_images(Path(raw_dir) / s, wnids) for s in SPLITS}
    if split == "official":
        return listed
    out = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for s in SPLITS:  # test gathers train's clean images first, then val's: a fixed order
        for f, y in zip(*listed[s]):
            target = out["test" if is_imagenet_val(f) else s]
            target[0].append(f)
            target[1].append(y)
    if not out["test"][0]:
        raise ParamError(f"data.split=clean_test: no {IMAGENET_VAL_PREFIX}* file in {raw_dir}, so there "
                         "is no clean test split; use data.split=official for this dataset")
    return out


def preprocess(raw_dir, out_dir, data_cfg, train_fraction=1.0, seed=0, split="clean_test", workers=None):
    """Decode every image once into uint8 tensors, per split (see `split_files`).

    val, test: resized and center-cropped exactly as timm's eval transform for the model (data_cfg).
    train: only resized to the eval resize size (size / crop_pct) and center-cropped square, so
    random resized crops have a margin and `center_crop` gives back the exact eval view.
    Unreadable images are skipped with a warning and counted. files.json lists each split's files
    (relative to raw_dir) in tensor order, so per-image results can be matched across models.
    Returns the stats written to metrics/data.json."""
    if not 0 < train_fraction <= 1:
        raise ParamError(f"data.train_fraction must be in (0, 1], got {train_fraction}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not (raw_dir / "train").is_dir():
        raise InputError(f"{raw_dir / 'train'} not found: run the fetch stage first (dvc repro)")
    archive = _archive_info(raw_dir)
    source = f" (from archive {archive['archive']})" if archive else ""
    wnids = sorted(p.name for p in (raw_dir / "train").iterdir() if p.is_dir())
    if not wnids:
        raise InputError(f"{raw_dir / 'train'}{source} has no class folders")
    foreign = [r["wnid"] for r in class_table(wnids) if r["imagenet_index"] < 0]
    if foreign:  # the zero-shot baseline and the head's initialisation are ImageNet's rows of each class
        raise InputError(f"{raw_dir / 'train'}{source}: the class folders {foreign[:3]}{' ...' if len(foreign) > 3 else ''} "
                         "are not ImageNet wnids; the pipeline compares against the zero-shot ImageNet head, "
                         "so it needs ImageNet classes (as ImageWoof's n02086240 ...)")
    try:
        splits = split_files(raw_dir, wnids, split)
    except UserError as e:
        raise type(e)(f"{e}{source}") from None
    size = data_cfg["input_size"][-1]
    train_size = math.floor(size / data_cfg["crop_pct"])  # timm's eval resize size
    _check_memory(splits, size, train_size)
    eval_view = pil_transform(data_cfg, size, data_cfg["crop_pct"])
    transforms = {"train": pil_transform(data_cfg, train_size, 1.0), "val": eval_view, "test": eval_view}
    stats = {"split": split, "num_classes": len(wnids), "skipped_images": 0}
    if archive:  # which bytes these numbers come from
        stats["archive_sha256"] = archive["sha256"]
    names = {}
    with atomic_path(out_dir, is_dir=True) as staging:
        for name, (files, labels) in splits.items():
            if name == "train" and train_fraction < 1:
                fewest = min(Counter(labels).values())
                if round(train_fraction * fewest) < 1:  # stratified_subset keeps at least one per class
                    warn(f"data.train_fraction={train_fraction} keeps no image of the smallest class "
                         f"({fewest} images): 1 image of each such class used instead")
                keep = stratified_subset(labels, train_fraction, seed)
                files, labels = [files[i] for i in keep], [labels[i] for i in keep]
            images, ok = decode_images(files, transforms[name], desc=f"preprocess {name}", workers=workers)
            stats["skipped_images"] += len(files) - len(ok)
            stats[f"{name}_images"] = len(ok)
            stats[f"{name}_imagenet_val_origin"] = sum(is_imagenet_val(files[i]) for i in ok)
            names[name] = [files[i].relative_to(raw_dir).as_posix() for i in ok]
            labels = torch.tensor([labels[i] for i in ok], dtype=torch.int64)
            save_file({"images": images, "labels": labels}, str(staging / f"{name}.safetensors"))
        write_json(staging / "classes.json", class_table(wnids))
        write_json(staging / "files.json", names)
    return stats


def _archive_info(raw_dir):
    """archive.json that fetch wrote ({"archive", "sha256"}), or {} for a folder made by hand."""
    path = Path(raw_dir) / "archive.json"
    if not path.exists():
        return {}
    with reading(path, "run the fetch stage again (dvc repro -f fetch)"):
        info = read_json(path)
        return {"archive": info["archive"], "sha256": info["sha256"]}


def _check_memory(splits, size, train_size):
    """The decoded tensors stay in memory: refuse an image size they cannot fit in before decoding."""
    sides = {name: train_size if name == "train" else size for name in splits}
    need = sum(len(files) * 3 * sides[name] ** 2 for name, (files, _) in splits.items())
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ParamError(f"data.image_size={size}: the {sum(len(f) for f, _ in splits.values())} decoded images "
                         f"would take {need / 2**30:.0f} GiB, more than this machine's {have / 2**30:.0f} GiB "
                         "of memory: use a smaller data.image_size")


def pil_transform(data_cfg, size, crop_pct):
    """timm's eval transform (resize + center crop) without ToTensor/Normalize: we keep uint8."""
    full = create_transform(input_size=(3, size, size), interpolation=data_cfg["interpolation"],
                            crop_pct=crop_pct, crop_mode=data_cfg.get("crop_mode", "center"),
                            is_training=False, mean=data_cfg["mean"], std=data_cfg["std"])
    ops = []
    for t in full.transforms:
        if "ToTensor" in type(t).__name__:
            break
        ops.append(t)
    return lambda img: _compose(ops, img)


def _compose(ops, img):
    for op in ops:
        img = op(img)
    return img


def _list_images(split_dir, wnids):
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        folder = split_dir / wnid
        if not folder.is_dir():
            raise InputError(f"{split_dir} has no folder for class {wnid}")
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                files.append(p)
                labels.append(label)
    return files, labels


def stratified_subset(labels, fraction, seed):
    """Indices of a seeded, per-class `fraction` of the samples (at least one per class)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    keep = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        n = max(1, round(fraction * len(idx)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(keep).sort().values.tolist()


def decode_images(files, transform, desc="decode", workers=None):
    """-> (uint8 tensor (N, 3, S, S) of the readable images, list of their indices in `files`)."""
    def load(path):
        try:
            with Image.open(path) as img:
                return np.asarray(transform(img.convert("RGB")))  # (S, S, 3)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            warnings.warn(f"skipping unreadable image {path}: {e}")
            return None

    # PIL releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(tqdm(pool.map(load, files), total=len(files), desc=desc, unit="img"))
    ok = [i for i, a in enumerate(arrays) if a is not None]
    if not ok:
        raise InputError(f"{desc}: none of the {len(files)} images could be read")
    images = torch.from_numpy(np.stack([arrays[i] for i in ok])).permute(0, 3, 1, 2).contiguous()
    return images, ok


PREPARE_AGAIN = "run the preprocess stage again (dvc repro -f preprocess)"


def load_split(path):
    """-> (images uint8 (N, 3, S, S), labels int64 (N,)) as written by `preprocess`."""
    with reading(path, PREPARE_AGAIN):
        tensors = load_file(str(path))
        images, labels = tensors["images"], tensors["labels"]
        if not (images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3
                and labels.dtype == torch.int64 and labels.shape == images.shape[:1]):
            raise ValueError(f"images {images.dtype} {tuple(images.shape)} and labels {labels.dtype} "
                             f"{tuple(labels.shape)} are not uint8 (N, 3, S, S) and int64 (N,)")
    return images, labels


def load_classes(path):
    """classes.json: [{"wnid", "name", "imagenet_index"}] per class, in label order."""
    with reading(path, PREPARE_AGAIN):
        classes = read_json(path)
        if not classes or not all({"wnid", "name", "imagenet_index"} <= set(c) for c in classes):
            raise ValueError("not a list of classes with wnid, name and imagenet_index")
    return classes


EVAL_SPLITS = ("val", "test")


def load_eval_splits(prepared_dir):
    """{split: (images, labels, file names)} for the evaluation splits preprocess wrote: val, and
    test when data.split made one."""
    prepared_dir = Path(prepared_dir)
    with reading(prepared_dir / "files.json", PREPARE_AGAIN):
        files = read_json(prepared_dir / "files.json")
        if not isinstance(files, dict) or not isinstance(files.get("val"), list):
            raise ValueError("no list of val files")
    splits = {s: (*load_split(prepared_dir / f"{s}.safetensors"), files[s]) for s in EVAL_SPLITS if s in files}
    for s, (_, labels, names) in splits.items():
        if len(names) != len(labels):
            raise InputError(f"{prepared_dir / 'files.json'} lists {len(names)} {s} files for the {len(labels)} "
                             f"images of {s}.safetensors: {PREPARE_AGAIN}")
    return splits


def check_splits(splits, num_classes, image_size, prepared_dir="data/prepared"):
    """Prepared tensors must be those of the current params: val and test at data.image_size (train
    is cached larger, for random crops), labels within classes.json's classes. splits: {name:
    (images, labels, ...)}."""
    for name, (images, labels, *_) in splits.items():
        side = images.shape[-1]
        if side < image_size if name == "train" else side != image_size:
            raise InputError(f"{prepared_dir}/{name}.safetensors holds {side} px images, but data.image_size="
                             f"{image_size}: {PREPARE_AGAIN}")
        if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
            raise InputError(f"{prepared_dir}/{name}.safetensors has labels outside the {num_classes} classes of "
                             f"classes.json: {PREPARE_AGAIN}")


# ---------------------------------------------------------------------------------------------
# tensors for the model

def normalize(images, mean, std):
    """uint8 (B, 3, H, W) -> float32 normalised with the model's mean and std."""
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std  # float input (augmented batches) works too


def random_resized_crop_flip(images, size, rand, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3),
                             hflip=0.5):
    """RandomResizedCrop + horizontal flip for a whole batch in one grid_sample call.

    images: uint8 or float (B, 3, S, S) -> float32 (B, 3, size, size), values still in [0, 255].
    rand: (B, 5) uniform numbers (area, aspect, x, y, flip), drawn by the caller so that every
    rank of a distributed run can draw them for the global batch and take its own slice."""
    B = images.shape[0]
    rand = rand.to(images.device)
    area = scale[0] + (scale[1] - scale[0]) * rand[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand[:, 1]
    w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)  # crop width as a fraction of S
    h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    cx = (1 - w) * (2 * rand[:, 2] - 1)  # crop centre in grid coordinates [-1, 1]
    cy = (1 - h) * (2 * rand[:, 3] - 1)
    sign = torch.where(rand[:, 4] < hflip, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=images.device)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, (B, 3, size, size), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def center_crop(images, size):
    """(B, 3, S, S) -> (B, 3, size, size). On the train cache (resized to size / crop_pct) this is
    timm's eval view of the image up to a one-pixel rounding shift of the crop window."""
    top = int(round((images.shape[-1] - size) / 2))
    return images[..., top:top + size, top:top + size]
