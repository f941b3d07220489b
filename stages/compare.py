"""compare stage: the results table, the paired tests, metrics/compare.json and the compare_*.png
figures from the metrics and plots of the earlier stages (logic in woof/report.py). The paper stage
writes report.md and report.pdf from them."""
from woof import report
from woof.errors import run_stage


def main():
    df = report.collect("metrics", "plots")
    paired = report.paired_tests("plots/predictions")
    report.make_figures(df, plots_dir="plots", out_dir="plots")
    report.write_compare_json(df, "metrics/compare.json", paired)
    print(report.markdown_table(df))


if __name__ == "__main__":
    run_stage(main)
