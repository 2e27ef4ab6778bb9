"""One ONNX graph for the whole ``/v1/rank`` computation of a model version.

Built when a version is loaded, from its verified ``mfc.onnx`` and ``actor.onnx`` (the artifact
contract is unchanged): the two graphs side by side, followed by the outer stage and the top-N
selection, so that a request costs one ONNX Runtime call instead of two calls plus numpy work::

    mu      = actor(state)                                  (K,)
    action  = clip(mu + noise, action_low, action_high)     (K,)   the applied action
    z_i     = sum_k q_ki (1 + action_k q_ki),  q = mfc(state, predictions)
    top     = TopK(z, k)                                    ties: the lower index first

``noise`` is the exploration noise drawn by the caller (zeros when not exploring); the graph
also returns the noise actually applied (after clipping), which the session log records.
ONNX ``TopK`` orders equal values by index, as :func:`shared.fusion.top_n` does; the scorer
checks the graph against the reference path (two graphs + numpy) before serving a version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from shared import onnx_io

if TYPE_CHECKING:
    import onnx

INPUTS = ("state", "predictions", "noise", "k")
OUTPUTS = ("action", "applied_noise", "top_scores", "top_indices")
MIN_OPSET = 13  # ReduceSum and Unsqueeze with axes as inputs, Clip with bounds as inputs


class ServingGraphError(ValueError):
    """The two graphs cannot be combined (unexpected names or opsets)."""


def build_serving_graph(
    mfc_onnx: bytes, actor_onnx: bytes, n_tasks: int, state_dim: int, low: float, high: float
) -> bytes:
    """The serialized serving graph (see the module docstring) for one model version."""
    import onnx  # only needed while a version loads
    from onnx import TensorProto, compose, helper, numpy_helper

    mfc, actor = onnx.load_from_string(mfc_onnx), onnx.load_from_string(actor_onnx)
    opsets = {_default_opset(m) for m in (mfc, actor)}
    if len(opsets) != 1 or (opset := opsets.pop()) < MIN_OPSET:
        raise ServingGraphError(
            f"graphs need one default-domain opset >= {MIN_OPSET}, got {opsets}"
        )
    _expect_io(mfc, onnx_io.MFC_INPUTS, onnx_io.MFC_OUTPUTS, "mfc")
    _expect_io(actor, onnx_io.ACTOR_INPUTS, onnx_io.ACTOR_OUTPUTS, "actor")
    mfc, actor = compose.add_prefix(mfc, "mfc/"), compose.add_prefix(actor, "actor/")
    q, mu = f"mfc/{onnx_io.MFC_OUTPUTS[0]}", f"actor/{onnx_io.ACTOR_OUTPUTS[0]}"

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, f"serving/{name}")

    constants = [
        const("low", np.array(low, np.float32)),
        const("high", np.array(high, np.float32)),
        const("one", np.array(1.0, np.float32)),
        const("axis0", np.array([0], np.int64)),
        const("axis1", np.array([1], np.int64)),
        const("flat", np.array([-1], np.int64)),
    ]
    node = helper.make_node
    nodes = [
        *(node("Identity", [name], [f"mfc/{name}"]) for name in onnx_io.MFC_INPUTS),
        *(node("Identity", [name], [f"actor/{name}"]) for name in onnx_io.ACTOR_INPUTS),
        *mfc.graph.node,
        *actor.graph.node,
        node("Reshape", [mu, "serving/flat"], ["serving/mu"]),
        node("Add", ["serving/mu", "noise"], ["serving/explored"]),
        node("Clip", ["serving/explored", "serving/low", "serving/high"], ["action"]),
        node("Sub", ["action", "serving/mu"], ["applied_noise"]),
        node("Unsqueeze", ["action", "serving/axis1"], ["serving/a"]),
        node("Mul", ["serving/a", q], ["serving/aq"]),
        node("Add", ["serving/aq", "serving/one"], ["serving/aq1"]),
        node("Mul", [q, "serving/aq1"], ["serving/terms"]),
        node("ReduceSum", ["serving/terms", "serving/axis0"], ["serving/z"], keepdims=0),
        node("TopK", ["serving/z", "k"], ["top_scores", "top_indices"], largest=1, sorted=1),
    ]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    graph = helper.make_graph(
        nodes,
        "xmtf_serving",
        [
            helper.make_tensor_value_info("state", f32, [1, state_dim]),
            helper.make_tensor_value_info("predictions", f32, [n_tasks, "n_candidates"]),
            helper.make_tensor_value_info("noise", f32, [n_tasks]),
            helper.make_tensor_value_info("k", i64, [1]),
        ],
        [
            helper.make_tensor_value_info("action", f32, [n_tasks]),
            helper.make_tensor_value_info("applied_noise", f32, [n_tasks]),
            helper.make_tensor_value_info("top_scores", f32, ["top_n"]),
            helper.make_tensor_value_info("top_indices", i64, ["top_n"]),
        ],
        [*mfc.graph.initializer, *actor.graph.initializer, *constants],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=max(mfc.ir_version, actor.ir_version),
        producer_name="xmtf-scorer",
    )
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _expect_io(
    model: onnx.ModelProto, inputs: tuple[str, ...], outputs: tuple[str, ...], what: str
) -> None:
    graph = model.graph
    got_in, got_out = tuple(i.name for i in graph.input), tuple(o.name for o in graph.output)
    if got_in != inputs or got_out != outputs:
        raise ServingGraphError(f"{what}: inputs {got_in} / outputs {got_out}")
