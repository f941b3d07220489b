"""Confidence intervals and paired tests against hand-computed cases."""
import numpy as np
import pytest

from woof.stats import accuracy_ci, compare_paired, holm, mcnemar, paired_difference_ci


def pair(both_right, a_only, b_only, both_wrong):
    """Per-image correctness of two models with the given counts of each kind of image."""
    a = [1] * both_right + [1] * a_only + [0] * b_only + [0] * both_wrong
    b = [1] * both_right + [0] * a_only + [1] * b_only + [0] * both_wrong
    return np.array(a, bool), np.array(b, bool)


def test_wilson_interval_by_hand():
    # p = 0.8, n = 10, z = 1.96: centre (p + z^2/2n) / (1 + z^2/n), half-width
    # z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n) -> 0.4902 .. 0.9433
    acc, lo, hi = accuracy_ci([1] * 8 + [0] * 2)
    assert acc == 0.8 and lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    acc, lo, hi = accuracy_ci([1] * 50)  # all right: the interval still has width
    assert acc == 1.0 and hi == pytest.approx(1.0) and lo == pytest.approx(50 / (50 + 1.96 ** 2), abs=1e-3)
    with pytest.raises(ValueError):
        accuracy_ci([])


def test_mcnemar_exact_by_hand():
    a, b = pair(80, 10, 2, 8)
    t = mcnemar(a, b)
    # p = 2 P(X <= 2), X ~ Binomial(12, 1/2) = 2 (1 + 12 + 66) / 4096
    assert (t["a_only"], t["b_only"]) == (10, 2)
    assert t["p_value"] == pytest.approx(2 * 79 / 4096)
    assert mcnemar(b, a)["p_value"] == pytest.approx(t["p_value"])  # symmetric


def test_equal_accuracy_with_many_disagreements_is_not_significant():
    a, b = pair(50, 20, 20, 10)  # both 70 %, yet they disagree on 40 images
    t = compare_paired(a, b)
    assert (t["a_only"], t["b_only"], t["difference"]) == (20, 20, 0.0)
    assert t["p_value"] == pytest.approx(1.0) and not t["significant"]
    lo, hi = t["difference_ci"]
    assert lo < -0.05 and hi > 0.05  # the disagreements make the difference uncertain


def test_identical_models():
    a, _ = pair(90, 0, 0, 10)
    assert compare_paired(a, a) | {} == {"n": 100, "difference": 0.0, "difference_ci": [0.0, 0.0],
                                         "a_only": 0, "b_only": 0, "p_value": 1.0, "significant": False}


def test_paired_bootstrap_interval_matches_the_normal_approximation():
    a, b = pair(80, 10, 2, 8)
    t = compare_paired(a, b)
    # Var of the mean of d in {-1, 0, 1}: (E[d^2] - E[d]^2) / n = (0.12 - 0.0064) / 100
    half = 1.96 * np.sqrt((0.12 - 0.08 ** 2) / 100)
    lo, hi = t["difference_ci"]
    assert t["difference"] == pytest.approx(0.08) and t["significant"]
    assert lo == pytest.approx(0.08 - half, abs=0.015) and hi == pytest.approx(0.08 + half, abs=0.015)
    assert paired_difference_ci(a, b) == paired_difference_ci(a, b)  # seeded


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="one value per image"):
        mcnemar([1, 0, 1], [1, 0])


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04, 0.5 times 4, 3, 2, 1 -> 0.04, 0.06, 0.08, 0.5; then running max
    assert holm([0.04, 0.5, 0.01, 0.02]) == pytest.approx([0.08, 0.5, 0.04, 0.06])
    assert holm([0.03, 0.011]) == pytest.approx([0.03, 0.022])  # the step-down keeps order: max(0.022, 0.03)
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])  # made monotone: never below a smaller p's
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.016]) == pytest.approx([0.016])  # one test: nothing to adjust
