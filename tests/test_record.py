"""The programme's grid and its record (woof.record), and what the compare stage makes of a record
(woof.compare's programme summary): selection on val, the reference runs at params.yaml's values,
paired curves, and the committed record agreeing with its own per-image files. No training here."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from woof import compare, paper, prose, record
from woof.io import at, write_json
from woof.stats import accuracy_ci

RUNS = [record.Run("zero-shot", "baseline", "zero_shot"),
        record.Run("full-lr5e-05", "full-lr", "full", {"full.lr": 5e-5}),
        record.Run("full-lr0.001", "full-lr", "full", {"full.lr": 1e-3}),
        record.Run("lora-r8", "lora-rank", "lora", {"lora.rank": 8, "lora.alpha": 16, "lora.lr": 3e-4}),
        record.Run("lora-r2", "lora-rank", "lora", {"lora.rank": 2, "lora.alpha": 4, "lora.lr": 3e-4}),
        record.Run("fraction0.5-full", "fraction", "full", {"data.train_fraction": 0.5}),
        record.Run("broken", "freeze", "full", {"full.freeze_blocks": 13})]


def params_yaml():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_every_programme_run_overrides_real_params():
    params = params_yaml()
    for run in record.programme():
        run.params(params)  # raises on a key params.yaml does not have
    names = [r.name for r in record.programme()]
    assert len(names) == len(set(names))
    assert {r.block for r in record.programme()} | {"seeds"} == set(record.BLOCKS)
    ranks = {r.overrides["lora.rank"]: r.overrides["lora.alpha"] for r in record.programme()
             if r.block == "lora-rank"}
    assert ranks == {r: 2 * r for r in (1, 2, 4, 8, 16, 32, 64)}  # the scale alpha/r stays 2
    assert pd.Series(names).str.contains("seed").sum() == 0  # seeds come from the record
    # Each family's blocks are blocks of the programme, and family() names their family.
    for fam, blocks in record.FAMILIES.items():
        assert set(blocks) <= set(record.BLOCKS) and {record.family(b) for b in blocks} == {fam}, fam
    assert record.family("baseline") == "zero_shot"


def test_reference_runs_follow_params_yaml():
    """The runs at params.yaml's own configuration (what the record's curves start from) are found
    from the params, not named in the code."""
    params = params_yaml()
    assert record.reference_runs(params) == {"full": "full-lr5e-05", "lora": "lora-r8", "scratch": "scratch"}
    params["full"]["lr"] = 1e-4
    params["train"]["precision"] = "bf16"  # the programme pins its own precision: no difference
    assert record.reference_runs(params)["full"] == "full-lr0.0001"


def test_selection_is_on_val_and_reports_test(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(record, "programme", lambda: list(RUNS))
    rows = [dict(name="full-lr5e-05", block="full-lr", method="full", status="ok", val_top1=0.90, test_top1=0.95,
                 trainable_params=100),
            dict(name="full-lr0.001", block="full-lr", method="full", status="ok", val_top1=0.92, test_top1=0.80,
                 trainable_params=100)]
    for row in rows:
        record.write_row({**row, "overrides": "{}"})
    df = record.read_record()
    assert record.select(df, ("full-lr",))["name"] == "full-lr0.001"  # val chooses, not test
    assert record.select(df, ("lora-rank",)) is None  # its runs are not recorded yet
    assert record.best(df, "full")["name"] == "full-lr0.001"  # the same rule, complete or not
    assert record.best(df, "lora") is None
    # Counts stay integers beside the empty cells of rows that lack them.
    record.write_row({**rows[0], "name": "lora-r8", "overrides": "{}", "corrupted_n": 12500})
    assert ",12500," in record.RECORD.read_text() and "12500.0" not in record.RECORD.read_text()


def test_still_to_run_counts_the_seeds_of_unfinished_grids(monkeypatch):
    monkeypatch.setattr(record, "programme", lambda: list(RUNS))
    extra = sum(s != 0 for s in record.SEEDS)  # seeds per method

    def rec(names):
        return pd.DataFrame([dict(name=n, status="ok", val_top1=0.9, test_top1=0.9, trainable_params=1)
                             for n in names], columns=["name", "status", "val_top1", "test_top1", "trainable_params"])

    assert record.still_to_run(rec([])) == len(RUNS) + 2 * extra
    # The full grid complete: its seeds are known runs, LoRA's still only a number.
    partial = rec(["zero-shot", "full-lr5e-05", "full-lr0.001", "lora-r8"])
    assert len(record.todo(partial)) == 3 + extra
    assert record.still_to_run(partial) == 3 + 2 * extra
    assert record.still_to_run(rec([r.name for r in RUNS])) == 2 * extra
    # A run's name selects like a block, in the order asked; a recorded run is not selected again.
    assert [r.name for r in record.todo(rec([]), ["lora-r8", "baseline"])] == ["lora-r8", "zero-shot"]
    assert [r.name for r in record.todo(rec([]), ["full-lr0.001", "full-lr"])] == ["full-lr0.001", "full-lr5e-05"]
    assert record.todo(partial, ["lora-r8"]) == []


def test_accuracy_columns_come_from_the_per_image_strings():
    row = record.accuracy_columns({"val": "1101", "test": "10"}, {"val": 1.0, "test": 0.5})
    assert (row["val_top1"], row["val_n"], row["test_top1"], row["test_n"], row["test_top5"]) == (0.75, 4, 0.5, 2, 0.5)
    assert (row["val_top1_lo"], row["val_top1_hi"]) == pytest.approx(accuracy_ci(np.array([1, 1, 0, 1], bool))[1:])


def test_freezing_and_fractions_are_paired_against_their_reference(tmp_path, monkeypatch):
    """The summary's freezing curve (0 = full fine-tuning at the freeze runs' lr, 12 = the val-best
    probe) and fraction curves (100 % = the default configuration), each point paired with its
    reference on the same images; the paper says where each sits."""
    monkeypatch.chdir(tmp_path)
    n = 40
    right = {"zero-shot": 30, "full-lr5e-05": 36, "freeze-4": 34, "freeze-8": 20, "probe-lr0.0001": 31,
             "probe-lr0.01": 28, "lora-r8": 35, "fraction0.1-full": 33, "fraction0.1-lora": 35,
             "fraction0.1-scratch": 5, "scratch": 12}
    blocks = {"zero-shot": "baseline", "full-lr5e-05": "full-lr", "lora-r8": "lora-rank", "scratch": "scratch",
              "freeze-4": "freeze", "freeze-8": "freeze", "probe-lr0.0001": "probe", "probe-lr0.01": "probe"}
    overrides = {"freeze-4": {"full.freeze_blocks": 4}, "freeze-8": {"full.freeze_blocks": 8},
                 "lora-r8": {"lora.rank": 8, "lora.alpha": 16, "lora.lr": 3e-4},
                 **{f"fraction0.1-{f}": {"data.train_fraction": 0.1} for f in ("full", "lora", "scratch")}}
    for name, k in right.items():
        correct = "1" * k + "0" * (n - k)  # the first k images right: every pair is nested
        write_json(record.DETAILS / f"{name}.json",
                   {"correct": {"test": correct, "val": correct}, "files_sha": {"test": "t", "val": "v"}})
        record.write_row({"name": name, "block": blocks.get(name, "fraction"), "method": "full",
                          "overrides": json.dumps(overrides.get(name, {})), "status": "ok",
                          "val_top1": k / n + (0.01 if name == "probe-lr0.0001" else 0), "test_top1": k / n,
                          "test_top1_lo": k / n - 0.05, "test_top1_hi": k / n + 0.05, "trainable_params": 10})
    df, correct = record.load(record.RECORD, record.DETAILS)
    s = compare.summarize(df, correct, params_yaml(), blocks=12)

    freezing = {p["frozen_blocks"]: p for p in s["freezing"]}
    assert {k: p["name"] for k, p in freezing.items()} == {0: "full-lr5e-05", 4: "freeze-4", 8: "freeze-8",
                                                           12: "probe-lr0.0001"}  # the val-best probe
    assert freezing[0]["vs_full"] is None
    t = freezing[8]["vs_full"]["test"]
    assert (t["a_only"], t["b_only"]) == (0, 16) and t["difference"] == pytest.approx(-16 / n)
    assert t["significant"] and not freezing[4]["vs_full"]["test"]["significant"]  # 2 discordant images

    assert [(r["rank"], r["name"]) for r in s["lora_ranks"]] == [(8, "lora-r8")]
    fractions = {(p["family"], p["fraction"]): p for p in s["fractions"]}
    assert set(fractions) == {(f, x) for f in ("full", "lora", "scratch") for x in (0.1, 1.0)}
    assert fractions[("full", 1.0)]["name"] == "full-lr5e-05" and fractions[("full", 1.0)]["vs_all_images"] is None
    assert fractions[("full", 0.1)]["vs_all_images"]["difference"] == pytest.approx(-3 / n)
    assert fractions[("lora", 0.1)]["vs_all_images"]["difference"] == 0

    s = json.loads(json.dumps(compare._clean(s)))  # as the paper reads it from compare.json
    text = " ".join(b.text for b in paper.freezing_paragraph(s["freezing"]) + paper.fractions_paragraph(s["fractions"]))
    assert "k = 8 50.0 % [45.0, 55.0], -40.0 points (95 % CI" in text and "the linear probe (`probe-lr0.0001`," in text
    assert "full fine-tuning on 10 % of them moves by -7.5 points" in text
    assert "from scratch 12.5 % (10 %), 30.0 % (100 %)" in text
    assert "From scratch on every training image the ViT reaches 30.0 %, against 82.5 % for full" in text
    assert paper.freezing_paragraph([]) == [] and paper.fractions_paragraph(s["fractions"][:0]) == []


def test_the_paper_says_how_far_val_separates_the_ranks():
    ranks = [{"rank": r, "name": f"lora-r{r}", "val_top1": v, "test_top1": t}
             for r, v, t in ((1, 0.934, 0.888), (8, 0.936, 0.904), (32, 0.937, 0.910))]
    spread = {s: max(r[f"{s}_top1"] for r in ranks) - min(r[f"{s}_top1"] for r in ranks) for s in ("val", "test")}
    text, = prose.selection_limitation({"lora_ranks": ranks, "lora_rank_spread": spread})
    assert "LoRA's 3 ranks span 0.3 points of val top-1 and 2.2 of test top-1" in text
    assert prose.selection_limitation({"lora_ranks": ranks[:2]}) == [] and prose.selection_limitation(None) == []


# ---------------------------------------------------------------- the committed record

COMMITTED = ROOT / "metrics" / "experiments.csv"


@pytest.mark.skipif(not COMMITTED.exists(), reason="no committed programme record")
def test_committed_record_rows_match_their_per_image_files():
    """Each row's accuracy columns are those of its metrics/experiments/<name>.json (one source),
    and each successful run names the archive and the weights it learnt from."""
    df = record.read_record(COMMITTED)
    assert len(df) and set(df.status) <= {"ok", "failed"}
    for row in df.to_dict("records"):
        name = row["name"]
        if row["status"] != "ok":
            assert math.isnan(row["test_top1"]), f"{name}: a failed run with numbers"
            continue
        for key in ("archive_sha256", "weights_sha256"):
            assert isinstance(row[key], str) and row[key], f"{name}: no {key}"
        details = json.loads((COMMITTED.parent / "experiments" / f"{name}.json").read_text())
        want = record.accuracy_columns(details["correct"], {s: row[f"{s}_top5"] for s in details["correct"]})
        assert {"val", "test"} <= set(details["correct"]) <= {"val", "test", "corrupted"}, name
        for split in details["correct"]:
            assert row[f"{split}_n"] == want[f"{split}_n"], (name, split)
            for col in (f"{split}_top1", f"{split}_top1_lo", f"{split}_top1_hi"):
                assert row[col] == pytest.approx(want[col], abs=1e-9), (name, col)


def test_the_cnn_backbone_is_selected_on_val_and_paired_on_test():
    """The CNN block: the val-best run of each of its methods, against its own zero-shot head and
    LoRA against full, on the same test images; the paper says whether the ViT's verdict holds."""
    n = 200
    def bits(k):  # the first k images right
        return (np.arange(n) < k, "files")
    names = {"cnn-zero-shot": (180, 150), "cnn-full-lr0.0001": (170, 160), "cnn-full-lr0.001": (190, 140),
             "cnn-lora-r4": (175, 170), "cnn-probe-lr0.001": (160, 150)}  # val right, test right
    df = pd.DataFrame([dict(name=k, block="cnn", method="zero_shot" if "zero" in k else "lora" if "lora" in k else "full",
                            status="ok", val_top1=v / n, test_top1=t / n, val_top1_lo=0.0, val_top1_hi=1.0,
                            test_top1_lo=0.0, test_top1_hi=1.0, trainable_params=1.0) for k, (v, t) in names.items()])
    correct = {k: {"val": bits(v), "test": bits(t)} for k, (v, t) in names.items()}
    s = compare.cnn_summary(df, correct, {"significant": False, "difference": 0.006})
    assert s["best"]["full"]["name"] == "cnn-full-lr0.001"  # the better val, although its test is worse
    assert s["best"]["probe"]["name"] == "cnn-probe-lr0.001" and s["runs"]["missing"] == 3
    assert s["best"]["lora"]["vs_zero_shot"]["difference"] == pytest.approx((170 - 150) / n)
    t = s["lora_vs_full"]
    assert (t["a_only"], t["b_only"]) == (30, 0) and t["significant"]
    s = json.loads(json.dumps(compare._clean(s)))
    text = paper.cnn_paragraph(s)[0].text
    assert "MobileOne-S0" in text and "`cnn-full-lr0.001`" in text and "the verdict differs from the ViT's" in text
    s = compare.cnn_summary(df, correct, {"significant": True, "difference": 0.01})
    assert "holds" in paper.cnn_paragraph(json.loads(json.dumps(compare._clean(s))))[0].text
    assert compare.cnn_summary(df[df.name != "cnn-zero-shot"], correct) is None


def test_ema_and_seeds_join_once_their_grids_are_complete():
    """The EMA run repeats the val-best layer-decay configuration with full.ema_decay; it exists once
    that grid is complete, and layer decay's seeds once the EMA run is recorded too: they rerun the
    val-best of the grid and the EMA run (selection on val)."""
    llrd = [r for r in record.programme() if r.block == "full-llrd"]
    rows = [dict(name=r.name, block=r.block, method="full", status="ok", val_top1=0.9 + 0.01 * i,
                 trainable_params=1.0) for i, r in enumerate(llrd)]
    partial = pd.DataFrame(rows[:-1])
    assert record.ema_runs(partial) == [] and not any("llrd" in r.name for r in record.seed_runs(partial))
    complete = pd.DataFrame(rows)
    ema, = record.ema_runs(complete)
    best = llrd[-1]  # the highest val top-1
    assert ema.name == f"{best.name}-ema" and ema.overrides == {**best.overrides, "full.ema_decay": record.EMA_DECAY}
    assert ema in record.all_runs(complete) and not any("llrd" in r.name for r in record.seed_runs(complete))
    # one grid run fewer: the EMA run and layer decay's seeds were counted before they were known
    assert record.still_to_run(complete) == record.still_to_run(partial) - 1
    for ema_val, seeded in ((0.5, best), (0.99, ema)):  # the EMA run below, then above, the grid's val-best
        done = pd.concat([complete, pd.DataFrame([dict(name=ema.name, block=ema.block, method="full", status="ok",
                                                       val_top1=ema_val, trainable_params=1.0)])])
        seeds = [r for r in record.seed_runs(done) if "llrd" in r.name]
        assert [r.name for r in seeds] == [f"{seeded.name}-seed{s}" for s in (1, 2)]
        assert [record.split_seed(r.name) for r in seeds] == [(seeded.name, s) for s in (1, 2)]  # names read back
        assert record.split_seed(seeded.name) == (seeded.name, 0)
        assert [r.overrides for r in seeds] == [{**seeded.overrides, "full.seed": s} for s in (1, 2)]
        assert record.still_to_run(done) == record.still_to_run(complete) - 1


def test_second_round_pairs_layer_decay_and_dora_with_the_first_round():
    """Layer decay and DoRA by their val-best runs so far, paired on the same test images with the
    first round's val-best runs; an incomplete grid is called provisional; the paper says whether
    layer decay changes the LoRA-vs-full verdict."""
    n = 200
    runs = {"full-lr2e-05": ("full-lr", 180, 150), "lora-r8": ("lora-rank", 181, 152),
            "full-llrd0.75-lr0.0001": ("full-llrd", 185, 180)}  # block, val right, test right
    df = pd.DataFrame([dict(name=k, block=b, status="ok") for k, (b, _, _) in runs.items()])
    correct = {k: {"val": (np.arange(n) < v, "f"), "test": (np.arange(n) < t, "f")} for k, (_, v, t) in runs.items()}
    best = {fam: dict(name=k, val_top1=v / n, test_top1=t / n, test_top1_lo=0.0, test_top1_hi=1.0)
            for fam, (k, (_, v, t)) in zip(("full", "lora", "llrd"), runs.items())}
    lora_vs_full = compare.paired(correct, "lora-r8", "full-lr2e-05")
    assert not lora_vs_full["significant"]  # 2 images apart
    sr = compare.second_round(df, correct, best, lora_vs_full)
    assert sr["recorded"] == {"llrd": {"ok": 1, "of": 4}, "dora": {"ok": 0, "of": 6}}
    t = sr["paired"]["llrd_vs_full"]
    assert (t["a_only"], t["b_only"]) == (30, 0) and t["significant"] and set(sr["paired"]) == {"llrd_vs_full", "lora_vs_llrd"}
    assert sr["llrd_changes_verdict"]  # level with plain full fine-tuning, significantly behind it with layer decay
    text = paper.second_round_paragraph({"second_round": compare._clean(sr), "best": best})[0].text
    assert "`full-llrd0.75-lr0.0001`" in text and "1 of 4 runs recorded; the val-best so far is provisional" in text
    assert "DoRA: none of its 6 runs is recorded yet" in text and "Layer decay changes the verdict" in text


@pytest.mark.parametrize("ema_val, helps", [(190, True), (185, False)])
def test_the_ema_run_is_weighed_on_val_against_the_run_it_repeats(ema_val, helps):
    """Once layer decay's grid and its EMA run are recorded, compare says whether the EMA helps on
    val (a tie does not), pairs it on test with the run it repeats, and the paper words it."""
    n = 200
    llrd = [r.name for r in record.programme() if r.block == "full-llrd"]
    right = {name: (182 + i, 170) for i, name in enumerate(llrd)}  # the last is the grid's val-best: 185 right
    ema, = record.ema_runs(pd.DataFrame([dict(name=k, block="full-llrd", status="ok", val_top1=v / n, trainable_params=1.0)
                                         for k, (v, _) in right.items()]))
    right[ema.name] = (ema_val, 176)
    df = pd.DataFrame([dict(name=k, block="full-llrd", method="full", status="ok", val_top1=v / n, test_top1=t / n,
                            test_top1_lo=0.0, test_top1_hi=1.0, trainable_params=1.0) for k, (v, t) in right.items()])
    correct = {k: {"val": (np.arange(n) < v, "f"), "test": (np.arange(n) < t, "f")} for k, (v, t) in right.items()}
    e = compare.ema_effect(df, correct)
    assert (e["name"], e["base"], e["helps_on_val"]) == (ema.name, llrd[-1], helps)
    assert (e["val_top1"], e["base_val_top1"]) == (ema_val / n, 185 / n) and e["vs_base"]["a_only"] == 6
    assert (record.best(df, "llrd")["name"] == ema.name) == helps  # the family's val-best follows the same rule
    text = paper.ema_sentence(json.loads(json.dumps(compare._clean(e))))
    assert f"`{ema.name}`" in text and ("helps on val" if helps else "does not help on val") in text
    assert compare.ema_effect(df[df.name != ema.name], correct) is None  # not recorded yet


def test_the_abstract_states_the_second_round():
    """The abstract's and conclusion's second-round sentence: layer decay (with its EMA when that won
    on val) and DoRA against the first round, the CNN's verdict, provisional while runs are missing."""
    def t(a_only, b_only, significant=False):
        return {"a_only": a_only, "b_only": b_only, "difference": (a_only - b_only) / 500, "significant": significant,
                "difference_ci": [-0.01, 0.03], "p_value": 0.016 if significant else 0.5}
    sr = {"paired": {"llrd_vs_full": t(8, 1, True), "lora_vs_llrd": t(1, 5), "dora_vs_lora": t(0, 0)},
          "ema": {"helps_on_val": True}, "llrd_changes_verdict": False,
          "recorded": {"llrd": {"ok": 5, "of": 5}, "dora": {"ok": 6, "of": 6}}}
    prog = {"second_round": sr, "best": {"llrd": {"test_top1": 0.91}},
            "cnn": {"lora_vs_full": t(3, 5), "vit_verdict_holds": True}}
    text = paper.second_round_sentence({"prog": prog})
    assert text.startswith(" Full fine-tuning with layer-wise learning-rate decay and an EMA of its weights") and "91.0 %" in text
    assert "+1.4 points" in text and "p = 0.016" in text and "layer decay does not change the verdict" in text
    assert "DoRA and LoRA are right on exactly the same test images" in text and "the same verdict" in text
    assert "provisional" not in text and text.endswith(".")
    sr["recorded"]["dora"]["ok"], sr["ema"]["helps_on_val"], sr["paired"]["dora_vs_lora"] = 5, False, t(2, 0)
    text = paper.second_round_sentence({"prog": prog})
    assert "EMA" not in text and "DoRA against LoRA: +0.4 points" in text and "(provisional" in text
    assert paper.second_round_sentence({"prog": {"best": {}}}) == ""  # no second round yet
    prog["second_round"] = {}
    assert paper.second_round_sentence({"prog": prog}).startswith(" On a CNN, MobileOne-S0")


def test_the_answers_tests_are_corrected_together_and_the_paper_says_which_survive():
    """LoRA against full, the second round's tests and the CNN's are the answer's family: compare
    adds Holm's p to each in place, and the limitations, the README list and every sentence that
    calls one of them significant give the corrected p beside the raw one."""
    def t(p):
        return {"p_value": p, "significant": p < 0.05, "difference": 0.01, "difference_ci": [0.0, 0.02]}
    prog = {"lora_vs_full": t(0.45), "second_round": {"paired": {"llrd_vs_full": t(0.004), "lora_vs_llrd": t(0.02)}},
            "cnn": {"lora_vs_full": t(0.81)}}
    paths = compare.answer_tests(prog)
    assert paths == ["lora_vs_full", "second_round.paired.llrd_vs_full", "second_round.paired.lora_vs_llrd",
                     "cnn.lora_vs_full"]
    # sorted 0.004, 0.02, 0.45, 0.81 times 4, 3, 2, 1 -> 0.016, 0.06, 0.9, 0.81 -> running max 0.9
    sr = prog["second_round"]["paired"]
    assert [at(prog, p)["p_holm"] for p in paths] == pytest.approx([0.9, 0.016, 0.06, 0.9])
    assert sr["llrd_vs_full"]["significant_holm"] and not sr["lora_vs_llrd"]["significant_holm"]
    assert {at(prog, p)["family"] for p in paths} == {4}
    text, = prose.multiplicity_limitation({**prog, "answer_tests": paths})
    assert "rests on 4 paired tests" in text
    assert "full fine-tuning with layer decay against full fine-tuning goes from p = 0.004 to p = 0.016, still" in text
    assert "LoRA against full fine-tuning with layer decay goes from p = 0.02 to p = 0.06, no longer significant" in text
    assert "p = 0.06 after Holm's correction for the 4 tests" in paper._difference(sr["lora_vs_llrd"])
    assert "Holm" not in paper._difference(prog["lora_vs_full"])  # not significant alone: nothing to correct
    prog = {"lora_vs_full": t(0.45), "second_round": {"paired": {}}, "cnn": None}  # one test, no CNN
    assert compare.answer_tests(prog) == ["lora_vs_full"] and prog["lora_vs_full"]["p_holm"] == pytest.approx(0.45)
    assert prose.multiplicity_limitation({**prog, "answer_tests": ["lora_vs_full"]}) == []


@pytest.mark.parametrize("apart, alike", [(1, True), (20, False)])
def test_dora_and_lora_are_compared_seed_by_seed(apart, alike):
    """Each DoRA run against the LoRA run of the same seed, on the same images: the paper gives the
    most images on which exactly one is right, and calls them practically one model only within 1 %."""
    n = 500
    lora = ["lora-r32", "lora-r32-seed1", "lora-r32-seed2"]
    dora = ["dora-r32-seed2", "dora-r32", "dora-r32-seed1"]  # the record's order need not be the seeds'
    right = {name: np.arange(n) < 450 for name in lora}
    right["dora-r32"] = right["dora-r32-seed1"] = np.arange(n) < 450
    right["dora-r32-seed2"] = np.arange(n) < 450 + apart  # apart images more than LoRA at seed 2
    correct = {k: {"val": (v, "f"), "test": (v, "f")} for k, v in right.items()}
    pairs = compare.by_seed(correct, dora, lora)
    assert [p["seed"] for p in pairs] == [2, 0, 1]
    assert [(p["test"]["a_only"], p["test"]["b_only"]) for p in pairs] == [(apart, 0), (0, 0), (0, 0)]
    assert compare.by_seed(correct, dora, lora[:1]) == [compare.by_seed(correct, dora, lora)[1]]  # only seed 0 pairs
    text = paper.same_seed_sentence(json.loads(json.dumps(compare._clean(pairs))))
    assert f"right on at most {apart} of the 500 test images and {apart} of the 500 val images, over their 3 seeds" in text
    assert ("DoRA is practically LoRA" in text) == alike
