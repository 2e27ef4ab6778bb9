"""Names and shapes of the exported ONNX graphs (the trainer writes them, the scorer reads them).

``mfc.onnx`` (inner stage, all K monotonic fusion cells in one graph)
    inputs:  ``state``       float32 [1, D]   raw user state (normalisation is inside the graph)
             ``predictions`` float32 [K, N]   raw predictions, task-major, N dynamic
    output:  ``q_inner``     float32 [K, N]   inner-stage outputs, each in (0, 1)

``actor.onnx`` (outer-stage policy)
    input:   ``state``       float32 [1, D]
    output:  ``action``      float32 [1, K]   one scalar a_k per task, inside the action bounds
"""

from __future__ import annotations

OPSET = 17

MFC_FILE = "mfc.onnx"
ACTOR_FILE = "actor.onnx"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
CURRENT_FILE = "CURRENT"

MFC_INPUTS: tuple[str, str] = ("state", "predictions")
MFC_OUTPUTS: tuple[str] = ("q_inner",)
ACTOR_INPUTS: tuple[str] = ("state",)
ACTOR_OUTPUTS: tuple[str] = ("action",)
CANDIDATE_AXIS = "n_candidates"
