"""Beyond clean top-1: ImageWoof-C (woof.corrupt), calibration (woof.calibration), the WiSE-FT
path (woof.drift.interpolate), the per-image paired test over corrupted copies
(woof.stats.paired_scores) and what compare makes of them (woof.compare.beyond)."""
import copy
import json

import numpy as np
import pytest
import torch

from woof import calibration, compare, corrupt, drift, stats
from woof.errors import ParamError
from woof.models import create_model


def images(n=4, size=160, seed=0):
    """A gradient with a smooth texture and a little noise: every corruption has something to change."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(30, 220, size)
    t = torch.arange(size, dtype=torch.float32)
    base = (ramp[None, :] + ramp[:, None]) / 2 + 40 * torch.sin(t / 2.5)[None, :] * torch.sin(t / 3.5)[:, None]
    x = base[None, None] + 4 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("name", list(corrupt.LEVELS))
def test_corruptions_are_deterministic_and_grow_with_severity(name):
    x = images()
    assert torch.equal(corrupt.corrupt(x, name, 0), x)  # severity 0 is the clean image
    out = [corrupt.corrupt(x, name, s, seed=3) for s in corrupt.SEVERITIES]
    again = corrupt.corrupt(x, name, 5, seed=3)
    assert again.dtype == torch.uint8 and again.shape == x.shape
    assert corrupt.fingerprint(again) == corrupt.fingerprint(out[-1])  # the same bytes twice
    change = [(o.float() - x.float()).abs().mean().item() for o in out]
    assert change[0] > 0.5 and all(b > a for a, b in zip(change, change[1:])), change


def test_noise_and_contrast_change_the_pixels_by_the_intended_amount():
    gray = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)  # far from 0 and 255: no clipping at severity 1
    for s, std in zip(corrupt.SEVERITIES[:2], corrupt.LEVELS["gaussian_noise"]):
        d = corrupt.corrupt(gray, "gaussian_noise", s).float() - 128
        assert d.std().item() == pytest.approx(255 * std, rel=0.05)
    x = images()
    f = corrupt.LEVELS["contrast"][0]
    mean = (x.float() * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    want = (f * x.float() + (1 - f) * mean).clamp(0, 255)
    assert (corrupt.corrupt(x, "contrast", 1).float() - want).abs().max().item() <= 1.5  # up to rounding (of the grey mean, too)


def test_noise_depends_on_the_seed_and_the_split_is_ordered():
    x = images(n=3)
    assert not torch.equal(corrupt.corrupt(x, "gaussian_noise", 2, seed=0), corrupt.corrupt(x, "gaussian_noise", 2, seed=1))
    imgs, labels, names = corrupt.corrupted_split(x, torch.tensor([0, 1, 2]), ["a", "b", "c"], ["jpeg", "contrast"], [1, 5])
    assert imgs.shape[0] == 12 and labels.tolist() == [0, 1, 2] * 4
    assert names[:4] == ["a#jpeg-1", "b#jpeg-1", "c#jpeg-1", "a#jpeg-5"] and names[-1] == "c#contrast-5"
    assert torch.equal(imgs[9:12], corrupt.corrupt(x, "contrast", 5))


def test_unknown_corruptions_and_severities_name_the_param():
    with pytest.raises(ParamError, match="robustness.corruptions"):
        corrupt.check(["fog"], [1])
    with pytest.raises(ParamError, match="robustness.severities"):
        corrupt.check(["jpeg"], [6])


def test_severity_zero_reproduces_clean_accuracy_exactly():
    from woof.evaluate import predict
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_classes=10, img_size=48, pretrained=False).eval()
    x = images(n=8, size=48)
    cfg = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    assert torch.equal(predict(model, x, cfg)[0], predict(model, corrupt.corrupt(x, "jpeg", 0), cfg)[0])


# ---------------------------------------------------------------- calibration

def test_ece_by_hand():
    # confidences 0.9, 0.9 (one right: gap 0.4) and 0.6, 0.6 (both right: gap 0.4), each half the images
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    assert calibration.ece(probs, labels, bins=15) == pytest.approx(0.4)
    count, conf, acc = calibration.reliability(probs, labels, bins=10)
    assert count[9] == 2 and conf[9] == pytest.approx(0.9) and acc[9] == 0.5 and np.isnan(acc[0])
    # a perfectly calibrated bin has no error
    assert calibration.ece(np.array([[0.75, 0.25]] * 4), np.array([0, 0, 0, 1])) == pytest.approx(0.0)


def test_ece_agrees_with_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 10)) * 3
    labels = rng.integers(0, 10, 400)
    probs = torch.softmax(torch.tensor(logits), 1)
    want = tm.multiclass_calibration_error(probs, torch.tensor(labels), num_classes=10, n_bins=15, norm="l1").item()
    assert calibration.ece(probs.numpy(), labels, bins=15) == pytest.approx(want, abs=1e-6)


def test_temperature_scaling_lowers_the_nll_it_was_fitted_on():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    logits = rng.normal(size=(500, 10))
    logits[np.arange(500), labels] += 2.0
    logits *= 4  # overconfident
    t = calibration.fit_temperature(logits, labels)
    assert t > 1.5
    assert calibration.nll(logits, labels, t) < calibration.nll(logits, labels) - 0.1
    r = calibration.calibrate({"val": logits, "test": logits}, {"val": labels, "test": labels}, bins=15)
    assert r["temperature"] == t and r["test"]["ece_scaled"] < r["test"]["ece"]
    assert r["test"]["nll_scaled"] == pytest.approx(calibration.nll(logits, labels, t))
    json.dumps(r)  # JSON-ready (no NaN: empty bins are None)


# ---------------------------------------------------------------- the WiSE-FT path

def test_interpolation_ends_are_the_two_models_exactly():
    torch.manual_seed(0)
    pre = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, pretrained=False).eval()
    ft = create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, pretrained=False).eval()
    x = torch.randn(4, 3, 32, 32)
    work = copy.deepcopy(pre)
    with torch.no_grad():
        for a, want in ((0, pre), (1, ft)):
            work.load_state_dict(drift.interpolate(pre, ft, a))
            assert torch.equal(work(x), want(x))
        work.load_state_dict(drift.interpolate(pre, ft, 0.5))
        w = dict(work.named_parameters())["blocks.0.attn.qkv.weight"]
        want = (dict(pre.named_parameters())["blocks.0.attn.qkv.weight"] + dict(ft.named_parameters())["blocks.0.attn.qkv.weight"]) / 2
        assert torch.allclose(w, want, atol=1e-6)
    other = create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, pretrained=False)
    with pytest.raises(RuntimeError):  # another head's shape cannot be mixed in
        work.load_state_dict(drift.interpolate(pre, other, 0.5))


# ---------------------------------------------------------------- paired tests over corrupted copies

def test_paired_scores():
    rng = np.random.default_rng(0)
    a = rng.random(300)
    same = stats.paired_scores(a, a)
    assert same["p_value"] == 1.0 and same["difference"] == 0.0
    better = stats.paired_scores(np.clip(a + 0.1, 0, 1), a)
    assert better["significant"] and better["difference_ci"][0] > 0
    noise = stats.paired_scores(a, rng.permutation(a))
    assert not noise["significant"] and noise["difference_ci"][0] < 0 < noise["difference_ci"][1]


def write_beyond(root, clean, corrupted, path_val=(0.80, 0.90, 0.93, 0.92, 0.91)):
    """Synthetic robustness/calibration/interpolation outputs: n images, K = 2 corrupted copies."""
    m = root / "metrics"
    m.mkdir(exist_ok=True)
    n = len(clean["full"])
    from woof.robustness import bits as b
    rob = {"images": n, "corruptions": {"jpeg": [25], "contrast": [0.5]}, "severities": [1], "fingerprint": "x",
           "models": {k: {"clean": float(np.mean(clean[k])), "by_severity": [float(np.mean(corrupted[k]))],
                          "by_corruption": {"jpeg": [float(np.mean(corrupted[k][:n]))],
                                            "contrast": [float(np.mean(corrupted[k][n:]))]}} for k in clean}}
    bins = {"before": {"count": [1] * 15}}
    cal = {k: {"temperature": 1.5, **{s: {"ece": 0.05, "ece_scaled": 0.02, "nll": 0.4, "nll_scaled": 0.3, "bins": bins}
                                      for s in ("val", "test")}} for k in clean}
    alphas = [0, 0.25, 0.5, 0.75, 1]
    path = {"alphas": alphas, "path_severity": 1,
            "models": {k: {"val": list(path_val), "test": [0.8] * 5, "corrupted": [0.5] * 5} for k in ("full", "lora")}}
    for name, d in (("robustness", rob), ("calibration", cal), ("interpolation", path)):
        (m / f"{name}.json").write_text(json.dumps(d))
    per = {"files": [f"f{i}" for i in range(n)], "corrupted": {k: b(v) for k, v in corrupted.items()},
           "test": {k: b(v) for k, v in clean.items()},
           "path_test": {k: [b(clean[k])] * 5 for k in ("full", "lora")}}
    (root / "correct.json").write_text(json.dumps(per))
    return m, root / "correct.json"


def test_compare_beyond_pairs_per_image_and_picks_alpha_on_val(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    clean = {k: rng.random(n) < 0.9 for k in ("zero_shot", "full", "lora")}
    # LoRA keeps far more of its clean accuracy under corruption than full fine-tuning
    corrupted = {"zero_shot": rng.random(2 * n) < 0.6, "full": rng.random(2 * n) < 0.4, "lora": rng.random(2 * n) < 0.7}
    m, per = write_beyond(tmp_path, clean, corrupted)
    r = compare.beyond(m, per)
    assert r["copies"] == 2 and r["images"] == n and r["calibration_bins"] == 15
    assert r["models"]["lora"]["corrupted"] == pytest.approx(corrupted["lora"].mean())
    lo, hi = r["models"]["lora"]["corrupted_ci"]
    assert lo < corrupted["lora"].mean() < hi
    assert r["paired"]["lora_vs_full"]["significant"] and r["paired"]["lora_vs_full"]["difference"] > 0
    assert r["lora_keeps_more"]
    w = r["path"]["models"]["full"]
    assert w["best_alpha"] == 0.5 and w["best_val"] == 0.93 and w["interior_beats_ends"]["val"]
    assert not w["interior_beats_ends"]["test"]  # a flat test curve: nothing between beats the ends
    assert w["best_vs_end"]["p_value"] == 1.0
    assert compare.beyond(tmp_path / "nowhere", per) is None  # before the stages ran


def test_best_alpha_breaks_ties_towards_the_fine_tuned_model():
    assert compare.best_alpha([0, 0.5, 1], [0.9, 0.95, 0.95]) == 2
    assert compare.best_alpha([0, 0.5, 1], [0.9, 0.96, 0.95]) == 1
