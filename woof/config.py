"""The pipeline's configuration: params.yaml read into one typed dataclass per section, checked
before any expensive step.

params.yaml is the one source of defaults: no field below has a default, so a missing key, a
misspelt one or a value of the wrong kind is an error that names it (`ConfigError`), raised
before data is read or a model is built. Code reads `cfg.lora.rank`, never `.get("rank", 8)`.
"""
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from woof.errors import ParamError


class ConfigError(ParamError):
    """A param that is missing, unknown or out of range (the message names it)."""


def _check(ok, must):
    """Field metadata: a predicate on the (type-checked) value, and what it must be, for the error."""
    return field(metadata={"ok": ok, "must": must})


def _positive(must="a positive integer"):
    return _check(lambda v: v >= 1, must)


def _at_least_0():
    return _check(lambda v: v >= 0, ">= 0")


def _seed():
    return _check(lambda v: 0 <= v < 2**64, "an integer in [0, 2**64)")  # what torch.manual_seed takes


def _one_of(*choices):
    return _check(lambda v: v in choices, "one of " + ", ".join(choices))


def _regex(v):
    try:
        re.compile(v)
        return True
    except re.error:
        return False


@dataclass(frozen=True)
class Fetch:
    url: str = _check(bool, "a URL or a local path")
    sha256: str | None = _check(lambda v: v is None or re.fullmatch(r"[0-9a-fA-F]{64}", v),
                                "null or 64 hex digits")


@dataclass(frozen=True)
class Model:
    name: str
    weights: str | None  # a local file; null: timm's from the hub (or $WOOF_WEIGHTS)
    head_init: str = _one_of("imagenet", "random")


@dataclass(frozen=True)
class Data:
    split: str = _one_of("clean_test", "official")
    # The model's own lower bound (its patch size) is checked in woof.models.check_image_size.
    # At most 1024: the decoded images stay in memory, and a ViT's position embedding grows as its square.
    image_size: int = _check(lambda v: 32 <= v <= 1024, "an integer in [32, 1024]")
    train_fraction: float = _check(lambda v: 0 < v <= 1, "in (0, 1]")
    seed: int = _seed()


@dataclass(frozen=True)
class Train:
    precision: str = _one_of("fp32", "bf16", "auto")  # auto: bf16 where it is native (woof.step.native_bf16)
    compile: bool  # torch.compile (inductor) the training and evaluation forward
    device: str = _one_of("auto", "cpu", "cuda")
    launcher: str = _check(lambda v: v.split()[:1] in (["python"], ["python3"], ["torchrun"]),
                           '"python", "python3" or "torchrun ..."')


@dataclass(frozen=True)
class Recipe:
    """How a method trains: what train_full and train_lora share."""
    epochs: int = _positive()
    batch_size: int = _positive()
    lr: float = _check(lambda v: v > 0, "> 0")
    weight_decay: float = _at_least_0()
    warmup_epochs: float = _at_least_0()
    label_smoothing: float = _check(lambda v: 0 <= v < 1, "in [0, 1)")
    crop_scale: tuple[float, float] = _check(lambda v: 0 < v[0] <= v[1] <= 1, "[min, max] with 0 < min <= max <= 1")
    hflip: float = _check(lambda v: 0 <= v <= 1, "a probability in [0, 1]")
    seed: int = _seed()
    trainable: list[str] = _check(bool, 'a non-empty list, e.g. [all] or [head]')
    # An exponential moving average of the weights, evaluated and saved instead of them (null: off).
    ema_decay: float | None = _check(lambda v: v is None or 0 < v < 1, "null or in (0, 1), e.g. 0.999")


@dataclass(frozen=True)
class Full(Recipe):
    freeze_blocks: int = _at_least_0()  # the model's own block count is checked in set_trainable
    pretrained: bool
    # Layer-wise lr decay (timm's layer_decay; null: one lr for every layer): block k of D trains at
    # lr * layer_decay^(D - k), the head at lr.
    layer_decay: float | None = _check(lambda v: v is None or 0 < v <= 1, "null or in (0, 1], e.g. 0.75")


@dataclass(frozen=True)
class Lora(Recipe):
    trainable: list[str]  # besides the adapters; [] trains the adapters alone (woof.lora.apply_lora)
    rank: int = _positive()
    alpha: float = _check(lambda v: v > 0, "> 0")
    dropout: float = _check(lambda v: 0 <= v < 1, "in [0, 1)")
    rslora: bool
    targets: str = _check(_regex, "a valid regular expression over module names")
    dora: bool  # DoRA: a learnt magnitude per output channel times the adapted direction (woof.lora)


@dataclass(frozen=True)
class Evaluate:
    batch_size: int = _positive()  # inference only: it changes speed, never results


@dataclass(frozen=True)
class Attention:
    num_images: int = _positive()
    seed: int = _seed()


@dataclass(frozen=True)
class Cost:
    batch_size: int = _positive()
    freeze_blocks: int | None = _check(lambda v: v is None or v >= 1, "null or a positive integer")


@dataclass(frozen=True)
class Robustness:
    """ImageWoof-C (woof/corrupt.py) and the WiSE-FT path (woof.drift.interpolate)."""
    corruptions: list[str] = _check(lambda v: bool(v) and len(set(v)) == len(v), "a non-empty list without repeats")
    severities: list[int] = _check(lambda v: bool(v) and len(set(v)) == len(v) and all(1 <= s <= 5 for s in v),
                                   "a non-empty list of severities in 1..5 without repeats")
    seed: int = _seed()
    alphas: list[float] = _check(lambda v: 0 in v and 1 in v and all(0 <= a <= 1 for a in v),
                                 "a list of weights in [0, 1] that holds 0 and 1 (the two ends)")
    path_severity: int = _check(lambda v: 1 <= v <= 5, "a severity in 1..5")


@dataclass(frozen=True)
class Calibration:
    bins: int = _check(lambda v: 2 <= v <= 100, "an integer in [2, 100]")


@dataclass(frozen=True)
class Config:
    fetch: Fetch
    model: Model
    data: Data
    train: Train
    full: Full
    lora: Lora
    evaluate: Evaluate
    attention: Attention
    cost: Cost
    robustness: Robustness
    calibration: Calibration

    def method(self, name):
        """The Recipe of a training method: "full" or "lora"."""
        if name not in ("full", "lora"):
            raise ConfigError(f"unknown training method {name!r}: full or lora")
        return getattr(self, name)

    def to_dict(self):
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# parsing

def _value(where, typ, v):
    """v as `typ`, or a ConfigError naming `where`. YAML 1.1 reads 1e-3 (no dot) as a string:
    numeric strings are accepted for floats."""
    args = typing.get_args(typ)
    if type(None) in args:  # X | None
        return None if v is None else _value(where, next(a for a in args if a is not type(None)), v)
    origin = typing.get_origin(typ)
    if origin in (list, tuple):
        n = len(args) if origin is tuple else None
        if not isinstance(v, (list, tuple)) or (n and len(v) != n):
            raise ConfigError(f"params.yaml: {where} must be a list{f' of {n}' if n else ''}, got {v!r}")
        return origin(_value(f"{where}[{i}]", args[0], x) for i, x in enumerate(v))
    if typ is float and isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if typ is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        if not math.isfinite(v):  # .nan and .inf pass every range check below
            raise ConfigError(f"params.yaml: {where} must be a finite number, got {v!r}")
        return v  # an integer is a number: kept as written (alpha: 16 stays 16 in names and tables)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[typ]
        raise ConfigError(f"params.yaml: {where} must be {kind}, got {v!r}")
    return v


def _section(cls, name, raw):
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: section {name} is missing (or not a mapping)")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"params.yaml: unknown key {name}.{unknown[0]} (the {name} section has "
                          f"{', '.join(sorted(known))})")
    hints, values = typing.get_type_hints(cls), {}
    for f in fields(cls):
        where = f"{name}.{f.name}"
        if f.name not in raw:
            raise ConfigError(f"params.yaml: {where} is missing")
        v = _value(where, hints[f.name], raw[f.name])
        if "ok" in f.metadata and not f.metadata["ok"](v):
            raise ConfigError(f"params.yaml: {where} must be {f.metadata['must']}, got {raw[f.name]!r}")
        values[f.name] = v
    return cls(**values)


def parse(params):
    """A params dict (as in params.yaml) -> Config, or ConfigError naming the first bad param."""
    if not isinstance(params, dict):
        raise ConfigError("params.yaml must be a mapping of sections")
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(params) - set(hints))
    if unknown:
        raise ConfigError(f"params.yaml: unknown section {unknown[0]} (expected {', '.join(hints)})")
    cfg = Config(**{name: _section(cls, name, params.get(name)) for name, cls in hints.items()})
    if cfg.full.warmup_epochs > cfg.full.epochs or cfg.lora.warmup_epochs > cfg.lora.epochs:
        bad = "full" if cfg.full.warmup_epochs > cfg.full.epochs else "lora"
        raise ConfigError(f"params.yaml: {bad}.warmup_epochs must be <= {bad}.epochs")
    return cfg


def load(path="params.yaml"):
    """params.yaml -> Config (validated)."""
    import yaml
    from woof.io import load_params
    if not Path(path).is_file():
        raise ConfigError(f"{path} not found: run from the project's folder")
    try:
        params = load_params(path)
    except yaml.YAMLError as e:  # a tab, an unclosed bracket, a bad indent (also from `dvc exp run -S`)
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path} is not valid YAML{at} ({getattr(e, 'problem', None) or e}): fix that line"
                          ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file: restore it (`git checkout {path}`)") from None
    return parse(params)
