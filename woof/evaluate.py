"""Inference over cached tensors and the metrics computed from its logits."""
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from woof.data import normalize


def autocast(device, precision):
    """bf16 autocast on CPU and GPU alike (this CPU has AVX512-BF16); fp32 is a no-op context."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def predict(model, images, data_cfg, batch_size=128, device="cpu", precision="fp32", desc=None,
            forward=None):
    """uint8 images (N, 3, S, S), already at the model's input size -> (float32 outputs (N, C),
    images per second). forward: what to run instead of model(x), e.g. a feature extractor."""
    model.eval()
    forward = forward or model
    logits = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None, unit="batch"):
        x = normalize(images[i:i + batch_size].to(device), data_cfg["mean"], data_cfg["std"])
        with autocast(device, precision):
            logits.append(forward(x).float().cpu())
    seconds = time.perf_counter() - start
    return torch.cat(logits), len(images) / max(seconds, 1e-9)


def classification_metrics(logits, labels, ci=False):
    """Top-1, top-5 (fractions) and mean cross-entropy of (N, C) logits against (N,) labels;
    ci: add a 95 % Wilson interval for top-1 and top-5 (top1_ci, top5_ci)."""
    k = min(5, logits.shape[1])
    hits = logits.topk(k, dim=1).indices == labels[:, None]  # (N, k)
    m = {"top1": hits[:, 0].float().mean().item(), "top5": hits.any(1).float().mean().item(),
         "loss": F.cross_entropy(logits, labels).item(), "n": len(labels)}
    if ci:
        from woof.stats import accuracy_ci
        for name, correct in (("top1", hits[:, 0]), ("top5", hits.any(1))):
            m[f"{name}_ci"] = list(accuracy_ci(correct.numpy())[1:])
    return m


def per_class_accuracy(logits, labels, num_classes):
    pred = logits.argmax(1)
    return [(pred[labels == c] == c).float().mean().item() if (labels == c).any() else float("nan")
            for c in range(num_classes)]


def evaluate_models(models, splits, class_names, image_size, batch_size=128, precision="fp32"):
    """Every model on the same tensors of every split.

    splits: {split: (images uint8 (N, 3, S, S), labels (N,), file names)}.
    -> (metrics {model: {split: metrics}}, per-class rows (split, class, method, accuracy),
        {split: per-image rows (file, actual, predicted) per model}, for confusion matrices and
        paired tests)."""
    from woof.models import data_config
    metrics, per_class, predictions = {}, [], {s: {} for s in splits}
    for method, model in models.items():
        metrics[method] = {}
        for split, (images, labels, files) in splits.items():
            logits, speed = predict(model, images, data_config(model, image_size), batch_size,
                                    precision=precision, desc=f"evaluate {method} on {split}")
            metrics[method][split] = {**classification_metrics(logits, labels, ci=True), "images_per_s": speed}
            accs = per_class_accuracy(logits, labels, len(class_names))
            per_class += [{"split": split, "class": n, "method": method, "accuracy": a}
                          for n, a in zip(class_names, accs)]
            predictions[split][method] = [
                {"file": f, "actual": class_names[a], "predicted": class_names[p]}
                for f, a, p in zip(files, labels.tolist(), logits.argmax(1).tolist())]
    return metrics, per_class, predictions
