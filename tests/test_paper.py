"""The paper (report.md + report.pdf) on fabricated metrics: it builds, pdftotext finds every
section and the headline numbers as compare.json has them, its prose follows the numbers, and a
missing input names the file."""
import json
import shutil
import subprocess

import pytest
import yaml
from PIL import Image

from test_compare import ATTENTION, fabricate
from woof import compare, document, figures, paper
from woof.io import write_json
from woof.labels import pct_ci, pvalue

SECTIONS = ["Introduction", "Related work", "Method", "Setup", "Results", "Attention", "Discussion",
            "Limitations", "Conclusion", "References"]
needs_poppler = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler-utils not installed")


def run_compare(root):
    """What the compare stage computes from the metrics as they are now (compare.json)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    write_json(root / "metrics" / "compare.json",
               compare.build(root / "metrics", root / "plots" / "predictions", params))


def pipeline_outputs(root, **kw):
    """Everything the compare stage leaves behind, from fabricated stage outputs."""
    fabricate(root, **kw)
    (root / "metrics" / "attention.json").write_text(json.dumps(dict(ATTENTION, split="test")))
    run_compare(root)
    figures.pipeline_figures(compare.collect(root / "metrics"), root / "plots", root / "plots", root / "dvclive")
    for name in ("attention_cls", "attention_rollout"):  # stand-ins for visualize_attention's figures
        Image.open(root / "plots" / "compare_params.png").convert("RGB").save(root / "plots" / f"{name}.jpg")
    return yaml.safe_load((root / "params.yaml").read_text())


def build(root, monkeypatch):
    monkeypatch.chdir(root)
    doc = paper.build("metrics/compare.json", "plots", yaml.safe_load(open("params.yaml")))
    document.write(doc, "report.md", "report.pdf", ".")
    return doc


@needs_poppler
def test_pdf_has_every_section_and_the_headline_numbers(tmp_path, monkeypatch):
    pipeline_outputs(tmp_path)
    doc = build(tmp_path, monkeypatch)
    text = subprocess.run(["pdftotext", "-layout", "report.pdf", "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    for title in SECTIONS:
        assert title in text, title
    compare = json.loads((tmp_path / "metrics/compare.json").read_text())
    for method in ("full", "lora"):  # the headline numbers, formatted once, as compare.json has them
        c = compare[method]
        assert pct_ci(c["top1"], c["top1_lo"], c["top1_hi"]) in flat
    t = compare["paired"]["test"]["lora_vs_full"]
    assert pvalue(t["p_value"]) in flat and f"{100 * t['difference']:+.1f}" in flat
    pages = int(subprocess.run(["pdfinfo", "report.pdf"], capture_output=True, text=True).stdout
                .split("Pages:")[1].split()[0])
    assert 4 <= pages <= 9
    figures = [p for b in doc.blocks if isinstance(b, document.Figure) for p in b.paths]
    assert len(figures) >= 4 and all((tmp_path / f).exists() for f in figures)
    md = (tmp_path / "report.md").read_text()
    assert all(f"]({f})" in md for f in figures)  # the same figures on GitHub
    assert "LoRA [1]" in md and "1. Edward J. Hu et al. LoRA: Low-Rank Adaptation" in md  # numbered references
    assert not list(tmp_path.glob(".report.*"))  # the Typst scaffolding is removed


def test_prose_follows_the_numbers(tmp_path):
    def text(**kw):
        pipeline_outputs(tmp_path, **kw)
        doc = paper.build(tmp_path / "metrics" / "compare.json", tmp_path / "plots",
                          yaml.safe_load((tmp_path / "params.yaml").read_text()))
        return doc.abstract + " ".join(getattr(b, "text", "") for b in doc.blocks)

    behind = text(full_top1=0.95, lora_top1=0.90)  # LoRA behind, significant
    assert "significant (p < 0.001) in favour of full fine-tuning" in behind
    ahead = text(full_top1=0.90, lora_top1=0.95)   # LoRA ahead, significant
    assert "in favour of LoRA" in ahead and "in favour of full" not in ahead
    tie = text(full_top1=0.95, lora_top1=0.93, extra_disagree=45)  # 2 points apart, not significant
    assert "finds no significant difference" in tie and "not distinguishable" in tie
    assert "in favour of" not in tie
    # The programme's record is absent: one sentence says so, and the paper still builds.
    assert "record (`metrics/experiments.csv`) is absent" in tie


def test_missing_input_names_the_file(tmp_path, monkeypatch):
    pipeline_outputs(tmp_path)
    (tmp_path / "metrics" / "compare.json").unlink()
    with pytest.raises(FileNotFoundError, match="compare.json"):
        build(tmp_path, monkeypatch)
    pipeline_outputs(tmp_path)
    (tmp_path / "plots" / "compare_curves.png").unlink()
    doc = paper.build(tmp_path / "metrics" / "compare.json", tmp_path / "plots", {})
    assert not any("compare_curves" in p for b in doc.blocks if isinstance(b, document.Figure)
                   for p in b.paths)  # left out, not broken
    doc.blocks.append(document.Figure("plots/nope.png", "x"))
    with pytest.raises(FileNotFoundError, match="plots/nope.png"):
        document.write(doc, tmp_path / "r.md", tmp_path / "r.pdf", tmp_path)
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "r.pdf").exists()


def test_typst_escapes_and_markup():
    assert document.typst_inline("a_b #c $d @e [x] 5*3 http://x") == r"a\_b \#c \$d \@e \[x\] 5\*3 http:\/\/x"
    assert document.typst_inline("**bold** and *it* and `co_de` [@hu2022lora; @caron2021dino]") == \
        "*bold* and _it_ and `co_de` @hu2022lora @caron2021dino"
    assert document.typst_inline("[site](https://x.org)") == '#link("https://x.org")[site]'



def test_setup_attention_and_hardware_in_the_report(tmp_path, monkeypatch):
    pipeline_outputs(tmp_path)
    build(tmp_path, monkeypatch)
    md = (tmp_path / "report.md").read_text()
    assert "hardware: Intel Xeon Platinum 8481C (2 cores) (from metrics/train_*.json)" in md
    row = next(line for line in md.splitlines() if line.startswith("| full "))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["0.847", "0.660", "0.802", "0.710"]
    assert "Attention statistics over 8 images (test split)" in md
    assert "correlate with the pretrained model's at 0.62 after full fine-tuning and 0.81 after LoRA, so LoRA " \
           "stays closer" in md
    assert "![Figure 4](plots/attention_cls.jpg)" in md or "(plots/attention_cls.jpg)" in md


def test_skipped_attention_and_unrecorded_hardware(tmp_path, monkeypatch):
    pipeline_outputs(tmp_path)
    (tmp_path / "metrics" / "attention.json").write_text(json.dumps({"skipped": "resnet18 has no attention layers"}))
    for name in ("full", "lora"):
        path = tmp_path / "metrics" / f"train_{name}.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "hardware"}))
    run_compare(tmp_path)
    build(tmp_path, monkeypatch)
    md = (tmp_path / "report.md").read_text()
    assert "No attention maps were computed: resnet18 has no attention layers." in md
    assert "attention_cls.jpg" not in md  # the stage's placeholders are not shown as results
    # Said plainly, not guessed: the paper computes nothing, so it does not ask this machine.
    assert "hardware: full fine-tuning on unrecorded hardware, LoRA on unrecorded hardware." in md


def test_zero_shot_sentence_follows_the_paired_tests():
    def t(p, d):
        return {"p_value": p, "significant": p < 0.05, "difference": d}

    def ctx(test, val):
        row = {"top1": 0.9, "top1_lo": 0.88, "top1_hi": 0.92, "trainable_params": 1, "trainable_pct": 1.0,
               "trainable_share": 0.01}
        return {"r": {"zero_shot": {"top1": 0.896}, "full": row, "lora": row}, "split": "test", "prog": None,
                "paired": {}, "paired_all": {"test": {"full_vs_zero_shot": test[0], "lora_vs_zero_shot": test[1]},
                                             "val": {"full_vs_zero_shot": val[0], "lora_vs_zero_shot": val[1]}}}

    leak = paper.zero_shot_sentence(ctx([t(0.44, 0.01), t(0.57, 0.008)], [t(1e-5, 0.03), t(1e-4, 0.03)]))
    assert leak.startswith("Neither beats the zero-shot ImageNet head (89.6 %) significantly on this split "
                           "(McNemar p = 0.44 and p = 0.57), although both do on the validation split")
    both = paper.zero_shot_sentence(ctx([t(1e-4, 0.05), t(0.01, 0.03)], [t(1e-5, 0.03), t(1e-4, 0.03)]))
    assert both == "Both beat the zero-shot ImageNet head (89.6 %) significantly (p < 0.001 and p = 0.01)."
    one = paper.zero_shot_sentence(ctx([t(0.2, 0.01), t(0.01, 0.03)], [t(0.3, 0.0), t(0.3, 0.0)]))
    assert "only LoRA is significantly better" in one and "although" not in one


def test_lora_size_is_the_answers_lora():
    # The abstract and conclusion give the trainable share of the LoRA they report (the
    # programme's val-best rank), not the pipeline's default adapter; the file size is the pipeline's.
    # compare.build computes the share (test_compare checks it against the plain model's size).
    ctx = {"r": {"full": {"total_params": 1000, "checkpoint_mb": 20.0}, "lora": {"checkpoint_mb": 1.25}},
           "params": {"lora": {"rank": 8}}}
    s = paper.lora_size_sentence({"trainable_params": 215, "trainable_share": 0.215}, ctx)
    assert s == ("That LoRA trains 215 parameters, 21.5 % of the model's 1,000; the pipeline's rank-8 "
                 "adapter file is 1.25 MB against 20.0 MB for a full model.")


def test_seeds_sentence_waits_for_both_and_tests_the_seed_means():
    # Nothing until both val-best configurations have reruns; then Welch's t-test between the
    # seed means (compare.welch, in compare.json's programme): a gap of a few stds is significant,
    # one inside the spread is not.
    seeds = lambda n, mean, std: {"seeds": {"n": n, "test_top1": {"mean": mean, "std": std}}}  # noqa: E731

    def sentence(lora, full):
        p = compare.welch(lora["seeds"], full["seeds"]) if "seeds" in lora and "seeds" in full else None
        return paper.seeds_sentence(lora, full, {"prog": json.loads(json.dumps(
            compare._clean({"lora_vs_full_seeds_p": p})))})  # as compare.json has it: NaN is null

    assert compare.welch(seeds(3, 0.90, 0.004)["seeds"], seeds(1, 0.89, None)["seeds"]) is None
    assert sentence(seeds(3, 0.90, 0.004), seeds(1, 0.89, None)) == ""
    assert sentence({"test_top1": 0.9}, seeds(3, 0.89, 0.004)) == ""
    s = sentence(seeds(3, 0.902, 0.006), seeds(3, 0.898, 0.004))
    assert s.startswith("Over 3 and 3 seeds the two score 90.2 ± 0.6 % and 89.8 ± 0.4 % on clean test "
                        "(Welch's t-test between the seed means: p = 0.")
    p = lambda s: float(s.split("p = ")[1].rstrip("). "))  # noqa: E731
    assert p(s) > 0.3
    assert p(sentence(seeds(3, 0.91, 0.002), seeds(3, 0.89, 0.003))) < 0.01
    assert "(Welch's t-test between the seed means: p undefined)" in sentence(seeds(2, 0.9, 0.0), seeds(2, 0.9, 0.0))


def test_weight_drift_sentence(tmp_path, monkeypatch):
    pipeline_outputs(tmp_path)
    (tmp_path / "metrics" / "drift.json").write_text(json.dumps(
        {"full": {"overall": 0.03, "max": 0.09, "per_group": {}, "head": 0.5},
         "lora": {"overall": 0.01, "max": 0.02, "per_group": {}, "head": 0.4}}))
    run_compare(tmp_path)
    doc = build(tmp_path, monkeypatch)
    text = " ".join(getattr(b, "text", "") for b in doc.blocks)
    assert "Full fine-tuning changed the backbone's weight matrices by 3.00 % on average" in text
    assert "LoRA by 1.00 % (at most 2.0 %): 3.0x less for LoRA." in text


def test_readme_results_block_is_the_committed_answer():
    """README.md's results block is what the paper stage writes from the committed compare.json:
    a stale README (numbers copied by hand, or an old run) fails here."""
    from conftest import ROOT
    text = (ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else ""
    if paper.README_START not in text or paper.README_END not in text:
        pytest.skip(f"README.md has no results block ({paper.README_START} ... {paper.README_END})")
    block = text.split(paper.README_START, 1)[1].split(paper.README_END, 1)[0]
    assert block == "\n" + paper.readme_block(ROOT / "metrics" / "compare.json"), \
        "README.md's results block is stale: run `dvc repro paper` (or `make paper`)"


def test_readme_block_marks_incomplete_grids_and_lists_every_paired_test(tmp_path):
    """On the committed answer with its grids declared incomplete, then complete."""
    from conftest import ROOT
    res = json.loads((ROOT / "metrics" / "compare.json").read_text())
    prog = res.get("programme") or {}
    if not {"llrd", "dora"} <= set(prog.get("best", {})):
        pytest.skip("the committed record has no layer-decay and DoRA runs yet")
    sr, path = prog["second_round"], tmp_path / "compare.json"
    for llrd, dora in (((3, 4), (6, 6)), ((4, 4), (6, 6))):
        sr["recorded"] = {"llrd": dict(zip(("ok", "of"), llrd)), "dora": dict(zip(("ok", "of"), dora))}
        path.write_text(json.dumps(res))
        block = paper.readme_block(path)
        assert ("layer decay (provisional: 3 of 4 runs) | `" in block) == (llrd == (3, 4))
        assert "DoRA (provisional" not in block
        assert block.endswith("LoRA and full fine-tuning (provisional).\n" if llrd == (3, 4) else
                              "LoRA and full fine-tuning.\n")
        assert block.count("\n- ") == 1 + len(sr["paired"]) + bool(prog["cnn"].get("lora_vs_full"))
        assert "- CNN LoRA against CNN full fine-tuning: " in block


def test_write_readme_rewrites_only_the_block(tmp_path):
    pipeline_outputs(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# woof\nbefore\n{paper.README_START}\nold numbers\n{paper.README_END}\nafter\n")
    assert paper.write_readme(readme, tmp_path / "metrics" / "compare.json")
    text = readme.read_text()
    assert text.startswith("# woof\nbefore\n") and text.endswith(f"{paper.README_END}\nafter\n")
    assert "old numbers" not in text and "No programme record yet" in text  # this compare.json has none
    readme.write_text("no markers\n")
    assert not paper.write_readme(readme, tmp_path / "metrics" / "compare.json")
    assert readme.read_text() == "no markers\n"


def test_beyond_top1_section_and_model_cards(tmp_path, monkeypatch):
    """Robustness, calibration and the WiSE-FT path get their section, the discussion answers
    whether LoRA keeps more robustness, and each model's card states its numbers."""
    import numpy as np
    from test_beyond import write_beyond
    from woof import cards
    params = pipeline_outputs(tmp_path)
    rng = np.random.default_rng(0)
    n = 200
    clean = {k: rng.random(n) < 0.9 for k in ("zero_shot", "full", "lora")}
    corrupted = {"zero_shot": rng.random(2 * n) < 0.6, "full": rng.random(2 * n) < 0.4, "lora": rng.random(2 * n) < 0.7}
    _, per = write_beyond(tmp_path, clean, corrupted)
    write_json(tmp_path / "metrics" / "compare.json",
               compare.build(tmp_path / "metrics", tmp_path / "plots" / "predictions", params, robustness_path=per))
    build(tmp_path, monkeypatch)
    md = (tmp_path / "report.md").read_text()
    res = json.loads((tmp_path / "metrics/compare.json").read_text())["beyond"]
    assert "## 7 Beyond clean top-1" in md and "Here, yes: its drop is significantly smaller" in md
    assert pvalue(res["paired"]["lora_vs_full"]["p_value"]) in md
    assert "validation picks a = 0.5" in md  # write_beyond's val path peaks at a = 0.5
    cards.write_cards("metrics/compare.json", params, "models")
    card = (tmp_path / "models/woof-lora.md").read_text()
    r = json.loads((tmp_path / "metrics/compare.json").read_text())["lora"]
    assert pct_ci(r["top1"], r["top1_lo"], r["top1_hi"]) in card and "T = 1.50" in card
    assert "# woof-full" in (tmp_path / "models/woof-full.md").read_text()


def test_no_beyond_section_before_its_stages_ran(tmp_path, monkeypatch):
    pipeline_outputs(tmp_path)
    build(tmp_path, monkeypatch)
    assert "Beyond clean top-1" not in (tmp_path / "report.md").read_text()
