"""The benchmark's rows run and report sane numbers (speed itself is not asserted here: it is
measured by `python -m woof.bench all`, never by a timed test)."""
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
