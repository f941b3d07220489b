"""Imports run one way. Every stage declares the project code it imports (directly or through
other woof modules), so that DVC reruns a stage whenever code it runs changes; the woof modules
import each other without a circle (at module level or inside a function); and the stages that
only read results (compare, paper) depend on no training code."""
import ast
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# Imports inside a function the stage never calls, kept lazy on purpose so that a change to them
# does not rerun the stage: (stage, file) -> why. None of them hides an import circle
# (test_woof_imports_have_no_circle checks function-level imports too).
LAZY = {("train_full", "woof/lora.py"): "woof.step.Method.prepare (and the LoRA check of a recipe) imports it for "
                                        "LoRA methods only: an edit to the adapter library must not retrain the "
                                        "full model"}
# Code that trains or touches tensors: what the stages reading results must never import.
TORCH_SIDE = {"woof/train.py", "woof/step.py", "woof/data.py", "woof/evaluate.py", "woof/models.py", "woof/lora.py"}


def imported_modules(path):
    """The project modules (dotted names) a file imports, at module level and inside functions:
    `from woof import a, b` counts woof.a and woof.b when they are modules, not woof itself."""
    found = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            file = ROOT / (name.replace(".", "/") + ".py")
            if name.split(".")[0] in ("woof", "stages") and file.exists() and file.name != "__init__.py":
                found.add(name)
    return found


def module_file(name):
    return ROOT / (name.replace(".", "/") + ".py")


def project_imports(path, seen=None):
    """The project's .py files a module imports, transitively (lazy imports inside functions too)."""
    seen = set() if seen is None else seen
    for name in imported_modules(path):
        file = module_file(name)
        if file not in seen:
            seen.add(file)
            project_imports(file, seen)
    return seen


def closure(entry):
    return {p.relative_to(ROOT).as_posix() for p in project_imports(entry)}


def stage_entry(name):
    module = STAGES[name]["cmd"].split(" -m ")[1].split()[0]
    return module_file(module)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_the_code_it_imports(name):
    stage = STAGES[name]
    entry = stage_entry(name)
    deps = {str(d).split("#")[0].strip() for d in stage["deps"]}
    needed = closure(entry) | {entry.relative_to(ROOT).as_posix()}
    needed -= {file for stage_, file in LAZY if stage_ == name}
    assert needed <= deps, f"stage {name} imports {sorted(needed - deps)} without declaring them in dvc.yaml"


def test_lazy_exceptions_are_still_needed():
    """Each LAZY entry names a file the stage really reaches (else the entry is stale)."""
    for stage, file in LAZY:
        assert file in closure(stage_entry(stage)), f"LAZY lists {file} for {stage}, which no longer imports it"


def import_graph():
    """{module: set of woof modules it imports} over woof/*.py (woof/__init__.py imports nothing)."""
    graph = {}
    for path in sorted((ROOT / "woof").glob("*.py")):
        if path.name == "__init__.py":
            continue
        graph[f"woof.{path.stem}"] = {m for m in imported_modules(path) if m.startswith("woof.")}
    return graph


def find_cycle(graph):
    """One import circle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_woof_imports_have_no_circle():
    """config/io -> data/models/lora -> train/evaluate -> programme -> compare -> paper: no module
    imports one that imports it back, not even inside a function (a lazy import hiding a circle)."""
    graph = import_graph()
    assert "woof.record" in graph and "woof.io" in graph["woof.record"]  # the graph sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import circle in woof/: " + " -> ".join(cycle)


@pytest.mark.parametrize("stage", ["compare", "paper"])
def test_result_stages_depend_on_no_training_code(stage):
    """compare and paper read CSV and JSON: an edit to the training loop must not stale them."""
    reached = closure(stage_entry(stage))
    assert not reached & TORCH_SIDE, f"stage {stage} imports {sorted(reached & TORCH_SIDE)}"
    deps = {str(d).split("#")[0].strip() for d in STAGES[stage]["deps"]}
    assert not deps & TORCH_SIDE, f"stage {stage} declares {sorted(deps & TORCH_SIDE)} in dvc.yaml"
