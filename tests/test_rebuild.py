"""The committed results rebuild from git: in a fresh clone (no DVC cache, no models, no data),
`dvc repro --single-item paper` writes report.md and report.pdf again from the committed results
and figures, with no training, and gets the committed report back."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DVC = Path(sys.executable).with_name("dvc")


def git(*args, cwd=ROOT):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not DVC.exists(), reason="dvc is not installed beside this Python")
def test_paper_rebuilds_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    git("clone", "-q", "--no-hardlinks", str(ROOT), str(clone))
    committed = {name: (clone / name).read_bytes() for name in ("report.md", "report.pdf")}
    for name in ("report.md", "report.pdf"):
        (clone / name).unlink()
    assert not (clone / "models" / "full").exists() and not (clone / ".dvc" / "cache").exists()  # nothing trained
    env = dict(os.environ, PATH=f"{DVC.parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    run = subprocess.run([str(DVC), "repro", "--single-item", "paper"], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("Running stage") == 1 and "Running stage 'paper'" in run.stdout  # nothing retrains
    for name, data in committed.items():  # the committed report is this one, byte for byte (Typst: no date)
        assert (clone / name).read_bytes() == data, f"{name} rebuilt differently: the committed one is stale"
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(clone / "report.pdf"), "-"], capture_output=True, text=True).stdout
        assert "Limitations" in text and "Conclusion" in text
    # The README's results block is the paper stage's, so rebuilding leaves it as committed.
    assert git("status", "--porcelain", "README.md", cwd=clone) == ""
