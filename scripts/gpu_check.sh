#!/usr/bin/env bash
# The prepared GPU check (issue "Throughput"), for one GPU and well under 8 minutes:
#   1. the pipeline's stages, in dvc.yaml's order, on the 300-image mini set with
#      train.device=$DEVICE (no DVC there: a GPU image seldom has it, so the stages are called
#      directly; the real 160 px archive, 124 MB, is larger than what the device tool carries),
#   2. `python -m woof.bench all` and `settings` on $DEVICE (fp32/bf16 x eager/compiled rows, % of
#      the matmul peak per precision),
# and writes $OUT/gpu_check.md (img/s, minutes, peak memory per method, then the bench table).
#
# Prepare here with `make gpu-prepare` (copies the mini set and the weights into .gpu/, which git
# ignores), then run it on the GPU machine, e.g. with the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu"], timeout_s=540)
# DEVICE=cpu EPOCHS=1 BENCH_STEPS=2 bash scripts/gpu_check.sh is the same check, small, on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-5}
BENCH_STEPS=${BENCH_STEPS:-20}
OUT=${OUT:-.gpu/out}
PY=${PY:-python3}
case $PY in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")";; esac  # absolute, links kept (a venv)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export WOOF_FETCH_URL=$PWD/.gpu/imagewoof2-mini.tgz WOOF_WEIGHTS=$PWD/.gpu/vit_tiny_patch16_224.safetensors
for f in "$WOOF_FETCH_URL" "$WOOF_WEIGHTS"; do
  [ -f "$f" ] || { echo "error: $f not found: run \`make gpu-prepare\` and carry .gpu" >&2; exit 2; }
done

# The stages run in a scratch copy of the code (.gpu/work): nothing in this checkout changes.
OUT=$(realpath "$OUT")
rm -rf .gpu/work && mkdir -p .gpu/work && cp -r woof stages params.yaml .gpu/work/ && cd .gpu/work
DEVICE=$DEVICE EPOCHS=$EPOCHS $PY - <<'PYEOF'
import os, yaml
p = yaml.safe_load(open("params.yaml"))
p["train"]["device"] = os.environ["DEVICE"]
for method in ("full", "lora"):
    p[method]["epochs"] = int(os.environ["EPOCHS"])
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PYEOF

start=$(date +%s)
for stage in fetch preprocess "train full" "train lora" evaluate cost; do
  echo "== stage $stage"
  set -- $stage  # "train full" -> stages.train with the argument full
  $PY -m "stages.$1" "${@:2}" || { echo "error: stage $stage failed" >&2; exit 1; }
done
pipeline_s=$(( $(date +%s) - start ))

$PY -m woof.bench all --device "$DEVICE" --steps "$BENCH_STEPS" --warmup 2 > "$OUT/bench.md"
$PY -m woof.bench settings --device "$DEVICE" --steps "$BENCH_STEPS" --warmup 2 >> "$OUT/bench.md"
$PY -m woof.bench dora --device "$DEVICE" --steps "$BENCH_STEPS" --warmup 2 >> "$OUT/bench.md"  # DoRA against LoRA (issue 33)

OUT=$OUT PIPELINE_S=$pipeline_s DEVICE=$DEVICE $PY - <<'PYEOF'
import json, os
rows = ["| method | device | epochs | minutes | train img/s | peak memory MB (kind) | val top-1 | test top-1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|"]
ev = json.load(open("metrics/evaluate.json"))
for m in ("full", "lora"):
    t = json.load(open(f"metrics/train_{m}.json"))
    rows.append(f"| {m} | {t['hardware']} | {t['epochs']} | {t['train_minutes']:.2f} | {t['train_images_per_s']:.0f} | "
                f"{t['peak_memory_mb']:.0f} ({t['peak_memory_kind']}) | {100 * ev[m]['val']['top1']:.1f} % | "
                f"{100 * ev[m]['test']['top1']:.1f} % |")
out = os.environ["OUT"]
text = (f"# GPU check on {os.environ['DEVICE']}\n\nThe pipeline's stages on the mini set: "
        f"{os.environ['PIPELINE_S']} s in all.\n\n" + "\n".join(rows) + "\n\n## Bench\n\n" + open(f"{out}/bench.md").read())
open(f"{out}/gpu_check.md", "w").write(text)
print(text)
PYEOF
