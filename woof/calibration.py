"""Calibration: does a model's confidence match its accuracy? Expected calibration error over
equal-width confidence bins (Naeini et al. 2015; Guo et al. 2017), its reliability diagram, and
temperature scaling: one scalar T per model, fitted on val by minimising the negative
log-likelihood (scipy), reported on test.
"""
import numpy as np
from scipy import optimize, special

from woof.io import pyplot, save_figure


def reliability(probs, labels, bins=15):
    """(N, C) probabilities, (N,) labels -> per confidence bin [i/bins, (i+1)/bins) (the last one
    closed): (count, mean confidence, accuracy), NaN where a bin is empty."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (count, np.bincount(idx, conf, bins) / count, np.bincount(idx, correct, bins) / count)


def ece(probs, labels, bins=15):
    """Expected calibration error: sum over bins of (share of images) * |accuracy - confidence|."""
    count, conf, acc = reliability(probs, labels, bins)
    full = count > 0
    return float((count[full] * np.abs(acc[full] - conf[full])).sum() / count.sum())


def nll(logits, labels, temperature=1.0):
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    logp = special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits, labels):
    """The T > 0 minimising nll(logits / T) (searched on log T in [e^-3, e^3])."""
    res = optimize.minimize_scalar(lambda log_t: nll(logits, labels, np.exp(log_t)), bounds=(-3, 3),
                                   method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def calibrate(logits, labels, bins=15, fit_on="val"):
    """{split: logits (N, C)}, {split: labels (N,)} of one model -> {"temperature": T fitted on
    `fit_on`, split: {ece, nll, ece_scaled, nll_scaled, bins: {count, confidence, accuracy} before
    and after}}."""
    t = fit_temperature(logits[fit_on], labels[fit_on])
    out = {"temperature": t, "fit_on": fit_on}
    for split, z in logits.items():
        z = np.asarray(z, np.float64)
        y = np.asarray(labels[split])
        p, q = special.softmax(z, axis=1), special.softmax(z / t, axis=1)
        out[split] = {"ece": ece(p, y, bins), "nll": nll(z, y), "ece_scaled": ece(q, y, bins),
                      "nll_scaled": nll(z, y, t), "n": len(y),
                      "bins": {"before": _bins(p, y, bins), "after": _bins(q, y, bins)}}
    return out


def _bins(probs, labels, bins):
    count, conf, acc = reliability(probs, labels, bins)
    return {"count": count.tolist(), "confidence": _json(conf), "accuracy": _json(acc)}


def _json(v):
    return [None if np.isnan(x) else float(x) for x in v]  # JSON has no NaN


def plot(result, path, split="test", labels=None):
    """Reliability diagrams: accuracy against confidence per bin, one panel per model, before
    (solid) and after (dashed) temperature scaling; the diagonal is perfect calibration."""
    plt = pyplot()
    models = list(result)
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.3), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], models):
        r = result[m][split]
        bins = len(r["bins"]["before"]["count"])
        centres = (np.arange(bins) + 0.5) / bins
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
        for when, style in (("before", "o-"), ("after", "s--")):
            acc = np.array([np.nan if v is None else v for v in r["bins"][when]["accuracy"]])
            key = "ece" if when == "before" else "ece_scaled"
            ax.plot(centres, acc, style, ms=3, label=f"{when} T: ECE {100 * r[key]:.1f} %")
        ax.set_title(f"{(labels or {}).get(m, m)} (T = {result[m]['temperature']:.2f})", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel(f"accuracy ({split})")
    fig.tight_layout()
    save_figure(fig, path)
