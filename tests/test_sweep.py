"""Sweep helpers: the grid commands, parsing `dvc exp show --csv`, the figures; then, on real
temporary git + DVC repositories, the queue run end to end and the pull-request report."""
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from woof import pr_report, sweep

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"
needs_dvc = pytest.mark.skipif(not DVC.exists(), reason="dvc is not installed next to this Python")

# What `dvc exp show --csv` prints (DVC 3.67) for this pipeline, trimmed to the columns we read
# and their namesakes. A key alone names a column unless another file has it too, params.yaml
# included: evaluate.json and compare.json both have full.top1, train_full.json and train_lora.json
# both trainable_params, cost.json and params.yaml both lora.rank. The namesakes (compare.json,
# cost.json) hold decoy values here, so reading the wrong file fails the test. "!" marks a metric
# the run did not produce. lora-r4-lr0.003 failed; probe is still queued.
COLUMNS = ("Experiment,rev,typ,Created,parent,State,Executor,"
           "zero_shot.val.top1,full.val.top1,lora.val.top1,"
           "lora.val.top5,zero_shot.images_per_s,"
           "metrics/compare.json:zero_shot.top1,metrics/compare.json:full.top1,metrics/compare.json:lora.top1,"
           "metrics/compare.json:lora.top5,metrics/compare.json:full.trainable_params,"
           "metrics/compare.json:lora.trainable_params,lora_minus_full_top1,"
           "metrics/train_full.json:trainable_params,metrics/train_full.json:train_minutes,"
           "metrics/train_lora.json:trainable_params,metrics/train_lora.json:train_minutes,adapter_mb,"
           "metrics/cost.json:full.trainable_params,metrics/cost.json:lora.trainable_params,metrics/cost.json:lora.rank,"
           "model.name,data.train_fraction,full.lr,full.trainable,full.freeze_blocks,full.pretrained,"
           "lora.lr,params.yaml:lora.rank,lora.targets")
COMPARE = "0.11,0.12,0.13,0.14,1,2,-0.5"  # decoys: compare.json columns
COST = "3,4,99"  # decoys: cost.json columns
EXP_SHOW = "\n".join([COLUMNS] + [line.format(C=COMPARE, K=COST) for line in textwrap.dedent(r"""
    ,workspace,baseline,,,,,0.61,0.9,0.88,0.99,300,{C},5500000,10.0,75000,8.0,0.3,{K},vit_tiny_patch16_224,1.0,0.0001,['all'],0,True,0.001,8,qkv
    ,main,baseline,2026-01-01T00:00:00,,,,0.61,0.9,0.88,0.99,300,{C},5500000,10.0,75000,8.0,0.3,{K},vit_tiny_patch16_224,1.0,0.0001,['all'],0,True,0.001,8,qkv
    lora-r2-lr0.001,aaa1111,branch_commit,2026-01-01T01:00:00,,Success,Dvc-task,0.61,0.9,0.84,0.98,300,{C},5500000,10.0,20000,7.0,0.1,{K},vit_tiny_patch16_224,1.0,0.0001,['all'],0,True,0.001,2,qkv
    lora-r4-lr0.001,aaa2222,branch_commit,2026-01-01T01:10:00,,Success,Dvc-task,0.61,0.9,0.86,0.98,300,{C},5500000,10.0,38000,7.0,0.2,{K},vit_tiny_patch16_224,1.0,0.0001,['all'],0,True,0.001,4,qkv
    lora-r2-lr0.003,aaa3333,branch_commit,2026-01-01T01:20:00,,Success,Dvc-task,0.61,0.9,0.85,0.98,300,{C},5500000,10.0,20000,7.0,0.1,{K},vit_tiny_patch16_224,1.0,0.0001,['all'],0,True,0.003,2,qkv
    lora-r4-lr0.003,aaa4444,branch_base,2026-01-01T01:30:00,,Failed,,!,!,!,!,!,!,!,!,!,!,!,!,!,!,!,!,!,!,!,!,vit_tiny_patch16_224,1.0,0.0001,['all'],0,True,0.003,4,qkv
    freeze-6,bbb1111,branch_commit,2026-01-01T02:00:00,,Success,Dvc-task,0.61,0.87,0.88,0.99,300,{C},2800000,6.0,75000,8.0,0.3,{K},vit_tiny_patch16_224,1.0,0.0001,['all'],6,True,0.001,8,qkv
    exp-5f2a1,ccc1111,branch_commit,2026-01-01T03:00:00,,Success,Dvc-task,0.61,0.8,0.86,0.98,300,{C},5500000,2.0,75000,2.0,0.3,{K},vit_tiny_patch16_224,0.2,0.0001,['all'],0,True,0.001,8,qkv
    backbone-resnet18,ddd1111,branch_commit,2026-01-01T04:00:00,,Success,Dvc-task,0.55,0.85,0.8,0.97,500,{C},11000000,9.0,90000,7.0,0.4,{K},resnet18,1.0,0.0001,['all'],0,True,0.001,8,layer\d\.\d\.conv[12]
    probe,eee1111,branch_base,2026-01-01T05:00:00,,Queued,Dvc-task,,,,,,,,,,,,,,,,,,,,,vit_tiny_patch16_224,1.0,0.0001,['head'],0,True,0.001,8,qkv
    """).strip().splitlines()]) + "\n"


def test_queue_commands_default_grid():
    cmds = sweep.queue_commands(["lora"])
    assert len(cmds) == 6 * 3
    assert cmds[0][:4] == ["dvc", "exp", "run", "--queue"]
    assert "lora.rank=1" in cmds[0] and "lora.lr=0.0003" in cmds[0]
    names = [c[c.index("-n") + 1] for c in cmds]
    assert len(set(names)) == len(names)
    other = sweep.queue_commands(["probe", "scratch", "fraction", "freeze", "backbone"])
    flat = [" ".join(c) for c in other]
    assert any("full.trainable=[head]" in c for c in flat)
    assert any("full.pretrained=false" in c for c in flat)
    assert sum("data.train_fraction=" in c for c in flat) == 4
    backbone = next(c for c in other if "model.name=resnet18" in c)
    # Quoted for DVC's Hydra parser (-S), which would read an unquoted [12] as a list.
    assert r"lora.targets='layer\d\.\d\.conv[12]'" in backbone and "model.weights=null" in backbone


def test_fixture_has_the_shape_of_exp_show():
    assert {len(line.split(",")) for line in EXP_SHOW.splitlines()} == {len(COLUMNS.split(","))}
    raw = pd.read_csv(io.StringIO(EXP_SHOW), dtype=str, keep_default_na=False)
    assert set(raw["metrics/cost.json:lora.rank"]) == {"99", "!", ""}  # a decoy unlike every rank


def test_parse_exp_show_reads_the_right_files():
    """Accuracies from evaluate.json, params from params.yaml, trainable params from train_*.json."""
    row = sweep.parse_exp_show(EXP_SHOW).set_index("name").loc["lora-r4-lr0.001"]
    assert row["rank"] == 4  # params.yaml:lora.rank, not cost.json's 99
    assert row["lora_top1"] == pytest.approx(0.86) and row["full_top1"] == pytest.approx(0.9)
    assert row["zero_shot_top1"] == pytest.approx(0.61) and row["lora_top5"] == pytest.approx(0.98)
    assert row["lora_trainable_params"] == 38000 and row["full_trainable_params"] == 5500000
    assert row["lora_train_minutes"] == 7.0 and row["full_train_minutes"] == 10.0


def test_parse_exp_show_lists_failed_and_queued():
    df = sweep.parse_exp_show(EXP_SHOW)
    status = dict(zip(df.name, df.status))
    assert status["main"] == "baseline" and status["workspace"] == "workspace"
    assert status["lora-r4-lr0.003"] == "failed"
    assert status["probe"] == "queued"
    assert status["lora-r2-lr0.001"] == "ok"
    row = df.set_index("name").loc["lora-r4-lr0.001"]
    assert row["rank"] == 4 and row["lr"] == pytest.approx(1e-3)
    assert row["lora_trainable_params"] == 38000 and row["full_trainable_params"] == 5500000
    assert row["lora_top1"] == pytest.approx(0.86)
    assert df.set_index("name").loc["probe", "full_trainable"] == "head"
    assert df.set_index("name").loc["backbone-resnet18", "targets"] == r"layer\d\.\d\.conv[12]"


def test_parse_marks_missing_metrics_as_failed():
    text = EXP_SHOW.replace("lora-r2-lr0.003,aaa3333,branch_commit,2026-01-01T01:20:00,,Success,Dvc-task,0.61,0.9,0.85",
                            "lora-r2-lr0.003,aaa3333,branch_commit,2026-01-01T01:20:00,,Success,Dvc-task,!,!,!")
    assert text != EXP_SHOW
    df = sweep.parse_exp_show(text)
    assert df.set_index("name").loc["lora-r2-lr0.003", "status"] == "failed"


def test_collect_writes_tables_figures_and_lists_failures(tmp_path):
    tables = sweep.collect(EXP_SHOW, tmp_path / "metrics", tmp_path / "plots", tmp_path / "sweep.md")
    t = pd.read_csv(tmp_path / "metrics" / "sweep.csv")
    assert set(t.name) == {"lora-r2-lr0.001", "lora-r4-lr0.001", "lora-r2-lr0.003", "lora-r4-lr0.003"}
    failed = t.set_index("name").loc["lora-r4-lr0.003"]
    assert failed.status == "failed" and pd.isna(failed.top1)  # listed, not dropped
    assert t.set_index("name").loc["lora-r4-lr0.001", "trainable_params"] == 38000
    png = tmp_path / "plots" / "sweep.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The unnamed exp-5f2a1 changed data.train_fraction: it is the fraction comparison.
    assert set(tables) == {"lora", "freeze", "fraction", "backbone", "probe"}
    frac = tables["fraction"]
    assert set(frac.name) == {"baseline", "exp-5f2a1"} and set(frac.method) == {"full", "lora"}
    for comparison in ("freeze", "fraction", "backbone"):
        assert (tmp_path / "plots" / f"sweep_{comparison}.png").exists()
        assert (tmp_path / "metrics" / f"sweep_{comparison}.csv").exists()
    md = (tmp_path / "sweep.md").read_text()
    assert "`lora-r4-lr0.003` (aaa4444): failed" in md and "dvc queue logs lora-r4-lr0.003" in md
    assert "`probe` (eee1111): queued" in md


def test_train_full_does_not_depend_on_lora_params():
    """The sweep changes only lora.*: DVC must then see train_full (and data) as up to date."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    full = stages["train_full"]
    params = [p if isinstance(p, str) else next(iter(p.values())) for p in full.get("params", [])]
    flat = [k for p in params for k in ([p] if isinstance(p, str) else p)]
    assert not any(str(k).startswith("lora") for k in flat), flat
    deps = [d if isinstance(d, str) else next(iter(d)) for d in full.get("deps", [])]
    assert not any("lora" in d for d in deps), deps


# ------------------------------------------------------------------ real git + dvc repositories

def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def _dvc(repo, *args):
    return subprocess.run([str(DVC), *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _init(repo):
    repo.mkdir(exist_ok=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")


TRAIN = """\
import json, os, sys, time, yaml
p = yaml.safe_load(open("params.yaml"))
os.makedirs("metrics", exist_ok=True); os.makedirs("plots", exist_ok=True)
if sys.argv[1] == "full":
    json.dump({"run_id": time.time_ns(), "trainable_params": 5000}, open("metrics/train_full.json", "w"))
else:
    r = p["lora"]["rank"]
    json.dump({"trainable_params": 100 * r}, open("metrics/train_lora.json", "w"))
    json.dump({"full": {"val": {"top1": 0.9}}, "zero_shot": {"val": {"top1": 0.5}},
               "lora": {"val": {"top1": 0.8 + r / 100}}},
              open("metrics/evaluate.json", "w"))
    with open("plots/train_lora.csv", "w") as f:
        f.write("epoch,train_loss,train_acc,val_loss,val_acc,epoch_seconds,lr\\n")
        f.write(f"1,1.0,0.5,1.1,0.5,1.0,0.01\\n2,{1 / r},0.7,{1.2 / r},0.6,1.0,0.01\\n")
    open("plots/fig.png", "wb").write(bytes([137, 80, 78, 71, r]))  # a DVC-cached figure
"""


def _pipeline(repo):
    (repo / "train.py").write_text(TRAIN)
    (repo / "params.yaml").write_text("full:\n  lr: 0.001\nlora:\n  rank: 4\n  alpha: 8\n  lr: 0.01\n")
    py = sys.executable
    (repo / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          train_full:
            cmd: {py} train.py full
            deps: [train.py]
            params: [full]
            metrics:
              - metrics/train_full.json: {{cache: false}}
          train_lora:
            cmd: {py} train.py lora
            deps: [train.py]
            params: [lora]
            metrics:
              - metrics/train_lora.json: {{cache: false}}
              - metrics/evaluate.json: {{cache: false}}
            plots:
              - plots/train_lora.csv: {{cache: false}}
              - plots/fig.png
        """))
    _dvc(repo, "repro", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "rank 4")


@needs_dvc
def test_pr_report_on_two_commits(tmp_path):
    repo = tmp_path / "repo"
    _init(repo)
    _pipeline(repo)
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "params.yaml").write_text("full:\n  lr: 0.001\nlora:\n  rank: 8\n  alpha: 8\n  lr: 0.01\n")
    _dvc(repo, "repro", "-q")
    _git(repo, "commit", "-qam", "rank 8")

    md = pr_report.pr_report(base, "pr-report.md", cwd=repo)
    assert md == (repo / "pr-report.md").read_text()
    params = md.split("### Params")[1].split("###")[0]
    assert "lora.rank" in params and "| 4 " in params and "| 8 " in params
    metrics = md.split("### Metrics")[1].split("###")[0]
    assert "metrics/evaluate.json" in metrics and "lora.val.top1" in metrics and "0.84" in metrics and "0.88" in metrics
    assert "trainable_params" in metrics and "400" in metrics and "800" in metrics
    assert "train_full" not in metrics  # unchanged: train_full was not re-run
    assert "**lora.val.top1**" in md and "+4.00 points" in md
    # The changed learning curves, drawn by woof.report.plot_curves.
    assert "`plots/train_lora.csv` (changed)" in md
    png = repo / "pr-report_plots" / "train_lora.png"
    assert png.exists() and f"]({Path('pr-report_plots') / 'train_lora.png'})" in md
    # A DVC-cached figure is not in git: its change comes from the md5 in the base's dvc.lock.
    assert "`plots/fig.png` (changed)" in md and "plots/.gitignore" not in md
    assert (repo / "pr-report_plots" / "fig.png").read_bytes() == (repo / "plots" / "fig.png").read_bytes()

    # And through the command line, against a base with no difference.
    subprocess.run([sys.executable, "-m", "woof.pr_report", "--base", "HEAD", "--out", "same.md"],
                   cwd=repo, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    same = (repo / "same.md").read_text()
    assert "No metric changed." in same and "No parameter changed." in same and "No plot changed." in same


@needs_dvc
def test_queue_runs_lora_grid_without_retraining_train_full(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    _init(repo)
    _pipeline(repo)
    base_run = json.loads((repo / "metrics" / "train_full.json").read_text())["run_id"]
    # As the Makefile runs it: `queue --run -j N` alone queues, starts the workers and waits.
    monkeypatch.chdir(repo)
    sweep.main(["queue", "lora", "--ranks", "2", "16", "--lrs", "0.01", "--run", "-j", "1"])
    assert "Queued" not in _dvc(repo, "queue", "status") and "Running" not in _dvc(repo, "queue", "status")
    csv = _dvc(repo, "exp", "show", "--csv", "--precision", "20")
    raw = pd.read_csv(io.StringIO(csv), dtype=str)
    exps = raw[raw.Experiment.fillna("").str.startswith("lora-")]
    assert set(exps.Experiment) == {"lora-r2-lr0.01", "lora-r16-lr0.01"}
    # DVC reused the cached train_full: the same run_id as the baseline, in every experiment.
    assert set(exps["run_id"].astype(int)) == {base_run}
    df = sweep.parse_exp_show(csv)
    ok = df[df.name.str.startswith("lora-")]
    assert set(ok.status) == {"ok"} and set(ok.lora_trainable_params) == {200, 1600}
    # Re-queuing skips the experiments that already exist instead of failing on the name.
    cmds = sweep.queue(["lora"], cwd=repo, ranks=(2,), lrs=(0.01,))
    assert len(cmds) == 1 and "Queued" not in _dvc(repo, "queue", "status")
