"""The online scorer must not import torch or the ``onnx`` package (ONNX Runtime only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import scorer.app, scorer.cli
app = scorer.app.create_app(scorer.settings.ScorerSettings(model_dir="/nonexistent"))
mods = sorted(sys.modules)
print(json.dumps({
    "torch": [m for m in mods if m == "torch" or m.startswith("torch.")],
    "onnx": [m for m in mods if m == "onnx" or m.startswith("onnx.")],
    "trainer": [m for m in mods if m == "trainer" or m.startswith("trainer.")],
    "onnxruntime": "onnxruntime" in sys.modules,
}))
"""


def test_scorer_imports_neither_torch_nor_onnx() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["torch"] == []
    assert found["onnx"] == []
    assert found["trainer"] == []
    assert found["onnxruntime"] is True  # the probe did load the serving stack
