"""compare stage: the results table, the paired tests, metrics/compare.json, the compare_*.png
figures and report.md from the metrics and plots of the earlier stages (logic in woof/report.py)."""
from woof import report
from woof.io import load_params


def main():
    params = load_params("params.yaml")
    df = report.collect("metrics", "plots")
    paired = report.paired_tests("plots/predictions")
    report.write_compare_json(df, "metrics/compare.json", paired)
    figures = report.make_figures(df, plots_dir="plots", out_dir="plots")
    report.write_report("report.md", df, params=params, metrics_dir="metrics", plots_dir="plots",
                        figures=figures, paired=paired)
    print(report.markdown_table(df))


if __name__ == "__main__":
    main()
