"""The layout's promises (README "Architecture"): small files, the environment free of torch and
of the study and stream packages, the scorer free of torch, and no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "scorer", "trainer")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _top_level_imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported at module level (not inside functions or TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def test_no_file_over_the_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_import_cycles() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _top_level_imports(path, known) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                # a package importing its own submodule is how packages work, not a cycle
                if not node.startswith(dep + "."):
                    cycle = [*stack[stack.index(dep) :], dep]
                    pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("trainer.sim", ("torch", "trainer.study", "trainer.stream", "trainer.tsh")),
        ("scorer.app", ("torch", "trainer")),
        ("shared.fusion", ("torch", "trainer", "scorer")),
    ],
)
def test_import_walls(module: str, forbidden: tuple[str, ...]) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {forbidden!r} or m in {forbidden!r}"
        f" or any(m.startswith(f + '.') for f in {forbidden!r})]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
