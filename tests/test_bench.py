"""The benchmark's rows run and report sane numbers (speed itself is not asserted here: it is
measured by `python -m woof.bench all`, never by a timed test)."""
import json

import pytest

from conftest import ROOT

from woof import bench


def test_every_row_of_the_full_table_runs():
    results = bench.run(bench.ALL_ROWS, batch_size=2, image_size=32, steps=1, warmup=0)
    assert set(results) == set(bench.ALL_ROWS)  # PEFT is a dev dependency: its rows run too
    for name, row in results.items():
        assert row["images_per_s"] > 0 and row["peak_mb"] > 0, name
    full, frozen = results["full fine-tuning"], results["frozen first 6 blocks"]
    probe = results["linear probe, backbone every step"]
    assert probe["trainable"] < frozen["trainable"] < full["trainable"]
    # Counted FLOPs: a frozen prefix has no backward, a probe none through the backbone at all.
    assert probe["gflops"] * probe["step_ms"] < frozen["gflops"] * frozen["step_ms"] \
        < full["gflops"] * full["step_ms"]
    table = bench.markdown(results, peak_gflops={"fp32": 100.0, "bf16": 400.0})
    assert table.count("\n") == len(results) + 1 and "data: ImageFolder" in table


def test_speedup_pairs_the_calls_of_a_round():
    """The machine slows down 20x over the run; the row is 1.25x faster in every round. Pairing
    round by round sees exactly 1.25x; one interrupted call moves neither the median nor the IQR
    by much."""
    full = [0.1 * (1 + i) for i in range(20)]
    lora = [t / 1.25 for t in full]
    assert bench.paired_speedup(full, lora) == pytest.approx((1.25, 1.25, 1.25))
    lora[7] *= 4  # another process took the CPU during this call
    mid, q1, q3 = bench.paired_speedup(full, lora)
    assert mid == pytest.approx(1.25) and q1 == pytest.approx(1.25) and q3 == pytest.approx(1.25)
    for i in (3, 11, 15, 17, 19):  # a quarter of the calls slowed down: the IQR widens
        lora[i] *= 1.5
    mid, q1, q3 = bench.paired_speedup(full, lora)
    assert q1 < 1.0 and mid == pytest.approx(1.25) and q3 == pytest.approx(1.25)
    row = {"images": 32, "trainable": 1, "gflops": None, "peak_mb": 1.0}
    results = {"full fine-tuning": dict(row, times=full, images_per_s=32 / 1.05, step_ms=1050),
               "LoRA": dict(row, times=[t / 1.25 for t in full], images_per_s=32 / 0.84, step_ms=840)}
    assert "| full fine-tuning | 1 | 30.5 | 1.00x | 1050 |" in bench.markdown(results)
    assert "| LoRA | 1 | 38.1 | 1.25x (1.25-1.25) | 840 |" in bench.markdown(results)


def test_head_to_head_pairs_ours_with_peft_on_the_same_configuration():
    config = bench.HEAD_TO_HEAD[0]
    peft = [0.5 + 0.01 * i for i in range(8)]
    results = {f"LoRA ours {config}": {"times": [t / 1.3 for t in peft]},
               f"LoRA PEFT {config}": {"times": peft},
               "LoRA ours r=8 qkv +head": {"times": peft}}  # its PEFT row is missing: no line
    assert bench.head_to_head(results) == f"- ours vs PEFT, {config}: 1.30x (IQR 1.30-1.30)"
    del results[f"LoRA PEFT {config}"]
    assert bench.head_to_head(results) == ""
    # HEAD_TO_HEAD finds its rows by name: a renamed row would drop its line without a word.
    names = set(bench.LORA_ROWS) | set(bench.ALL_ROWS) | set(bench.SETTING_ROWS)
    for config in bench.HEAD_TO_HEAD:
        assert {f"LoRA ours {config}", f"LoRA PEFT {config}"} <= names, config


def test_gpu_check_refuses_without_its_inputs(tmp_path):
    """scripts/gpu_check.sh names what is missing in one line before any work."""
    import shutil
    import subprocess
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "gpu_check.sh", repo / "scripts")
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("imagewoof2-mini.tgz not found: run `make gpu-prepare` and carry .gpu")
    assert not (repo / "metrics").exists()


def test_bench_names_the_kernels_it_found():
    from woof.bench import kernels
    assert kernels("cpu").startswith("CPU capability ") and "oneDNN bf16 " in kernels("cpu")


def test_settings_summary_finds_the_fastest_setting_and_pairs_lora_with_the_bound():
    base = [1.0 + 0.01 * i for i in range(8)]
    speed = {"eager fp32": 1.0, "compiled fp32": 1.1, "eager bf16": 1.3, "compiled bf16": 1.5}
    results = {f"full fine-tuning, {s}": {"times": [t / v for t in base]} for s, v in speed.items()}
    results["LoRA ours r=8 qkv+proj+fc1+fc2 +head, compiled bf16"] = {"times": [t / 1.8 for t in base]}
    results["bound, compiled bf16"] = {"times": [t / 2.0 for t in base]}
    lines = bench.settings_summary(results).splitlines()
    assert lines[:4] == [f"- full fine-tuning, {s}: {v:.2f}x eager fp32" for s, v in speed.items()]
    assert lines[4] == ("- fastest setting for full fine-tuning: compiled bf16; there LoRA runs at 0.90x "
                        "the no-adapter bound's speed and 1.20x full fine-tuning's")
    assert set(bench.SETTING_ROWS) >= set(results)  # the summary finds its rows by these names
    del results["full fine-tuning, eager bf16"]
    assert bench.settings_summary(results) == ""


def test_dora_costs_pair_dora_with_lora_at_the_same_rank():
    lora, dora = "LoRA ours r=8 qkv+proj+fc1+fc2 +head", "DoRA ours r=8 qkv+proj+fc1+fc2 +head"
    results = bench.run({name: bench.DORA_ROWS[name] for name in (lora, dora)}, batch_size=2, image_size=32,
                        steps=1, warmup=0)
    # One magnitude per output channel of qkv, proj, fc1 and fc2 in each of the 12 blocks.
    assert results[dora]["trainable"] == results[lora]["trainable"] + 12 * (576 + 192 + 768 + 192)
    times = [0.5 + 0.01 * i for i in range(8)]
    results = {lora: {"times": times}, dora: {"times": [1.2 * t for t in times]}}
    assert bench.dora_costs(results) == f"- {dora}: 1.20x the step time of {lora} (IQR 1.20-1.20)"
    # DORA_PAIRS finds its rows by name: a renamed row would drop its line without a word.
    for row, ref in bench.DORA_PAIRS:
        assert {row, ref} <= set(bench.DORA_ROWS) or {row, ref} <= set(bench.METHOD_ROWS), (row, ref)


def test_bench_imports_no_training_loop():
    """The benchmark measures steps (woof.step); it takes `machine` from woof.io, not woof.train."""
    from test_deps import imported_modules
    assert bench.machine.__module__ == "woof.io"
    assert "woof.train" not in imported_modules(ROOT / "woof" / "bench.py")


def test_methods_suite_runs_every_method_on_both_backbones(tmp_path):
    """Full fine-tuning (with and without layer decay), LoRA and DoRA on the ViT's linear layers and
    on MobileOne's 1x1 convolutions (fused form), one run, rows written to --json."""
    out = tmp_path / "methods.json"
    every = bench.main(["methods", "--model", "vit_tiny_patch16_224:32", "mobileone_s0:64", "--steps", "1",
                        "--warmup", "0", "--batch-size", "2", "--json", str(out)])
    saved = json.loads(out.read_text())["models"]
    for model in ("vit_tiny_patch16_224", "mobileone_s0"):
        rows = every[model]
        assert set(rows) == set(bench.METHOD_ROWS) and set(saved[model]) == set(bench.METHOD_ROWS)
        full, lora, dora = (rows[k]["trainable"] for k in ("full fine-tuning", "LoRA r=8 +head", "DoRA r=8 +head"))
        assert lora < dora < full  # DoRA adds a magnitude per adapted output channel
        assert rows["full fine-tuning, layer decay 0.75"]["trainable"] == full
