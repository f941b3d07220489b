"""compare stage: the answer, computed once. Reads the pipeline's metrics and plots and the
programme's record; writes metrics/compare.json (every number and verdict the paper and the
README state), metrics/programme.md (every run) and the figures (plots/compare_*.png,
plots/programme/). Logic in woof/compare.py, drawing in woof/figures.py."""
from pathlib import Path

from woof import compare, figures, record
from woof.errors import run_stage
from woof.io import PREDICTIONS, atomic_path, load_params, write_json


def main():
    df, correct = record.load() if record.RECORD.exists() else (None, None)
    results = compare.build("metrics", PREDICTIONS, load_params(), df, correct)
    figures.pipeline_figures(compare.collect("metrics"), plots_dir="plots", out_dir="plots")
    if results["programme"]:
        figures.programme_figures(df, results["programme"], "plots/programme")
        with atomic_path("metrics/programme.md") as tmp:
            tmp.write_text(compare.runs_table(df, results["programme"]))
    else:
        with atomic_path("metrics/programme.md") as tmp:
            tmp.write_text(f"No experiment record ({record.RECORD}): run `make programme`.\n")
        with atomic_path(Path("plots/programme"), is_dir=True):
            pass  # nothing to draw
    write_json("metrics/compare.json", results)
    r = results
    print(f"{r['split']} top-1: zero-shot {r['zero_shot']['top1']:.4f}, full {r['full']['top1']:.4f}, "
          f"LoRA {r['lora']['top1']:.4f}; programme: "
          + (f"{r['programme']['runs']['ok']} runs" if r["programme"] else "no record")
          + (" (from other data than the pipeline's)" if r["provenance"]["same_data"] is False else ""))


if __name__ == "__main__":
    run_stage(main)
