"""The recipes' modules import each other in layers: no circle, nothing hidden.

``config`` at the bottom, then ``interaction`` (environments, collectors) and
``logs``, the builders and the run plumbing, the two recipes at the top. The study's
tools (``recipes/analysis/``, imported as ``analysis.<tool>``) stand beside them:
``analysis.plot`` reads the logs and the run plumbing draws with it. An import of
one recipe module by another inside a function would hide a circle: there is none,
so every module imports alone.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ANALYSIS = "analysis"  # the package of the study's tools, recipes/analysis/
MODULES = sorted(
    [path.stem for path in RECIPES.glob("*.py")]
    + [
        f"{ANALYSIS}.{path.stem}"
        for path in (RECIPES / ANALYSIS).glob("*.py")
        if path.stem != "__init__"
    ]
)


def recipe_imports(module: str) -> dict[str, bool]:
    """``{imported recipe module: whether the import sits inside a function}``."""
    tree = ast.parse((RECIPES / f"{module.replace('.', '/')}.py").read_text())
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
            if node.module == ANALYSIS:  # from analysis import stats
                names = [f"{ANALYSIS}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name in MODULES:
                found[name] = found.get(name, False) or node.col_offset > 0
    return found


def test_no_recipe_module_is_imported_inside_a_function():
    hidden = {
        (module, name)
        for module in MODULES
        for name, local in recipe_imports(module).items()
        if local
    }
    assert not hidden, f"function-local imports of recipe modules: {sorted(hidden)}"


def test_recipe_imports_have_no_circle():
    graph = {module: set(recipe_imports(module)) for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import circle: " + " -> ".join((*path, module))
        if module not in done:
            for name in sorted(graph[module]):
                visit(name, (*path, module))
            done.add(module)

    for module in MODULES:
        visit(module, ())
    # the bottom layers import nothing above them
    assert graph["config"] == set()
    assert graph["interaction"] == {"config"}
    assert graph["logs"] == {"config"}
    # the tools read logs and the recipes' builders; of them the recipes use plot
    assert graph["analysis.stats"] == set()
    assert {name for name in graph["runs"] if name.startswith(ANALYSIS)} == {
        "analysis.plot"
    }


def test_every_module_is_seen():
    assert {"config", "runs", "analysis.plot", "analysis.swings"} <= set(MODULES)
    assert recipe_imports("analysis.swings") == {
        "analysis.stats": False,
        "analysis.plot": False,
    }


@pytest.mark.parametrize("module", ["interaction", "analysis.plot", "launchers"])
def test_a_lower_module_imports_alone(module):
    """Modules that others build on import in a fresh interpreter by themselves."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=RECIPES,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("tool", ["plot", "reevaluate"])
def test_a_tool_runs_as_a_file_from_anywhere(tool, tmp_path):
    """``python recipes/analysis/<tool>.py``, as the docs write it: the tool finds
    the recipes' modules and its siblings whatever the working folder."""
    done = subprocess.run(
        [sys.executable, str(RECIPES / ANALYSIS / f"{tool}.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:"), done.stdout
