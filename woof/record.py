"""The experiment programme's grid and its record: what runs there are, what each one recorded,
and which run of each method is val-best. Pure data (pandas, no torch), so the compare stage reads
the record without depending on any training code; woof.programme runs what the record lacks.

The record is metrics/experiments.csv (one row per run: what differs from params.yaml, val and
test top-1/top-5 with 95 % CIs, minutes, img/s, trainable parameters, peak memory, status, the
sha256 of the archive and of the weights it was trained on, git revision, hardware) and
metrics/experiments/<name>.json beside it (the per-epoch history and each image's prediction on
val and test). The accuracy columns are computed from the per-image results (`accuracy_columns`),
so a row and its file cannot disagree.
"""
import json
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pandas as pd

from woof.errors import reading
from woof.io import atomic_path, read_json
from woof.stats import accuracy_ci

RECORD = Path("metrics/experiments.csv")
DETAILS = Path("metrics/experiments")
ALPHA_PER_RANK = 2  # alpha = 2r: LoRA's scale alpha/r stays 2 (the default 16/8) across ranks
SEEDS = (1, 2)      # extra seeds of the val-best configurations (seed 0 is the grid run itself)
LORA_LR = 3e-4      # the rank block's learning rate (params.yaml's default when the programme was set)
# Every run trains in fp32 eager, as the programme's first runs did, whatever params.yaml's
# throughput defaults: runs of one programme differ only by their own overrides. The precision
# block measures what those defaults cost in accuracy.
PINNED = {"train.precision": "fp32", "train.compile": False}
FAST = {"train.precision": "auto", "train.compile": True}  # bf16 where it is native, compiled
SCRATCH = {"full.pretrained": False, "full.lr": 5e-4}  # a ViT from scratch needs a far larger lr; not tuned
# The CNN backbone (issue "second round"): Apple's MobileOne-S0 in its fused inference form, at its
# own data config (224 px, bilinear, crop 0.875); LoRA on its 1x1 (pointwise) convolutions, the odd
# modules of each stage (the even ones are depthwise: grouped, which LoRA does not adapt).
CNN = {"model.name": "mobileone_s0", "data.image_size": 224}
CNN_POINTWISE = r"stages\.\d+\.\d*[13579]\.reparam_conv"


@dataclass
class Run:
    name: str
    block: str
    method: str                      # full | lora | zero_shot
    overrides: dict = field(default_factory=dict)  # dotted params keys -> value

    def params(self, base):
        """params (as in params.yaml) with this run's overrides applied."""
        p = json.loads(json.dumps(base))  # a deep copy
        for key, value in self.overrides.items():
            section, name = key.split(".", 1)
            if name not in p.get(section, {}):
                raise KeyError(f"run {self.name}: {key} is not a param of params.yaml")
            p[section][name] = value
        return p


def base_params(params):
    """params.yaml as the programme's runs start from it: with PINNED applied."""
    return Run("base", "", "", PINNED).params(params)


def _lora(rank, **extra):
    return {"lora.rank": rank, "lora.alpha": ALPHA_PER_RANK * rank, "lora.lr": LORA_LR, **extra}


def programme():
    """Every run of the programme, cheapest and most informative first."""
    runs = [Run("zero-shot", "baseline", "zero_shot")]
    runs += [Run(f"probe-lr{lr:g}", "probe", "full", {"full.trainable": ["head"], "full.lr": lr})
             for lr in (1e-4, 1e-3, 1e-2)]  # cached features: about a minute each
    # The two grids alternate, the widest spans first, so that a partial programme already
    # brackets both methods' optimum.
    full = [Run(f"full-lr{lr:g}", "full-lr", "full", {"full.lr": lr}) for lr in (5e-5, 2e-5, 1e-4, 2e-4)]
    ranks = [Run(f"lora-r{r}", "lora-rank", "lora", _lora(r)) for r in (8, 32, 2, 64, 1, 16, 4)]
    runs += [r for pair in zip_longest(full, ranks) for r in pair if r is not None]
    runs += [Run(f"lora-r{r}-lr{lr:g}", "lora-lr", "lora", _lora(r, **{"lora.lr": lr}))
             for r in (2, 8, 32) for lr in (1e-4, 1e-3)]
    runs += [Run("fast-full", "precision", "full", FAST), Run("fast-lora", "precision", "lora", FAST)]
    runs += [Run(f"freeze-{k}", "freeze", "full", {"full.freeze_blocks": k}) for k in (4, 8)]
    runs += [Run("scratch", "scratch", "full", SCRATCH)]
    for f in (0.1, 0.2, 0.5):
        runs += [Run(f"fraction{f:g}-full", "fraction", "full", {"data.train_fraction": f}),
                 Run(f"fraction{f:g}-lora", "fraction", "lora", {"data.train_fraction": f}),
                 Run(f"fraction{f:g}-scratch", "fraction", "full", {"data.train_fraction": f, **SCRATCH})]
    return runs + second_round()


def second_round():
    """The second round: the standard ViT fine-tuning recipe (layer-wise lr decay, then EMA on its
    val-best), DoRA against LoRA, and a CNN backbone. The CNN runs first: they are the cheapest.
    Layer decay at base lr 1e-4: with decay 0.75 the 12 blocks' mean lr is 1e-4 * 0.26, near the
    uniform grid's val-best 2e-5, while the head trains 5x faster; 2e-4 brackets it from above."""
    runs = [Run("cnn-zero-shot", "cnn", "zero_shot", CNN)]
    runs += [Run(f"cnn-probe-lr{lr:g}", "cnn", "full", {**CNN, "full.trainable": ["head"], "full.lr": lr})
             for lr in (1e-3,)]
    runs += [Run(f"cnn-full-lr{lr:g}", "cnn", "full", {**CNN, "full.lr": lr}) for lr in (1e-4, 3e-4, 1e-3)]
    runs += [Run(f"cnn-lora-r{r}", "cnn", "lora", {**CNN, **_lora(r), "lora.lr": 1e-3, "lora.targets": CNN_POINTWISE})
             for r in (4, 16, 32)]
    runs += [Run(f"full-llrd{d:g}-lr{lr:g}", "full-llrd", "full", {"full.layer_decay": d, "full.lr": lr})
             for d, lr in ((0.75, 1e-4), (0.65, 1e-4), (0.85, 1e-4), (0.75, 2e-4))]
    runs += [Run(f"dora-r{r}-lr{lr:g}", "dora", "lora", {**_lora(r), "lora.lr": lr, "lora.dora": True})
             for r in (8, 32) for lr in (1e-4, 3e-4, 1e-3)]
    return runs


BLOCKS = list(dict.fromkeys([r.block for r in programme()] + ["seeds"]))
# What a method family is: the blocks its runs are in (selection, figures and labels use these).
FAMILIES = {"full": ("full-lr",), "lora": ("lora-rank", "lora-lr"), "probe": ("probe",),
            "freeze": ("freeze",), "scratch": ("scratch",), "llrd": ("full-llrd",), "dora": ("dora",)}
SEEDED = ("full", "lora", "llrd", "dora")  # the families whose val-best configuration is rerun at SEEDS


def family(block):
    return next((f for f, blocks in FAMILIES.items() if block in blocks),
                "zero_shot" if block == "baseline" else block)


def reference_runs(params):
    """Each family's run on every training image at params.yaml's own configuration (the 100 %
    points of the fraction curves; full is also the freezing curve's k = 0): the run whose
    overrides leave the programme's base params unchanged, or that differs only by SCRATCH."""
    base = base_params(params)
    by_params = {}
    for run in programme():
        if run.block in FAMILIES["full"] + FAMILIES["lora"] and run.params(base) == base:
            by_params.setdefault(run.method, run.name)
    scratch = [r.name for r in programme() if r.block == "scratch"]
    if scratch:  # a programme without the scratch block (e.g. a test's) has no scratch reference
        by_params["scratch"] = scratch[0]
    return by_params


def cnn_kind(run):
    """What a CNN-block run is: zero_shot, probe (only the head trains), full or lora."""
    return "probe" if run.overrides.get("full.trainable") == ["head"] else run.method


def extra_seeds(seeds):
    """The seeds a configuration is rerun at: seed 0 is its grid run."""
    return [s for s in seeds if s != 0]


def split_seed(name):
    """A run's configuration and seed from its name: seed_runs names a rerun "<config>-seed<k>";
    any other name is its configuration's grid run, seed 0."""
    config, sep, k = name.rpartition("-seed")
    return (config, int(k)) if sep and k.isdigit() else (name, 0)


def seed_runs(record, seeds=SEEDS):
    """The val-best configuration of each SEEDED family at `seeds`; none until its grid is complete
    (layer decay's grid includes its EMA run, which may be the val-best configuration)."""
    configs = programme() + ema_runs(record)
    by_name = {r.name: r for r in configs}
    runs = []
    for fam in SEEDED:
        best = select(record, FAMILIES[fam], configs)
        if best is None:
            continue
        base = by_name[best["name"]]
        runs += [Run(f"{base.name}-seed{s}", "seeds", base.method, {**base.overrides, f"{base.method}.seed": s})
                 for s in extra_seeds(seeds)]
    return runs


# The EMA of the weights on the val-best layer-decay run: 1,355 steps in 5 epochs; a decay of 0.998
# averages over about the last 500 (1.8 epochs), not the early, still pretrained-like weights.
EMA_DECAY = 0.998


def ema_runs(record):
    """The val-best layer-decay configuration with an EMA of its weights (block full-llrd, once
    that grid is complete): the rest of the standard ViT recipe."""
    best = select(record, FAMILIES["llrd"])
    if best is None:
        return []
    base = {r.name: r for r in programme()}[best["name"]]
    return [Run(f"{base.name}-ema", "full-llrd", "full", {**base.overrides, "full.ema_decay": EMA_DECAY})]


def all_runs(record, seeds=SEEDS):
    """Every run the programme knows of by now: the grid, then the EMA and seed runs of the grids
    the record has completed."""
    return programme() + ema_runs(record) + seed_runs(record, seeds)


def todo(record, blocks=None, rerun=(), seeds=SEEDS):
    """The runs still to do, in order (EMA and seeds join once their grids are complete); `blocks`
    may name blocks or single runs, and they run in the order named: `dora-r32-lr0.0001 dora` runs
    that one first, then the rest of its block in grid order."""
    done = set(record.name) - set(rerun)
    runs = [r for r in all_runs(record, seeds) if r.name not in done]
    if not blocks:
        return runs
    asked = list(blocks)
    runs = [r for r in runs if r.block in asked or r.name in asked]
    return sorted(runs, key=lambda r: min(asked.index(x) for x in (r.name, r.block) if x in asked))


def still_to_run(record, seeds=SEEDS):
    """How many runs the programme still lacks, counting the seeds of grids not yet complete."""
    configs = programme() + ema_runs(record)

    def pending(fam):  # a grid of the programme (with its EMA run, once known) that is not complete yet
        return any(r.block in FAMILIES[fam] for r in configs) and select(record, FAMILIES[fam], configs) is None
    ema_unknown = pending("llrd") and not ema_runs(record)
    unknown = sum(pending(m) for m in SEEDED) * len(extra_seeds(seeds)) + ema_unknown
    return len(todo(record, seeds=seeds)) + unknown


# ------------------------------------------------------------------ the record

COLUMNS = ["name", "block", "method", "overrides", "status", "error",
           "val_top1", "val_top1_lo", "val_top1_hi", "val_top5", "val_n",
           "test_top1", "test_top1_lo", "test_top1_hi", "test_top5", "test_n",
           # the clean test images' copies under robustness.corruptions x severities (woof/corrupt.py)
           "corrupted_top1", "corrupted_top1_lo", "corrupted_top1_hi", "corrupted_top5", "corrupted_n",
           "train_images", "train_minutes", "train_images_per_s", "trainable_params", "total_params",
           "peak_memory_mb", "epochs", "precision", "archive_sha256", "weights_sha256", "corrupted_sha",
           "git_rev", "hardware", "finished"]


COUNTS = ["val_n", "test_n", "corrupted_n", "train_images", "trainable_params", "total_params", "epochs"]


def read_record(path=RECORD):
    """The record as a DataFrame (empty when there is none yet); a garbled file is one error line."""
    if not Path(path).exists():
        return pd.DataFrame(columns=COLUMNS)
    with reading(path, "restore it (git checkout metrics/experiments.csv) or delete it to start afresh"):
        df = pd.read_csv(path, keep_default_na=False, na_values=[""])
        missing = [c for c in COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"no column {missing[0]}")
    return df


def write_row(row, path=RECORD):
    """Add (or, for a rerun, replace) one run's row; rows stay in programme order."""
    df = read_record(path)
    df = pd.concat([df[df.name != row["name"]], pd.DataFrame([row])], ignore_index=True)
    order = {r.name: i for i, r in enumerate(programme())}
    df["_order"] = [order.get(n, len(order)) for n in df.name]
    df = df.sort_values(["_order", "name"], kind="stable").drop(columns="_order")
    df = df.reindex(columns=COLUMNS).astype({c: "Int64" for c in COUNTS})  # 12500, not 12500.0 beside empty cells
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def from_bits(bits):
    """A per-image "0110..." string (the details' `correct`) -> bool vector."""
    return np.frombuffer(bits.encode(), np.uint8) == ord("1")


def accuracy_columns(correct, top5):
    """The record's accuracy columns from the per-image 0/1 strings of one run ({split: "0110..."})
    and its top-5 ({split: fraction}, which the strings cannot give)."""
    row = {}
    for split, bits in correct.items():
        acc, lo, hi = accuracy_ci(from_bits(bits))
        row.update({f"{split}_top1": acc, f"{split}_top1_lo": lo, f"{split}_top1_hi": hi,
                    f"{split}_top5": top5[split], f"{split}_n": len(bits)})
    return row


def load(path=RECORD, details_dir=DETAILS):
    """The record with its overrides parsed, and each successful run's per-image correctness
    {name: {split: (bool vector, digest of the file list)}}."""
    df = read_record(path)
    df["overrides"] = [json.loads(o) if isinstance(o, str) and o else {} for o in df.overrides]
    correct = {}
    for name in df.loc[df.status == "ok", "name"]:
        p = Path(details_dir) / f"{name}.json"
        if p.exists():
            d = read_json(p)
            correct[name] = {s: (from_bits(c), d["files_sha"][s])
                             for s, c in d.get("correct", {}).items()}
    return df, correct


def val_best(rows):
    """The one selection rule: the successful row with the best val top-1 (ties: fewer trainable
    parameters), or None."""
    d = rows[rows.status == "ok"]
    if not len(d):
        return None
    return d.sort_values(["val_top1", "trainable_params"], ascending=[False, True]).iloc[0].to_dict()


def best(record, fam):
    """The val-best successful run of a family, complete or not."""
    return val_best(record[record.block.isin(FAMILIES[fam])])


def select(record, blocks, runs=None):
    """The val-best run of `blocks`, or None while any run of those blocks is still missing (`runs`:
    the runs to consider, by default the grid, programme())."""
    names = {r.name for r in (programme() if runs is None else runs) if r.block in blocks}
    d = record[record.name.isin(names)]
    return val_best(d) if len(d) == len(names) else None
