"""Every stage declares the project code it imports (directly or through other woof modules), so
that DVC reruns a stage whenever code it runs changes."""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Imports inside a function the stage never calls, kept lazy on purpose so that a change to them
# does not retrain: (stage, file) -> why.
LAZY = {("train_full", "woof/lora.py"): "woof.step.Method.prepare imports it for LoRA methods only",
        ("cost", "woof/stats.py"): "woof.evaluate.classification_metrics imports it for ci=True (the evaluate stage)",
        ("train_full", "woof/stats.py"): "woof.evaluate.classification_metrics imports it for ci=True (the evaluate stage)",
        ("train_lora", "woof/stats.py"): "woof.evaluate.classification_metrics imports it for ci=True (the evaluate stage)"}


def project_imports(path, seen=None):
    """The project's .py files a module imports, transitively (lazy imports inside functions too)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(Path(path).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            file = ROOT / (name.replace(".", "/") + ".py")
            if name.split(".")[0] in ("woof", "stages") and file.exists() and file not in seen \
                    and file.name != "__init__.py":
                seen.add(file)
                project_imports(file, seen)
    return seen


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_the_code_it_imports(name):
    stage = STAGES[name]
    module = stage["cmd"].split(" -m ")[1].split()[0]
    entry = ROOT / (module.replace(".", "/") + ".py")
    deps = {str(d).split("#")[0].strip() for d in stage["deps"]}
    needed = {p.relative_to(ROOT).as_posix() for p in project_imports(entry) | {entry}}
    needed -= {file for stage_, file in LAZY if stage_ == name}
    assert needed <= deps, f"stage {name} imports {sorted(needed - deps)} without declaring them in dvc.yaml"
