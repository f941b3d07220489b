"""How a forward runs (precision, compilation), inference over cached tensors, and the metrics
computed from its logits."""
import functools
import time
import warnings

import torch
import torch.nn.functional as F
from tqdm import tqdm

from woof.data import check_splits, load_classes, load_eval_splits, normalize
from woof.errors import InputError
from woof.models import check_model_name, data_config
from woof.stats import accuracy_ci


# ---- how a forward runs, in training and inference alike: chosen by what this machine has

def native_bf16(device):
    """True where bf16 matmuls run in hardware: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.
    oneDNN also 'supports' bf16 on plain AVX512 by emulation, measured at 0.05x fp32: not native."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision, device):
    """train.precision -> "fp32" or "bf16": auto is bf16 where native_bf16(device), else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@functools.cache
def compile_unavailable(device_type="cpu"):
    """Why torch.compile cannot run here (no C++ compiler for inductor, an unsupported Python...),
    or None: a two-op function is compiled and run once per process."""
    try:
        torch.compile(lambda t: (t * 2).sum())(torch.ones(4, device=device_type))
        return None
    except Exception as e:  # inductor raises many kinds (BackendCompilerFailed, CalledProcessError, ...)
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"


def compiled(module, enabled, device="cpu"):
    """torch.compile(module) (inductor), or module itself when not enabled, or with a warning
    when compilation is unavailable here. The module's own state_dict stays unprefixed: save and
    load `module`, run the returned one."""
    if not enabled:
        return module
    reason = compile_unavailable(torch.device(device).type)
    if reason:
        warnings.warn(f"train.compile=true, but torch.compile is unavailable here ({reason}): running eager",
                      stacklevel=2)
        return module
    return torch.compile(module, dynamic=False)  # a shape per batch size: no symbolic-shape kernels


def autocast(device, precision):
    """bf16 autocast on CPU and GPU alike; fp32 is a no-op context (precision: resolved, see
    resolve_precision)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


# ---- inference and its metrics

def evaluation_inputs(cfg, needs_test=None, prepared="data/prepared"):
    """(classes, {split: (images, labels, files)}) of the prepared data, checked against the params
    (model.name, data.image_size, the class list). needs_test: the stage's name, where it reports
    on the clean test split that only data.split=clean_test makes."""
    check_model_name(cfg.model.name)
    classes = load_classes(f"{prepared}/classes.json")
    splits = load_eval_splits(prepared)
    check_splits(splits, len(classes), cfg.data.image_size)
    if needs_test and "test" not in splits:
        raise InputError(f"{needs_test} reports on the test split: set data.split=clean_test and run `dvc repro`")
    return classes, splits


@torch.no_grad()
def predict(model, images, data_cfg, batch_size=128, device="cpu", precision="fp32", desc=None,
            forward=None):
    """uint8 images (N, 3, S, S), already at the model's input size -> (float32 outputs (N, C),
    images per second). forward: what to run instead of model(x), e.g. a feature extractor."""
    model.eval()
    forward = model if forward is None else forward  # (a compiled module has no truth value)
    logits = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None, unit="batch"):
        x = normalize(images[i:i + batch_size].to(device), data_cfg["mean"], data_cfg["std"])
        with autocast(device, precision):
            logits.append(forward(x).float().cpu())
    seconds = time.perf_counter() - start
    return torch.cat(logits), len(images) / max(seconds, 1e-9)


def ranked(logits):
    """(N, C) logits -> (N, min(5, C)) class indices, best first. Top-1, top-5 and every per-image
    prediction read this one ranking: bf16 logits tie often enough that two tie-breaks (topk's and
    argmax's) would disagree on an image."""
    return logits.topk(min(5, logits.shape[1]), dim=1).indices


def classification_metrics(logits, labels, ci=False):
    """Top-1, top-5 (fractions) and mean cross-entropy of (N, C) logits against (N,) labels;
    ci: add a 95 % Wilson interval for top-1 and top-5 (top1_ci, top5_ci)."""
    hits = ranked(logits) == labels[:, None]  # (N, k)
    m = {"top1": hits[:, 0].float().mean().item(), "top5": hits.any(1).float().mean().item(),
         "loss": F.cross_entropy(logits, labels).item(), "n": len(labels)}
    if ci:
        for name, correct in (("top1", hits[:, 0]), ("top5", hits.any(1))):
            m[f"{name}_ci"] = list(accuracy_ci(correct.numpy())[1:])
    return m


def per_class_accuracy(logits, labels, num_classes):
    pred = ranked(logits)[:, 0]
    return [(pred[labels == c] == c).float().mean().item() if (labels == c).any() else float("nan")
            for c in range(num_classes)]


def evaluate_models(models, splits, class_names, image_size, batch_size=128, precision="fp32", compile=False):
    """Every model on the same tensors of every split (precision: fp32 or bf16; compile: run
    each model torch.compiled, see woof.step.compiled).

    splits: {split: (images uint8 (N, 3, S, S), labels (N,), file names)}.
    -> (metrics {model: {split: metrics}}, per-class rows (split, class, method, accuracy),
        {split: per-image rows (file, actual, predicted) per model}, for confusion matrices and
        paired tests, and {split: {model: float32 logits (N, C)}})."""
    metrics, per_class, predictions, outputs = {}, [], {s: {} for s in splits}, {s: {} for s in splits}
    for method, model in models.items():
        metrics[method] = {}
        forward = compiled(model, compile)
        for split, (images, labels, files) in splits.items():
            logits, speed = predict(model, images, data_config(model, image_size), batch_size,
                                    precision=precision, desc=f"evaluate {method} on {split}", forward=forward)
            outputs[split][method] = logits
            metrics[method][split] = {**classification_metrics(logits, labels, ci=True), "images_per_s": speed}
            accs = per_class_accuracy(logits, labels, len(class_names))
            per_class += [{"split": split, "class": n, "method": method, "accuracy": a}
                          for n, a in zip(class_names, accs)]
            predictions[split][method] = [
                {"file": f, "actual": class_names[a], "predicted": class_names[p]}
                for f, a, p in zip(files, labels.tolist(), ranked(logits)[:, 0].tolist())]
    return metrics, per_class, predictions, outputs
