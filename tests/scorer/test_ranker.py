"""``Ranker.execute`` on a real exported version (ONNX Runtime sessions, no HTTP): noise, the
serving-graph call, id mapping, and the answer it encodes; checked against the version's own two
graphs and the numpy outer stage and top-N (``shared.fusion``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from scorer.model import LoadedModel, load_version
from scorer.parsing import RankInput
from scorer.ranker import Ranker, RankResult
from shared.fusion import exploration_noise, fused_scores, top_n

K, D = 3, 5  # the shared exported_model fixture: click, like, skip; state_dim 5


@pytest.fixture(scope="module")
def loaded(exported_model: Path) -> LoadedModel:
    return load_version(exported_model / "v0001")


def rank_input(n: int, top: int, seed: int = 0) -> RankInput:
    rng = np.random.default_rng(seed)
    return RankInput(
        request_id=f"r-{seed}",
        session_id="s-1",
        user_id="u-1",
        state=rng.normal(size=(1, D)).astype(np.float32),
        item_ids=[f"item-{j}" for j in range(n)],
        predictions=rng.random((K, n), dtype=np.float32),
        top_n=top,
    )


def reference(model: LoadedModel, req: RankInput, noise: np.ndarray) -> tuple:
    """(action, scores of the top, their indices) from the two graphs and numpy."""
    m = model.manifest
    q, mu = model.infer(req.state, req.predictions)
    action = np.clip(mu + noise, m.action_low, m.action_high)
    scores = fused_scores(q, action)
    order = top_n(scores, req.top_n)
    return action, scores[order], order


@pytest.mark.parametrize(("n", "top"), [(1, 1), (7, 3), (64, 64), (10, 50), (500, 20)])
def test_execute_without_exploration_ranks_as_the_reference(
    loaded: LoadedModel, n: int, top: int
) -> None:
    req = rank_input(n, top, seed=n)
    result = Ranker(0.0, np.random.default_rng(0)).execute(loaded, req)
    action, scores, order = reference(loaded, req, np.zeros(K, np.float32))
    assert result.model_version == loaded.version == "v0001"
    assert result.tasks == loaded.task_names == ("click", "like", "skip")
    assert result.returned_ids == [req.item_ids[i] for i in order]
    np.testing.assert_allclose(result.scores, scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.action, action, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result.noise, np.zeros(K, np.float32))
    assert result.exploration_scale == 0.0 and not result.explored


def test_execute_draws_the_noise_from_its_generator(loaded: LoadedModel) -> None:
    scale = 0.3
    req = rank_input(40, 5, seed=1)
    result = Ranker(scale, np.random.default_rng(42)).execute(loaded, req)
    m = loaded.manifest
    noise = exploration_noise(K, scale, m.action_low, m.action_high, np.random.default_rng(42))
    action, scores, order = reference(loaded, req, noise)
    assert result.explored and result.exploration_scale == scale
    np.testing.assert_allclose(result.action, action, rtol=0, atol=1e-6)
    _, mu = loaded.infer(req.state, req.predictions)
    # the noise actually applied: what is left of the drawn noise after clipping
    np.testing.assert_allclose(result.noise, action - mu, rtol=0, atol=1e-6)
    assert m.action_low <= result.action.min() and result.action.max() <= m.action_high
    assert result.returned_ids == [req.item_ids[i] for i in order]
    np.testing.assert_allclose(result.scores, scores, rtol=0, atol=1e-5)


def test_successive_requests_draw_fresh_noise(loaded: LoadedModel) -> None:
    ranker = Ranker(0.2, np.random.default_rng(7))
    req = rank_input(20, 3)
    first, second = ranker.execute(loaded, req), ranker.execute(loaded, req)
    assert not np.array_equal(first.noise, second.noise)
    again = Ranker(0.2, np.random.default_rng(7)).execute(loaded, req)
    np.testing.assert_array_equal(first.action, again.action)  # seeded: reproducible


def test_response_is_the_spec_answer(loaded: LoadedModel) -> None:
    req = rank_input(12, 4, seed=3)
    result = Ranker(0.1, np.random.default_rng(0)).execute(loaded, req)
    body = orjson.loads(result.response(req.request_id))
    assert list(body) == ["request_id", "model_version", "items", "action", "explored", "arm"]
    assert body["request_id"] == "r-3" and body["model_version"] == "v0001"
    assert [i["item_id"] for i in body["items"]] == result.returned_ids
    assert [i["score"] for i in body["items"]] == result.scores.tolist()
    assert body["action"] == result.action.tolist() and body["explored"] is True


def test_result_shapes(loaded: LoadedModel) -> None:
    result = Ranker(0.0, np.random.default_rng(0)).execute(loaded, rank_input(9, 4))
    assert isinstance(result, RankResult)
    assert result.action.shape == result.noise.shape == (K,)
    assert result.action.dtype == np.float32 and result.scores.dtype == np.float32
    assert result.scores.shape == (4,) and len(result.returned_ids) == 4
    assert (np.diff(result.scores) <= 0).all()
