"""The replay buffer: ring semantics, sampling, candidate down-sampling and padding."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.replay import ReplayBuffer

D, K = 3, 2


def _add(buf: ReplayBuffer, ids: list[int], n: int = 4) -> None:
    """Add transitions whose every field encodes their id."""
    b = len(ids)
    idv = np.asarray(ids, np.float32)
    buf.add(
        state=np.repeat(idv[:, None], D, axis=1),
        action=np.repeat(idv[:, None], K, axis=1),
        reward=idv,
        next_state=np.repeat(idv[:, None] + 0.5, D, axis=1),
        done=(idv % 2).astype(np.float32),
        predictions=np.broadcast_to(idv[:, None, None], (b, K, n)).copy(),
    )


def test_ring_buffer_wraps_around_and_caps_size() -> None:
    buf = ReplayBuffer(capacity=5, state_dim=D, n_tasks=K, max_candidates=4)
    assert len(buf) == 0
    _add(buf, [0, 1, 2])
    assert len(buf) == 3 and buf.pos == 3
    _add(buf, [3, 4, 5, 6])
    assert len(buf) == 5 and buf.pos == 2
    np.testing.assert_array_equal(buf.reward, [5, 6, 2, 3, 4])  # oldest two overwritten
    np.testing.assert_array_equal(buf.state[:, 0], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buf.next_state[:, 0], [5.5, 6.5, 2.5, 3.5, 4.5])
    np.testing.assert_array_equal(buf.predictions[:, 1, 3], [5, 6, 2, 3, 4])
    for i in range(7, 30):
        _add(buf, [i])
        assert len(buf) == 5
    assert sorted(buf.reward.tolist()) == [25, 26, 27, 28, 29]


def test_adding_more_than_capacity_at_once_keeps_the_newest() -> None:
    buf = ReplayBuffer(capacity=4, state_dim=D, n_tasks=K, max_candidates=4)
    _add(buf, list(range(10)))
    assert len(buf) == 4
    assert sorted(buf.reward.tolist()) == [6, 7, 8, 9]


def test_sample_shapes_and_consistency() -> None:
    buf = ReplayBuffer(capacity=100, state_dim=D, n_tasks=K, max_candidates=6, seed=1)
    _add(buf, list(range(50)), n=6)
    batch = buf.sample(32)
    assert batch.state.shape == (32, D)
    assert batch.action.shape == (32, K)
    assert batch.reward.shape == (32,)
    assert batch.next_state.shape == (32, D)
    assert batch.done.shape == (32,)
    assert batch.predictions.shape == (32, K, 6)
    assert batch.mask.shape == (32, 6) and batch.mask.dtype == bool
    # every row of the batch is one whole transition
    ids = batch.reward
    np.testing.assert_array_equal(batch.state[:, 0], ids)
    np.testing.assert_array_equal(batch.action[:, 1], ids)
    np.testing.assert_array_equal(batch.next_state[:, 2], ids + 0.5)
    np.testing.assert_array_equal(batch.done, ids % 2)
    np.testing.assert_array_equal(batch.predictions[:, 0, 5], ids)
    assert set(ids.tolist()) <= set(range(50))
    # asking for more than is held returns what is held
    assert buf.sample(1000).state.shape == (50, D)


def test_sample_only_from_filled_rows() -> None:
    buf = ReplayBuffer(capacity=100, state_dim=D, n_tasks=K, max_candidates=4)
    _add(buf, [7, 8, 9])
    batch = buf.sample(3)
    assert set(batch.reward.tolist()) <= {7, 8, 9}
    for _ in range(20):
        assert set(buf.sample(3).reward.tolist()) <= {7, 8, 9}


def test_sample_from_empty_buffer_raises() -> None:
    buf = ReplayBuffer(capacity=4, state_dim=D, n_tasks=K, max_candidates=4)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(1)


def test_candidates_downsampled_when_more_than_max() -> None:
    m, n, b = 8, 20, 6
    buf = ReplayBuffer(capacity=10, state_dim=D, n_tasks=K, max_candidates=m, seed=3)
    rng = np.random.default_rng(0)
    preds = rng.random((b, K, n)).astype(np.float32)
    preds[:, 1] = preds[:, 0] + 10.0  # task 1 of candidate j is task 0 of j plus 10
    buf.add(np.zeros((b, D)), np.zeros((b, K)), np.zeros(b), np.zeros((b, D)), np.zeros(b), preds)
    assert buf.mask[:b].all()
    for row in range(b):
        kept = buf.predictions[row]
        assert kept.shape == (K, m)
        # a subset of the row, without repeats
        assert set(kept[0].tolist()) <= set(preds[row, 0].tolist())
        assert len(set(kept[0].tolist())) == m
        # the same candidates are kept for every task
        np.testing.assert_allclose(kept[1], kept[0] + 10.0, rtol=1e-6)


def test_downsampling_is_roughly_uniform() -> None:
    m, n = 4, 10
    buf = ReplayBuffer(capacity=2000, state_dim=1, n_tasks=1, max_candidates=m, seed=0)
    b = 2000
    preds = np.broadcast_to(np.arange(n, dtype=np.float32), (b, 1, n)).copy()
    buf.add(np.zeros((b, 1)), np.zeros((b, 1)), np.zeros(b), np.zeros((b, 1)), np.zeros(b), preds)
    counts = np.bincount(buf.predictions[:, 0].astype(int).ravel(), minlength=n)
    freq = counts / b  # expected m / n = 0.4 for every candidate
    assert np.all(np.abs(freq - m / n) < 0.05)


def test_candidates_padded_with_mask_when_fewer_than_max() -> None:
    buf = ReplayBuffer(capacity=10, state_dim=D, n_tasks=K, max_candidates=8)
    preds = np.arange(2 * K * 3, dtype=np.float32).reshape(2, K, 3) + 1.0
    buf.add(np.zeros((2, D)), np.zeros((2, K)), np.zeros(2), np.zeros((2, D)), np.zeros(2), preds)
    np.testing.assert_array_equal(buf.mask[:2], [[True] * 3 + [False] * 5] * 2)
    np.testing.assert_array_equal(buf.predictions[:2, :, :3], preds)
    assert np.all(buf.predictions[:2, :, 3:] == 0)


def test_candidates_kept_as_is_when_exactly_max() -> None:
    buf = ReplayBuffer(capacity=10, state_dim=D, n_tasks=K, max_candidates=5)
    preds = np.random.default_rng(0).random((3, K, 5)).astype(np.float32)
    buf.add(np.zeros((3, D)), np.zeros((3, K)), np.zeros(3), np.zeros((3, D)), np.zeros(3), preds)
    assert buf.mask[:3].all()
    np.testing.assert_array_equal(buf.predictions[:3], preds)


def test_rows_of_different_widths_share_a_buffer() -> None:
    buf = ReplayBuffer(capacity=10, state_dim=D, n_tasks=K, max_candidates=5)
    _add(buf, [1], n=2)
    _add(buf, [2], n=9)
    np.testing.assert_array_equal(buf.mask[0], [True, True, False, False, False])
    assert buf.mask[1].all()
