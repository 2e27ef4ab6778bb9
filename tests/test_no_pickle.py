"""No code path of the project deserialises with pickle or evaluates strings: model artifacts are
ONNX + JSON + safetensors, events are msgpack. An AST scan of ``scorer/``, ``trainer/`` and
``shared/`` for imports of pickle-like modules, calls to ``eval``/``exec``, and ``torch.load``
without ``weights_only=True``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scorer", "trainer", "shared")
FORBIDDEN_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "joblib",
    "marshal",
    "shelve",
    "cloudpickle",
}
FORBIDDEN_CALLS = {"eval", "exec"}


def sources() -> list[Path]:
    files = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert files, "no sources found"
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def violations(tree: ast.AST, where: str) -> list[str]:
    found: list[str] = []
    torch_names = {"torch"}
    load_aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
                if alias.name == "torch" and alias.asname:
                    torch_names.add(alias.asname)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
            if node.module == "torch":
                load_aliases |= {a.asname or a.name for a in node.names if a.name == "load"}
            if node.module == "builtins":
                found += [
                    f"{where}:{node.lineno}: from builtins import {a.name}"
                    for a in node.names
                    if a.name in FORBIDDEN_CALLS
                ]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in FORBIDDEN_CALLS or name in {f"builtins.{c}" for c in FORBIDDEN_CALLS}:
            found.append(f"{where}:{node.lineno}: call to {name}()")
        is_torch_load = name in load_aliases or any(name == f"{t}.load" for t in torch_names)
        if is_torch_load:
            safe = any(
                kw.arg == "weights_only"
                and isinstance(kw.value, ast.Constant)
                and kw.value.value is True
                for kw in node.keywords
            )
            if not safe:
                found.append(f"{where}:{node.lineno}: {name}() without weights_only=True")
    return found


def test_no_pickle_eval_or_unsafe_torch_load() -> None:
    found: list[str] = []
    for path in sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found += violations(tree, str(path.relative_to(ROOT)))
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "code",
    [
        "import pickle",
        "import pickle as p",
        "from joblib import load",
        "import dill.settings",
        "from marshal import loads",
        "import shelve",
        "eval('1')",
        "exec('x = 1')",
        "import builtins\nbuiltins.eval('1')",
        "import torch\ntorch.load('x')",
        "import torch as T\nT.load('x', weights_only=False)",
        "from torch import load\nload('x')",
        "from torch import load as tl\ntl('x', map_location='cpu')",
    ],
)
def test_scanner_catches(code: str) -> None:
    assert violations(ast.parse(code), "snippet")


@pytest.mark.parametrize(
    "code",
    [
        "import torch\ntorch.load('x', weights_only=True)",
        "import json\njson.loads('1')",
        "model.eval()",
        "import safetensors.torch\nsafetensors.torch.load_file('x')",
    ],
)
def test_scanner_allows(code: str) -> None:
    assert not violations(ast.parse(code), "snippet")
