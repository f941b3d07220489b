"""woof.sweep: the sweep calls it queues (checked against DVC's own Hydra sweep code), what it reads
from dvc.api.exp_show, the tables and figures of `collect`; then, on a real temporary git + DVC
repository, a LoRA grid queued, run and read back end to end. The repository helpers here are also
test_pr_report's."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from woof import sweep

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"
needs_dvc = pytest.mark.skipif(not DVC.exists(), reason="dvc is not installed next to this Python")

# The baseline commit's row as dvc.api.exp_show returns it for this pipeline (DVC 3.67): flat, a key
# alone names a column unless another file has it too, params.yaml included (cost.json's lora.rank);
# numbers as floats, booleans, lists and nulls as text. The namesakes (compare.json, cost.json) hold
# decoy values, so reading the wrong file fails a test.
BASE = {
    "Created": "Jan 01, 2026", "parent": None, "State": None, "Executor": None,
    "zero_shot.val.top1": 0.61, "full.val.top1": 0.9, "lora.val.top1": 0.88, "lora.val.top5": 0.99,
    "zero_shot.test.top1": 0.6, "full.test.top1": 0.89, "lora.test.top1": 0.87,
    "metrics/compare.json:full.top1": 0.12, "metrics/compare.json:lora.top1": 0.13,
    "metrics/train_full.json:trainable_params": 5500000.0, "metrics/train_full.json:train_minutes": 10.0,
    "metrics/train_lora.json:trainable_params": 75000.0, "metrics/train_lora.json:train_minutes": 8.0,
    "metrics/cost.json:lora.rank": 99.0, "metrics/cost.json:lora.trainable_params": 4.0,
    "model.name": "vit_tiny_patch16_224", "model.weights": "None", "data.train_fraction": 1.0,
    "full.lr": 5e-05, "full.trainable": "['all']", "full.freeze_blocks": 0.0, "full.pretrained": "True",
    "lora.lr": 0.0003, "params.yaml:lora.rank": 8.0, "lora.alpha": 16.0, "lora.targets": "qkv",
}
PARAM_KEYS = ["model.name", "model.weights", "data.train_fraction", "full.lr", "full.trainable",
              "full.freeze_blocks", "full.pretrained", "lora.lr", "lora.rank", "lora.alpha", "lora.targets"]
NO_METRICS = dict.fromkeys([k for k in BASE if k.startswith(("metrics/", "zero_shot.", "full.val", "full.test",
                                                               "lora.val", "lora.test"))])  # a queued run's


def _exp(name, rev, state, changes):
    return {"Experiment": name, "rev": rev, "typ": "branch_commit", **BASE, "State": state,
            "Executor": "Dvc-task" if state in ("Queued", "Running", "Success") else None, **changes}


def _lora(r, lr, top1=None, params=None):
    return {"params.yaml:lora.rank": float(r), "lora.alpha": 2.0 * r, "lora.lr": lr,
            **({"lora.val.top1": top1, "metrics/train_lora.json:trainable_params": params,
                "metrics/train_lora.json:train_minutes": 7.0} if top1 else {})}


EXP_SHOW = [
    {"Experiment": None, "rev": "workspace", "typ": "baseline", **BASE, "Created": None},
    {"Experiment": None, "rev": "main", "typ": "baseline", **BASE},
    _exp("lora-r2-1", "aaa1111", "Success", _lora(2, 0.001, 0.84, 20000.0)),
    _exp("lora-r2-2", "aaa2222", "Success", _lora(2, 0.003, 0.85, 20000.0)),
    _exp("lora-r4-1", "aaa3333", "Success", _lora(4, 0.001, 0.86, 38000.0)),
    # Failed and running experiments show their parent commit's metrics (0.88 ...), not their own.
    _exp("lora-r4-2", "aaa4444", "Failed", _lora(4, 0.003)),
    _exp("lora-r16-1", "aaa5555", "Running", _lora(16, 0.001)),
    _exp("freeze-3", "bbb1111", "Success", {"full.freeze_blocks": 6.0, "full.val.top1": 0.87,
                                            "metrics/train_full.json:trainable_params": 2800000.0}),
    _exp("exp-5f2a1", "ccc1111", "Success", {"data.train_fraction": 0.2, "full.val.top1": 0.8,
                                             "lora.val.top1": 0.86}),
    _exp("backbone-resnet18", "ddd1111", "Success", {"model.name": "resnet18", "full.val.top1": 0.85,
                                                     "lora.val.top1": 0.8, "lora.targets": r"layer\d\.\d\.conv[12]"}),
    _exp("probe", "eee1111", "Queued", {"full.trainable": "['head']", **NO_METRICS}),
    # Done, but evaluate.json could not be read ("!"); its queue task forgotten (State None).
    _exp("scratch", "fff1111", None, {"full.pretrained": "False", "full.val.top1": "!", "lora.val.top1": "!"}),
]


def _S(cmd):
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "-S"]


def test_queue_commands_one_call_per_grid():
    cmds = sweep.queue_commands(["lora"])
    assert len(cmds) == len(sweep.RANKS)  # one per rank, each sweeping the learning rates
    assert cmds[0][:6] == ["dvc", "exp", "run", "--queue", "-n", "lora-r1"]
    for r, cmd in zip(sweep.RANKS, cmds):
        assert _S(cmd) == [f"lora.rank={r}", f"lora.alpha={2 * r}", "lora.lr=0.0003,0.001,0.003"]
    other = {c[5]: _S(c) for c in sweep.queue_commands(["probe", "scratch", "fraction", "freeze", "backbone"])}
    assert other["probe"] == ["full.trainable=[head]"] and other["scratch"] == ["full.pretrained=false"]
    assert other["fraction"] == ["data.train_fraction=0.1,0.2,0.5,1.0"]
    assert other["freeze"] == ["full.freeze_blocks=2,4,6,8,10"]
    # Quoted for DVC's Hydra parser (-S), which would read an unquoted [12] as a list.
    assert other["backbone-resnet18"] == ["model.name=resnet18", "model.weights=null",
                                          r"lora.targets='layer\d\.\d\.conv[12]'"]
    assert sweep.queue_commands(["lora"], copy_paths=["w.safetensors"])[0][6:8] == ["-C", "w.safetensors"]
    with pytest.raises(ValueError, match="unknown comparison"):
        sweep.queue_commands(["lora-rank"])


def test_dvc_expands_each_call_into_our_points_in_our_order(tmp_path):
    """DVC's own sweep code (what `dvc exp run --queue -S` runs) gives the points of points(), in
    their order (so NAME-i is the i-th point) and with their types once written to params.yaml."""
    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps
    entries = [e for c in sweep.COMPARISONS for e in sweep.grid(c, ranks=(2, 16), lrs=(3e-4, 1 / 3))]
    for name, overrides in entries:
        expanded = get_hydra_sweeps({"params.yaml": _S(sweep.queue_command(name, overrides))})
        ours = sweep.points(overrides)
        assert len(expanded) == len(ours) == len(sweep.names(name, len(ours)))
        for dvc_point, point in zip(expanded, ours):
            params = tmp_path / "params.yaml"
            params.write_text((ROOT / "params.yaml").read_text())
            apply_overrides(params, dvc_point["params.yaml"])
            written = yaml.safe_load(params.read_text())
            for key, value in point.items():
                section, k = key.split(".")
                got = written[section][k]
                assert got == value and type(got) is type(value), (name, key, got, value)
            if name.startswith("lora-"):
                assert written["lora"]["alpha"] == 2 * written["lora"]["rank"]  # scale alpha/r fixed
    assert sweep.names("lora-r2", 2) == ["lora-r2-1", "lora-r2-2"] and sweep.names("probe", 1) == ["probe"]


def test_experiments_reads_the_right_files():
    """Accuracies from evaluate.json, params from params.yaml, trainable params from train_*.json."""
    row = sweep.experiments(EXP_SHOW).set_index("name").loc["lora-r4-1"]
    assert row["rank"] == 4  # params.yaml:lora.rank, not cost.json's 99
    assert row["lora_top1"] == pytest.approx(0.86) and row["full_top1"] == pytest.approx(0.9)  # not compare.json's
    assert row["zero_shot_top1"] == pytest.approx(0.61) and row["lora_top5"] == pytest.approx(0.99)
    assert row["lora_trainable_params"] == 38000 and row["full_trainable_params"] == 5500000
    assert row["lora_train_minutes"] == 7.0 and row["full_train_minutes"] == 10.0


def test_experiments_status_types_and_no_stale_metrics():
    df = sweep.experiments(EXP_SHOW).set_index("name")
    assert df.status.to_dict() == {
        "workspace": "workspace", "main": "baseline", "lora-r2-1": "ok", "lora-r2-2": "ok", "lora-r4-1": "ok",
        "lora-r4-2": "failed", "lora-r16-1": "running", "freeze-3": "ok", "exp-5f2a1": "ok",
        "backbone-resnet18": "ok", "probe": "queued", "scratch": "failed"}
    # exp_show gave the failed and the running run their parent's 0.88 and 75,000: not theirs.
    for name in ("lora-r4-2", "lora-r16-1"):
        assert df.loc[name, sweep.METRICS].isna().all() and df.loc[name, "rank"] in (4, 16)
    assert df.loc["probe", "full_trainable"] == "head" and df.loc["main", "full_trainable"] == "all"
    assert df.pretrained.dtype == bool and not df.loc["scratch", "pretrained"] and df.loc["main", "pretrained"]
    assert df.loc["backbone-resnet18", "targets"] == r"layer\d\.\d\.conv[12]"
    assert df.loc["lora-r2-2", "lr"] == 0.003 and df.loc["freeze-3", "freeze_blocks"] == 6


def test_cell_turns_exp_show_text_back_into_values():
    assert [sweep._cell(v) for v in ("True", "False", "None", "!", "['head']", "[0.35, 1.0]", "qkv", 8.0, 3, None)] \
        == [True, False, None, None, "head", "0.35,1.0", "qkv", 8.0, 3.0, None]


def test_plan_queues_only_new_points():
    def plan(name, overrides):
        return sweep.plan(name, overrides, EXP_SHOW, PARAM_KEYS)

    lora = {"lora.rank": (2,), "lora.alpha": (4,), "lora.lr": (0.001, 0.003)}
    assert plan("lora-r2", lora) == []  # both points exist
    assert plan("lora-r4", {**lora, "lora.rank": (4,), "lora.alpha": (8,)}) == []  # a failed one counts
    # freeze-3 has the default LoRA params (r=8, lr 3e-4) but another full.freeze_blocks: not this point.
    r8 = {"lora.rank": (8,), "lora.alpha": (16,), "lora.lr": (0.0003, 0.001)}
    assert plan("lora-r8", r8) == [sweep.queue_command("lora-r8", r8)]  # one sweep call
    # A longer grid: only the new point, alone, named by its value.
    assert plan("lora-r2", {**lora, "lora.lr": (0.001, 0.003, 0.01)}) == [
        ["dvc", "exp", "run", "--queue", "-n", "lora-r2-lr0.01", "-S", "lora.rank=2", "-S", "lora.alpha=4",
         "-S", "lora.lr=0.01"]]
    # New points, but DVC would call the first lora-r16-1, which a running experiment is.
    r16 = {"lora.rank": (16,), "lora.alpha": (32,), "lora.lr": (0.01, 0.03)}
    assert [c[5] for c in plan("lora-r16", r16)] == ["lora-r16-lr0.01", "lora-r16-lr0.03"]
    assert [c[5] for c in plan("probe", {"full.trainable": (["head"],), "full.lr": (1e-4,)})] == ["probe-2"]


def _states(*states):
    return [{"Experiment": None, "rev": "workspace", "typ": "baseline", "State": None}] + [
        {"Experiment": f"e{i}", "rev": f"r{i}", "typ": "branch_commit", "State": st} for i, st in enumerate(states)]


def test_wait_polls_exp_show_until_nothing_is_queued_or_running(monkeypatch):
    polls = iter([_states("Running", "Queued"), _states("Success", "Running"), _states("Success", "Failed")])
    calls = []
    monkeypatch.setattr(sweep, "exp_show", lambda cwd=None: next(polls))
    monkeypatch.setattr(sweep, "dvc", lambda *args, cwd=None: calls.append(args))  # never `dvc queue status`
    monkeypatch.setattr(sweep, "_workers_alive", lambda cwd=None: True)
    assert [r["State"] for r in sweep.wait(poll_s=0)] == [None, "Success", "Failed"]
    assert next(polls, None) is None and calls == []  # it waited for the third poll, asking no worker
    monkeypatch.setattr(sweep, "exp_show", lambda cwd=None: _states("Running"))
    with pytest.raises(TimeoutError):
        sweep.wait(timeout_s=0, poll_s=0)


def test_wait_restarts_dead_workers_while_experiments_are_queued(monkeypatch):
    calls, alive = [], iter([False, False, True, True])
    polls = iter([_states("Success", "Queued")] * 3 + [_states("Success", "Success")])
    monkeypatch.setattr(sweep, "exp_show", lambda cwd=None: next(polls))
    monkeypatch.setattr(sweep, "dvc", lambda *args, cwd=None: calls.append(args))
    monkeypatch.setattr(sweep, "_workers_alive", lambda cwd=None: next(alive))
    sweep.wait(poll_s=0, jobs=2)
    assert calls == [("queue", "start", "-j", "2")]  # once: after two polls without a worker
    # Dead for good: it gives up after `restarts`, instead of waiting 48 hours.
    monkeypatch.setattr(sweep, "exp_show", lambda cwd=None: _states("Queued"))
    monkeypatch.setattr(sweep, "_workers_alive", lambda cwd=None: False)
    with pytest.raises(RuntimeError, match="died with 1 experiment"):
        sweep.wait(poll_s=0, restarts=1)
    # A run left Running by a dead worker, nothing queued: reported, not waited for.
    monkeypatch.setattr(sweep, "exp_show", lambda cwd=None: _states("Running"))
    assert sweep.wait(poll_s=0, restarts=0)[1]["State"] == "Running"


def test_workers_alive_reads_dvcs_process_files(tmp_path):
    celery = tmp_path / ".dvc" / "tmp" / "exps" / "celery"
    celery.mkdir(parents=True)
    assert not sweep._workers_alive(tmp_path)
    (celery / "dvc-exp-worker-1.json").write_text(json.dumps({"pid": os.getpid(), "returncode": 0}))
    assert not sweep._workers_alive(tmp_path)  # it ended
    gone = subprocess.Popen(["true"])
    gone.wait()
    (celery / "dvc-exp-worker-3.json").write_text(json.dumps({"pid": gone.pid, "returncode": None}))
    assert not sweep._workers_alive(tmp_path)  # killed before DVC could note a returncode
    (celery / "dvc-exp-worker-2.json").write_text(json.dumps({"pid": os.getpid(), "returncode": None}))
    assert sweep._workers_alive(tmp_path)


def test_collect_writes_tables_figures_and_lists_failures(tmp_path):
    tables = sweep.collect(EXP_SHOW, tmp_path / "metrics", tmp_path / "plots", tmp_path / "sweep.md")
    t = pd.read_csv(tmp_path / "metrics" / "sweep.csv").set_index("name")
    assert set(t.index) == {"lora-r2-1", "lora-r2-2", "lora-r4-1", "lora-r4-2", "lora-r16-1"}
    assert t.loc["lora-r4-2", "status"] == "failed" and pd.isna(t.loc["lora-r4-2", "top1"])  # listed, not dropped
    assert t.loc["lora-r4-1", "trainable_params"] == 38000 and t.loc["lora-r4-1", "alpha"] == 8
    assert t.val_best.sum() == 1 and t.loc["lora-r4-1", "val_best"]  # 0.86, the best finished point
    png = tmp_path / "plots" / "sweep.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The unnamed exp-5f2a1 changed data.train_fraction: it is the fraction comparison.
    assert set(tables) == {"lora", "freeze", "fraction", "backbone", "probe", "scratch"}
    frac = tables["fraction"]
    assert set(frac.name) == {"baseline", "exp-5f2a1"} and set(frac.method) == {"full", "lora"}
    for comparison in ("freeze", "fraction", "backbone"):
        assert (tmp_path / "plots" / f"sweep_{comparison}.png").exists()
        assert (tmp_path / "metrics" / f"sweep_{comparison}.csv").exists()
    md = (tmp_path / "sweep.md").read_text()
    assert "`lora-r4-2` (aaa4444): failed" in md and "dvc queue logs lora-r4-2" in md
    assert "`lora-r16-1` (aaa5555): running" in md and "`probe` (eee1111): queued" in md
    assert "`scratch` (fff1111): failed" in md  # no metrics although "done"


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


# A stand-in for the training stages: instant, and rank 3 fails.
TRAIN = """\
import json, os, sys, time, yaml
p = yaml.safe_load(open("params.yaml"))
os.makedirs("metrics", exist_ok=True); os.makedirs("plots", exist_ok=True)
if sys.argv[1] == "full":
    json.dump({"run_id": time.time_ns(), "trainable_params": 5000}, open("metrics/train_full.json", "w"))
else:
    r = p["lora"]["rank"]
    if r == 3:
        sys.exit("rank 3 fails")
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
    """Two stages like the project's (train_lora writes evaluate.json), a top-level plot over a CSV
    like the project's Loss, and a DVC-cached image; reproduced and committed at lora.rank 4."""
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
        plots:
          - Loss:
              x: epoch
              y:
                plots/train_lora.csv: [train_loss, val_loss]
        """))
    _dvc(repo, "repro", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "rank 4")


@needs_dvc
def test_queue_runs_lora_grid_without_retraining_train_full(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    _init(repo)
    _pipeline(repo)
    base_run = json.loads((repo / "metrics" / "train_full.json").read_text())["run_id"]
    # As the Makefile runs it: `queue --run -j N` alone queues, starts the workers and waits.
    monkeypatch.chdir(repo)
    sweep.main(["queue", "lora", "--ranks", "2", "3", "--lrs", "0.01", "0.02", "--run", "-j", "1"])
    status = _dvc(repo, "queue", "status")
    assert "Queued" not in status and "Running" not in status
    rows = sweep.exp_show()
    raw = {r["Experiment"]: r for r in rows if r["Experiment"]}
    # Two sweep calls, four experiments, named by DVC in the order of points().
    assert set(raw) == {"lora-r2-1", "lora-r2-2", "lora-r3-1", "lora-r3-2"}
    assert [(raw[n]["lora.rank"], raw[n]["lora.alpha"], raw[n]["lora.lr"]) for n in sorted(raw)] == [
        (2, 4, 0.01), (2, 4, 0.02), (3, 6, 0.01), (3, 6, 0.02)]
    # DVC reused the cached train_full: the same run_id as the baseline, in every finished experiment.
    assert {raw[n]["run_id"] for n in ("lora-r2-1", "lora-r2-2")} == {float(base_run)}
    # exp_show shows the failed runs with the baseline's metrics; experiments() does not take them.
    assert raw["lora-r3-1"]["State"] == "Failed" and raw["lora-r3-1"]["lora.val.top1"] == pytest.approx(0.84)
    df = sweep.experiments(rows).set_index("name")
    assert df.loc[["lora-r2-1", "lora-r2-2"], "status"].tolist() == ["ok", "ok"]
    assert df.loc[["lora-r3-1", "lora-r3-2"], "status"].tolist() == ["failed", "failed"]
    assert df.loc["lora-r2-1", "lora_trainable_params"] == 200 and pd.isna(df.loc["lora-r3-1", "lora_top1"])
    sweep.main(["collect", "--metrics-dir", "m", "--plots-dir", "p", "--summary", "sweep.md"])
    table = pd.read_csv(repo / "m" / "sweep.csv").set_index("name")
    assert table.loc["lora-r2-1", "top1"] == pytest.approx(0.82) and table.val_best.sum() == 1
    assert "`lora-r3-2`" in (repo / "sweep.md").read_text()
    # Re-queuing the same grid queues nothing; a longer one only its new points.
    assert sweep.queue(["lora"], cwd=repo, ranks=(2, 3), lrs=(0.01, 0.02)) == []
    longer = sweep.plan("lora-r2", sweep.grid("lora", ranks=(2,), lrs=(0.01, 0.02, 0.03))[0][1], rows,
                        sweep._param_keys(repo))
    assert [c[5] for c in longer] == ["lora-r2-lr0.03"]
