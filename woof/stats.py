"""Confidence intervals and paired tests for accuracies measured on the same images.

Two models evaluated on the same images make correlated errors, so they are compared with
McNemar's exact test (on the images where exactly one of them is right) and a paired bootstrap of
the accuracy difference, not with two independent error bars. Distributions come from scipy.stats.
"""
import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # the significance level the reports use
BOOTSTRAP_RESAMPLES = 10_000


def accuracy_ci(correct, confidence=CONFIDENCE):
    """Wilson score interval of an accuracy: correct is a 0/1 (or bool) vector, one per image.
    -> (accuracy, low, high) as fractions."""
    correct = np.asarray(correct, dtype=bool)
    k, n = int(correct.sum()), len(correct)
    if n == 0:
        raise ValueError("accuracy of no images")
    ci = stats.binomtest(k, n).proportion_ci(confidence, method="wilson")
    return k / n, float(ci.low), float(ci.high)


def mean_ci(scores, confidence=CONFIDENCE, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Mean of per-image scores in [0, 1] with a percentile-bootstrap interval over the images.
    -> (mean, low, high)."""
    x = np.asarray(scores, np.float64)
    if np.ptp(x) == 0:
        return float(x.mean()), float(x.mean()), float(x.mean())
    ci = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
    return float(x.mean()), float(ci.low), float(ci.high)


def mcnemar(correct_a, correct_b):
    """McNemar's exact test of two models on the same images.

    -> {"a_only": images only A gets right, "b_only": only B, "p_value": two-sided exact p}.
    Under the null both kinds of disagreement are equally likely, so a_only ~ Binomial(a_only +
    b_only, 1/2); images both get right or both get wrong carry no information about the difference."""
    a, b = _paired(correct_a, correct_b)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def paired_difference_ci(correct_a, correct_b, confidence=CONFIDENCE, resamples=BOOTSTRAP_RESAMPLES,
                         seed=0):
    """Accuracy of A minus accuracy of B with a paired percentile-bootstrap interval (images are
    resampled, each carrying both models' results). -> (difference, low, high) as fractions."""
    a, b = _paired(correct_a, correct_b)
    d = a.astype(np.float64) - b.astype(np.float64)  # (N,) in {-1, 0, 1}
    if not d.any():  # every image agrees: the difference is exactly 0 in every resample
        return 0.0, 0.0, 0.0
    res = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=resamples,
                          method="percentile", random_state=np.random.default_rng(seed))
    return float(d.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare_paired(correct_a, correct_b, alpha=ALPHA):
    """Everything the reports say about A against B on the same images, as one JSON-ready dict."""
    test = mcnemar(correct_a, correct_b)
    diff, low, high = paired_difference_ci(correct_a, correct_b)
    return {"n": len(correct_a), "difference": diff, "difference_ci": [low, high], **test,
            "significant": test["p_value"] < alpha}


def paired_scores(score_a, score_b, alpha=ALPHA, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """A against B from one score per underlying image each (e.g. the share of an image's K
    corrupted copies a model gets right): the mean difference with a percentile bootstrap over
    images and the two-sided p of a paired permutation (sign-flip) test. Resampling the images,
    not the N x K image-corruption pairs, respects that the copies of one image are not independent."""
    a, b = np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need one value per image for both models, got {a.shape} and {b.shape}")
    d = a - b
    if not d.any():
        return {"n": len(d), "difference": 0.0, "difference_ci": [0.0, 0.0], "p_value": 1.0, "significant": False}
    rng = np.random.default_rng(seed)
    ci = stats.bootstrap((d,), np.mean, confidence_level=1 - alpha, n_resamples=resamples,
                         method="percentile", random_state=rng).confidence_interval
    p = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                               vectorized=True, n_resamples=resamples, random_state=rng).pvalue
    return {"n": len(d), "difference": float(d.mean()), "difference_ci": [float(ci.low), float(ci.high)],
            "p_value": float(p), "significant": bool(p < alpha)}


def holm(p_values):
    """Holm's step-down adjustment of p-values tested together: the k-th smallest is multiplied by
    (m - k + 1), then made non-decreasing in that order. Comparing the adjusted p to ALPHA keeps the
    chance of any false "significant" among the m tests at ALPHA. -> adjusted p's, in input order."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p)
    step = np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))
    out = np.empty_like(p)
    out[order] = np.minimum(step, 1.0)
    return out.tolist()


def _paired(correct_a, correct_b):
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired results need one value per image for both models, got {a.shape} and {b.shape}")
    return a, b
