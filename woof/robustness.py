"""The robustness stage's measurements: every model on ImageWoof-C (woof/corrupt.py), and the
WiSE-FT path between the pretrained and each fine-tuned model (woof.drift.interpolate), with their
figures. The paired tests between models are the compare stage's (woof.compare.beyond)."""
import copy

import numpy as np
import torch

from woof import corrupt
from woof.drift import interpolate
from woof.evaluate import compiled, evaluate_models, predict, ranked
from woof.io import pyplot, save_figure
from woof.labels import LABELS
from woof.models import data_config


def bits(correct):
    """A bool vector as the "0110..." string the record and compare read."""
    return "".join("1" if c else "0" for c in np.asarray(correct, bool))


def correct_of(rows):
    """Per-image rows (file, actual, predicted) -> bool vector of which are right."""
    return np.array([r["actual"] == r["predicted"] for r in rows], bool)


def measure(models, splits, clean, class_names, rcfg, image_size, batch_size, precision, compile):
    """Every model on the corrupted test split, and along the path from the pretrained model
    (models["zero_shot"]) to each fine-tuned one. clean: {split: {model: bool vector}}, the
    evaluate stage's per-image results on val and test (measured once: the path's ends and the
    clean accuracies are those).

    -> (metrics for metrics/robustness.json, metrics for metrics/interpolation.json, per-image
    correctness {"corrupted": {model: bits}, "test": ..., "path_test": {model: [bits per alpha]}})."""
    images, labels, files = splits["test"]
    corrupted = corrupt.corrupted_split(images, labels, files, rcfg.corruptions, rcfg.severities, rcfg.seed)
    _, _, predictions, _ = evaluate_models(models, {"corrupted": corrupted}, class_names, image_size, batch_size,
                                           precision, compile)
    right = {**clean, "corrupted": {m: correct_of(rows) for m, rows in predictions["corrupted"].items()}}
    shape = (len(rcfg.corruptions), len(rcfg.severities), len(files))  # the corrupted split's order
    table = {m: right["corrupted"][m].reshape(shape) for m in models}
    robustness = {
        "corruptions": {c: list(corrupt.LEVELS[c]) for c in rcfg.corruptions}, "severities": list(rcfg.severities),
        "seed": rcfg.seed, "images": len(files), "fingerprint": corrupt.fingerprint(corrupted[0]),
        "models": {m: {"clean": float(right["test"][m].mean()), "mean": float(t.mean()),
                       "by_severity": t.mean(axis=(0, 2)).tolist(),
                       "by_corruption": {c: t[i].mean(axis=1).tolist() for i, c in enumerate(rcfg.corruptions)}}
                   for m, t in table.items()}}
    k = list(rcfg.severities).index(rcfg.path_severity)
    path_split = (corrupted[0].view(*shape[:2], *images.shape)[:, k].flatten(0, 1), labels.repeat(shape[0]))
    path, path_test = _path(models, splits, path_split, rcfg.alphas, right, table, k, image_size, batch_size,
                            precision, compile)
    interpolation = {"alphas": list(rcfg.alphas), "path_severity": rcfg.path_severity, "models": path}
    per_image = {"files": list(files), "corrupted": {m: bits(v) for m, v in right["corrupted"].items()},
                 "test": {m: bits(v) for m, v in right["test"].items()}, "path_test": path_test}
    return robustness, interpolation, per_image


@torch.no_grad()
def _path(models, splits, path_split, alphas, right, table, k, image_size, batch_size, precision, compile):
    """Accuracy on val, test and the path's corrupted images at each alpha; the ends are the
    pretrained and the fine-tuned model, already measured, the points between are interpolated into
    one working copy (its compiled forward reused: load_state_dict copies in place)."""
    pretrained = models["zero_shot"]
    work = copy.deepcopy(pretrained).eval()
    forward = compiled(work, compile)
    dcfg = data_config(work, image_size)
    evals = {"val": splits["val"][:2], "test": splits["test"][:2], "corrupted": path_split}
    out, path_test = {}, {}
    for m in (m for m in models if m != "zero_shot"):
        acc = {s: [] for s in evals}
        path_test[m] = []
        for a in alphas:
            end = "zero_shot" if a == 0 else m if a == 1 else None
            if end:
                got = {"val": right["val"][end], "test": right["test"][end], "corrupted": table[end][:, k].ravel()}
            else:
                work.load_state_dict(interpolate(pretrained, models[m], a))
                got = {s: (ranked(predict(work, x, dcfg, batch_size, precision=precision, forward=forward,
                                          desc=f"path {m} a={a} {s}")[0])[:, 0] == y).numpy()
                       for s, (x, y) in evals.items()}
            for s in evals:
                acc[s].append(float(got[s].mean()))
            path_test[m].append(bits(got["test"]))
        out[m] = acc
    return out, path_test


# ---------------------------------------------------------------- figures

def plot_severity(result, path):
    """Accuracy against severity (0 = clean) per model: the mean over corruptions, and one small
    panel per corruption."""
    plt = pyplot()
    corruptions = list(next(iter(result["models"].values()))["by_corruption"])
    fig, axes = plt.subplots(1, 1 + len(corruptions), figsize=(2.3 * (1 + len(corruptions)), 2.8), sharey=True)
    sev = [0] + result["severities"]
    for m, r in result["models"].items():
        axes[0].plot(sev, [r["clean"]] + r["by_severity"], "o-", ms=3, label=LABELS.get(m, m))
        for ax, c in zip(axes[1:], corruptions):
            ax.plot(sev, [r["clean"]] + r["by_corruption"][c], "o-", ms=2)
    axes[0].set_title("mean of corruptions", fontsize=9)
    axes[0].set_ylabel("top-1 (clean test images)")
    axes[0].legend(fontsize=7)
    for ax, c in zip(axes[1:], corruptions):
        ax.set_title(c.replace("_", " "), fontsize=9)
    for ax in axes:
        ax.set_xlabel("severity")
        ax.set_xticks(sev)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_path(result, path):
    """Accuracy along theta(a) = (1 - a) theta_0 + a theta_ft on val, clean test and the corrupted
    test images, one panel per fine-tuned model."""
    plt = pyplot()
    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.0), sharey=True, squeeze=False)
    names = {"val": "validation", "test": "clean test", "corrupted": f"corrupted test (severity {result['path_severity']})"}
    for ax, m in zip(axes[0], models):
        for s, acc in result["models"][m].items():
            ax.plot(result["alphas"], acc, "o-", ms=3, label=names[s])
        ax.set_title(f"zero-shot -> {LABELS.get(m, m)}", fontsize=9)
        ax.set_xlabel("a")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
