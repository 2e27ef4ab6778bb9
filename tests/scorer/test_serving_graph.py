"""The serving graph (MFCs + actor + outer stage + top-N in one ONNX call) against the reference:
the version's own two graphs, then the numpy outer stage and top-N (``shared.fusion``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scorer import model as model_module
from scorer.model import LoadedModel, ModelRefused, load_version
from scorer.serving_graph import ServingGraphError, build_serving_graph
from shared.fusion import fused_scores, top_n

K, D = 3, 5  # the shared exported_model fixture: click, like, skip; state_dim 5


@pytest.fixture(scope="module")
def loaded(exported_model: Path) -> LoadedModel:
    return load_version(exported_model / "v0001")


def reference(model: LoadedModel, state: np.ndarray, preds: np.ndarray, noise: np.ndarray, n: int):
    m = model.manifest
    q, mu = model.infer(state, preds)
    action = np.clip(mu + noise, m.action_low, m.action_high)
    scores = fused_scores(q, action)
    order = top_n(scores, n)
    return action, action - mu, scores[order], order


@pytest.mark.parametrize("n_candidates", [1, 2, 7, 64, 500])
@pytest.mark.parametrize("noise_scale", [0.0, 0.1, 5.0])  # 5.0: most actions clipped
def test_serving_graph_ranks_as_the_reference(
    loaded: LoadedModel, n_candidates: int, noise_scale: float
) -> None:
    rng = np.random.default_rng(n_candidates)
    for _ in range(5):
        state = rng.normal(size=(1, D)).astype(np.float32)
        preds = rng.random((K, n_candidates), dtype=np.float32)
        noise = rng.normal(0.0, noise_scale, K).astype(np.float32)
        top = int(rng.integers(1, n_candidates + 3))  # sometimes more than there are
        action, applied, scores, order = reference(loaded, state, preds, noise, top)
        got = loaded.rank(state, preds, noise, top)
        np.testing.assert_array_equal(got.indices, order)
        np.testing.assert_allclose(got.scores, scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got.action, action, rtol=0, atol=1e-7)
        np.testing.assert_allclose(got.noise, applied, rtol=0, atol=1e-7)
        m = loaded.manifest
        assert np.all(got.action >= np.float32(m.action_low))
        assert np.all(got.action <= np.float32(m.action_high))


def test_clipping_reaches_both_bounds(loaded: LoadedModel) -> None:
    m = loaded.manifest
    state, preds = np.zeros((1, D), np.float32), np.full((K, 4), 0.5, np.float32)
    got = loaded.rank(state, preds, np.array([100.0, -100.0, 0.0], np.float32), 2)
    assert got.action[0] == np.float32(m.action_high) and got.action[1] == np.float32(m.action_low)
    _, mu = loaded.infer(state, preds)
    np.testing.assert_allclose(got.noise[:2], got.action[:2] - mu[:2], atol=1e-7)


def test_equal_scores_come_in_index_order(loaded: LoadedModel) -> None:
    preds = np.tile(np.array([[0.2, 0.9, 0.2, 0.9, 0.2]], np.float32), (K, 1))
    got = loaded.rank(np.zeros((1, D), np.float32), preds, np.zeros(K, np.float32), 5)
    # skip has direction -1, so which value wins depends on the model; ties keep index order
    groups = [[1, 3], [0, 2, 4]]
    assert got.indices.tolist() in (groups[0] + groups[1], groups[1] + groups[0])


def test_graphs_with_other_names_cannot_be_combined(exported_model: Path) -> None:
    version = exported_model / "v0001"
    actor = (version / "actor.onnx").read_bytes()
    with pytest.raises(ServingGraphError, match="mfc"):
        build_serving_graph(actor, actor, K, D, -0.45, 1.5)


def test_a_serving_graph_that_disagrees_is_refused(
    exported_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def wrong_bounds(mfc: bytes, actor: bytes, k: int, d: int, low: float, high: float) -> bytes:
        return build_serving_graph(mfc, actor, k, d, low, low + 0.01)

    monkeypatch.setattr(model_module, "build_serving_graph", wrong_bounds)
    with pytest.raises(ModelRefused, match="serving graph disagrees"):
        load_version(exported_model / "v0001")
