"""Stage calibrate: how well each model's confidence matches its accuracy. The zero-shot head and
both fine-tuned models on val and test, from the logits the evaluate stage saved: expected
calibration error (calibration.bins bins) and NLL before and after temperature scaling fitted on
val (metrics/calibration.json), and their reliability diagrams (plots/reliability.png). Logic in
woof/calibration.py."""
from safetensors.torch import load_file

from woof import calibration, config
from woof.errors import InputError, reading, run_stage
from woof.evaluate import evaluation_inputs
from woof.io import LOGITS, write_json
from woof.labels import LABELS


def main():
    cfg = config.load()
    _, splits = evaluation_inputs(cfg, needs_test="calibrate")
    with reading(LOGITS, "run `dvc repro evaluate`"):
        logits = load_file(str(LOGITS))
    models = {k.split("/")[-1] for k in logits}
    want = [f"{s}/{m}" for m in LABELS if m in models for s in splits]  # zero-shot, full, LoRA; val, test
    if not logits or set(logits) != set(want):
        raise InputError(f"{LOGITS} holds {sorted(logits)}, not each model's {' and '.join(splits)} logits of "
                         "data/prepared: run `dvc repro evaluate`")
    by_model = {}
    for key in want:
        (split, model), t = key.split("/"), logits[key]
        if len(t) != len(splits[split][1]):
            raise InputError(f"{LOGITS} holds {len(t)} {split} logits for the {len(splits[split][1])} images of "
                             "data/prepared: run `dvc repro evaluate`")
        by_model.setdefault(model, {})[split] = t.numpy()
    labels = {s: y.numpy() for s, (_, y, _) in splits.items()}
    result = {name: calibration.calibrate(out, labels, cfg.calibration.bins) for name, out in by_model.items()}
    write_json("metrics/calibration.json", result)
    calibration.plot(result, "plots/reliability.png", "test", LABELS)
    for name, r in result.items():
        t = r["test"]
        print(f"{name:>9}: T {r['temperature']:.3f}; test ECE {100 * t['ece']:.2f} % -> {100 * t['ece_scaled']:.2f} %, "
              f"NLL {t['nll']:.4f} -> {t['nll_scaled']:.4f}")


if __name__ == "__main__":
    run_stage(main)
