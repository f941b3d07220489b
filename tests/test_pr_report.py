"""woof.pr_report on a real temporary git + DVC repository with two commits (lora.rank 4 -> 8): the
tables from `dvc metrics diff --md` / `dvc params diff --md`, DVC's figures from `dvc plots diff`
(Vega-Lite rendered by vl-convert, here a stand-in that records the spec), and the fallbacks: the
project's matplotlib curves without vl-convert, only the PR's image without the base's DVC cache."""
import os
import shutil
import subprocess
import sys
import types

import pytest

from test_sweep import ROOT, _dvc, _git, _init, _pipeline, needs_dvc
from woof import pr_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_commits(tmp_path_factory):
    """(repo, base sha): the base at lora.rank 4, HEAD at 8 (train_full not re-run)."""
    repo = tmp_path_factory.mktemp("pr") / "repo"
    _init(repo)
    _pipeline(repo)
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "params.yaml").write_text("full:\n  lr: 0.001\nlora:\n  rank: 8\n  alpha: 8\n  lr: 0.01\n")
    _dvc(repo, "repro", "-q")
    _git(repo, "commit", "-qam", "rank 8")
    return repo, base


@pytest.fixture
def vl_convert(monkeypatch):
    """A stand-in for vl-convert-python: records each Vega-Lite spec, returns PNG bytes."""
    specs = []
    stub = types.SimpleNamespace(vegalite_to_png=lambda spec, scale=1: specs.append(spec) or PNG + b"stub")
    monkeypatch.setitem(sys.modules, "vl_convert", stub)
    return specs


def _section(md, title):
    return md.split(f"### {title}")[1].split("###")[0]


@needs_dvc
def test_tables_are_dvcs_markdown(two_commits, vl_convert):
    repo, base = two_commits
    md = pr_report.pr_report(base, "pr-report.md", cwd=repo)
    assert md == (repo / "pr-report.md").read_text()
    # DVC's own tables (its row order varies from call to call).
    for title, cmd in (("Params", "params"), ("Metrics", "metrics")):
        dvc_md = _dvc(repo, cmd, "diff", base, "--md")
        assert set(_section(md, title).strip().splitlines()) == set(dvc_md.strip().splitlines())
    metrics = _section(md, "Metrics")
    assert "lora.val.top1" in metrics and "0.84" in metrics and "0.88" in metrics and "800" in metrics
    assert "train_full" not in metrics  # unchanged: train_full was not re-run
    assert "**lora.val.top1**" in md and "+4.00 points" in md


@needs_dvc
def test_figures_come_from_dvc_plots_diff(two_commits, vl_convert):
    repo, base = two_commits
    md = pr_report.pr_report(base, "pr-report.md", cwd=repo)
    plots = _section(md, "Changed plots")
    # The CSV is drawn by dvc.yaml's Loss plot over it (both revisions' data), not by its own
    # default plot (its last column, lr) nor by woof.report.
    assert "`plots/train_lora.csv` (changed)" in plots and "![Loss](pr-report_plots/Loss.png)" in plots
    assert [s["title"]["text"] for s in vl_convert] == ["Loss"]
    assert {v["rev"] for v in vl_convert[0]["data"]["values"]} == {"this PR", base}
    assert (repo / "pr-report_plots" / "Loss.png").read_bytes() == PNG + b"stub"
    assert not (repo / "pr-report_plots" / "train_lora.png").exists()
    # The DVC-cached image: both revisions, since this checkout's cache has the base's too.
    assert "`plots/fig.png` (changed)" in plots and "plots/.gitignore" not in plots
    assert f"![plots/fig.png ({base[:8]})](pr-report_plots/plots_fig.png_base.png)" in plots
    assert "![plots/fig.png (this PR)](pr-report_plots/plots_fig.png_pr.png)" in plots
    assert (repo / "pr-report_plots" / "plots_fig.png_base.png").read_bytes() == bytes([137, 80, 78, 71, 4])
    assert (repo / "pr-report_plots" / "plots_fig.png_pr.png").read_bytes() == bytes([137, 80, 78, 71, 8])


@needs_dvc
def test_fallbacks_without_vl_convert_or_the_base_cache(two_commits, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    shutil.copytree(two_commits[0], repo)
    base = two_commits[1]
    monkeypatch.setitem(sys.modules, "vl_convert", None)  # `import vl_convert` raises ImportError
    _dvc(repo, "gc", "-w", "-f")  # as in CI: the base's figure is not in this cache
    md = pr_report.pr_report(base, "pr-report.md", cwd=repo)
    plots = _section(md, "Changed plots")
    # The learning curves redrawn by woof.report.plot_curves, base vs PR.
    png = repo / "pr-report_plots" / "train_lora.png"
    assert "![plots/train_lora.csv](pr-report_plots/train_lora.png)" in plots and png.read_bytes()[:8] == PNG
    assert not (repo / "pr-report_plots" / "Loss.png").exists()
    assert "plots_fig.png_base.png" not in plots
    assert (repo / "pr-report_plots" / "plots_fig.png_pr.png").read_bytes() == (repo / "plots" / "fig.png").read_bytes()


@needs_dvc
def test_command_line_against_a_base_without_differences(two_commits, tmp_path):
    repo = two_commits[0]
    subprocess.run([sys.executable, "-m", "woof.pr_report", "--base", "HEAD", "--out", str(tmp_path / "same.md")],
                   cwd=repo, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    same = (tmp_path / "same.md").read_text()
    assert "No metric changed." in same and "No parameter changed." in same and "No plot changed." in same


def test_plot_ids_prefers_dvc_yaml_plots_over_a_files_own(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        "plots:\n"
        "  - plots/predictions/test_full.csv: {template: confusion, x: actual, y: predicted}\n"
        "  - Loss:\n      x: epoch\n      y: {plots/train_full.csv: [train_loss], plots/train_lora.csv: [val_loss]}\n"
        "  - Accuracy:\n      x: epoch\n      y: {plots/train_lora.csv: [val_acc]}\n")
    data = dict.fromkeys(["plots/predictions/test_full.csv", "Loss", "Accuracy", "plots/train_lora.csv",
                          "plots/fig.png"], [])
    assert pr_report.plot_ids("plots/train_lora.csv", data, tmp_path) == ["Loss", "Accuracy"]
    assert pr_report.plot_ids("plots/train_full.csv", data, tmp_path) == ["Loss"]
    assert pr_report.plot_ids("plots/predictions/test_full.csv", data, tmp_path) == ["plots/predictions/test_full.csv"]
    assert pr_report.plot_ids("plots/fig.png", data, tmp_path) == ["plots/fig.png"]
    assert pr_report.plot_ids("plots/per_class.csv", data, tmp_path) == []  # no DVC plot: woof.report draws it


def test_vega_png_renders_dvcs_spec_with_vl_convert(tmp_path):
    pytest.importorskip("vl_convert")
    spec = {"data": {"values": [{"x": 1, "y": 2, "rev": "workspace"}, {"x": 2, "y": 1, "rev": "abc"}]},
            "mark": "line", "encoding": {"x": {"field": "x", "type": "quantitative"},
                                         "y": {"field": "y", "type": "quantitative"},
                                         "color": {"field": "rev", "type": "nominal"}}}
    out = pr_report._vega_png(spec, tmp_path / "f.png")
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
