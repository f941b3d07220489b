"""How woof names things and writes numbers: one label per method and split, one formatter per
kind of number. The figures (woof.figures), the run table (woof.compare) and the paper (woof.paper)
all use these, so a method is called the same everywhere and 0.9 is always "90.0 %"."""
import math

# Pipeline methods (zero_shot, full, lora) and the programme's families (woof.record.FAMILIES).
LABELS = {"zero_shot": "zero-shot", "full": "full fine-tuning", "lora": "LoRA", "probe": "linear probe",
          "linear_probe": "linear probe", "freeze": "frozen first k blocks", "frozen": "frozen-k",
          "scratch": "from scratch", "llrd": "full fine-tuning with layer decay", "dora": "DoRA"}
SPLIT_NAMES = {"test": "clean test", "val": "validation"}


def label(method, capital=False):
    text = LABELS.get(method, method)
    return text[0].upper() + text[1:] if capital else text


def missing(x):
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x, digits=1):
    """A fraction as a percentage: 0.9 -> "90.0 %"."""
    return "n/a" if missing(x) else f"{100 * x:.{digits}f} %"


def pct_ci(x, lo, hi, digits=1):
    return f"{pct(x, digits)} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def points(x, digits=1):
    """A difference of fractions in signed percentage points: 0.012 -> "+1.2"."""
    return f"{100 * x:+.{digits}f}"


def pvalue(p):
    if missing(p):  # a test with nothing to test, e.g. Welch's t on samples without spread
        return "p undefined"
    return f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def mean_std(m):
    """Percent, from a {"mean", "std"} of fractions (woof.compare seeds)."""
    return f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}" if m["std"] is not None else f"{100 * m['mean']:.1f}"


def count(n):
    return f"{int(n):,}"
