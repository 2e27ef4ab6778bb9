"""Unit tests of the scorer's per-request maths (``scorer.ranking``)."""

from __future__ import annotations

import numpy as np
import pytest

from scorer.ranking import explore, fused_scores, top_n


def test_fused_scores_matches_the_formula_elementwise() -> None:
    rng = np.random.default_rng(0)
    q = rng.random((3, 7)).astype(np.float32)
    a = np.array([0.2, -0.1, 0.7], np.float32)
    z = fused_scores(q, a)
    assert z.shape == (7,)
    for i in range(7):
        expected = sum(float(q[k, i]) * (1.0 + float(a[k]) * float(q[k, i])) for k in range(3))
        assert z[i] == pytest.approx(expected, rel=1e-6)


def test_fused_scores_zero_action_is_the_plain_sum() -> None:
    q = np.array([[0.1, 0.5], [0.3, 0.2]], np.float32)
    z = fused_scores(q, np.zeros(2, np.float32))
    np.testing.assert_allclose(z, q.sum(axis=0), rtol=1e-7)


def test_fused_scores_is_monotone_in_each_q_for_admissible_actions() -> None:
    # q(1 + a q) is increasing on (0, 1) when a > -1/2 (the manifest's bound).
    q = np.linspace(0.01, 0.99, 50, dtype=np.float32)[None, :]
    for a in (-0.49, -0.2, 0.0, 0.5, 3.0):
        z = fused_scores(q, np.array([a], np.float32))
        assert np.all(np.diff(z) > 0), a


def test_explore_zero_scale_returns_the_action_unchanged() -> None:
    mu = np.array([0.1, -0.2, 0.3], np.float32)
    rng = np.random.default_rng(0)
    state_before = rng.bit_generator.state
    action, noise = explore(mu, 0.0, -0.4, 1.0, rng)
    assert action is mu or np.array_equal(action, mu)
    np.testing.assert_array_equal(noise, np.zeros(3, np.float32))
    assert noise.dtype == mu.dtype
    # no randomness is consumed when exploration is off
    assert rng.bit_generator.state == state_before


def test_explore_clips_to_the_bounds_and_reports_the_applied_noise() -> None:
    mu = np.array([0.0, 0.9, -0.35, 0.5], np.float32)
    low, high = -0.4, 1.0
    rng = np.random.default_rng(1)
    saw_clip_low = saw_clip_high = False
    for _ in range(200):
        action, noise = explore(mu, 1.0, low, high, rng)  # huge noise: clipping is common
        assert action.dtype == np.float32
        assert action.shape == mu.shape
        assert np.all(action >= np.float32(low)) and np.all(action <= np.float32(high))
        np.testing.assert_allclose(mu + noise, action, atol=1e-6)
        saw_clip_low |= bool(np.any(action == np.float32(low)))
        saw_clip_high |= bool(np.any(action == np.float32(high)))
    assert saw_clip_low and saw_clip_high


def test_explore_noise_std_scales_with_the_range() -> None:
    mu = np.full(20000, 0.3, np.float32)
    _, noise = explore(mu, 0.01, -0.4, 1.0, np.random.default_rng(2))
    # std = 0.01 * 1.4; clipping is negligible this far from the bounds
    assert float(np.std(noise)) == pytest.approx(0.014, rel=0.05)
    assert abs(float(np.mean(noise))) < 0.001


def test_explore_is_reproducible_with_a_seeded_rng() -> None:
    mu = np.array([0.1, 0.2], np.float32)
    a1, _ = explore(mu, 0.2, -0.4, 1.0, np.random.default_rng(5))
    a2, _ = explore(mu, 0.2, -0.4, 1.0, np.random.default_rng(5))
    np.testing.assert_array_equal(a1, a2)


def test_top_n_returns_best_first() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3], np.float32)
    assert top_n(scores, 3).tolist() == [1, 3, 2]
    assert top_n(scores, 1).tolist() == [1]


def test_top_n_ties_keep_input_order() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.9, 0.1], np.float32)
    assert top_n(scores, 6).tolist() == [1, 4, 0, 2, 3, 5]
    assert top_n(scores, 3).tolist() == [1, 4, 0]
    assert top_n(scores, 4).tolist() == [1, 4, 0, 2]
    assert top_n(np.zeros(5, np.float32), 2).tolist() == [0, 1]


def test_top_n_larger_than_n_returns_everything() -> None:
    scores = np.array([0.2, 0.8, 0.4], np.float32)
    assert top_n(scores, 3).tolist() == [1, 2, 0]
    assert top_n(scores, 1000).tolist() == [1, 2, 0]
    assert top_n(np.array([1.0], np.float32), 5).tolist() == [0]


def test_top_n_handles_negative_scores() -> None:
    scores = np.array([-3.0, -1.0, -2.0, -1.0], np.float32)
    assert top_n(scores, 2).tolist() == [1, 3]


@pytest.mark.parametrize("seed", range(30))
def test_top_n_partition_path_equals_a_stable_sort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 400))
    # few distinct values -> many ties, including at the top-n boundary
    levels = int(rng.integers(1, 8))
    scores = rng.integers(0, levels, size).astype(np.float32) / levels
    reference = np.argsort(-scores, kind="stable")
    for n in {1, 2, size // 3 + 1, size // 2 + 1, size - 1, size, size + 5}:
        got = top_n(scores, n)
        assert got.tolist() == reference[:n].tolist(), (seed, size, n)


def test_top_n_partition_path_on_continuous_scores() -> None:
    rng = np.random.default_rng(123)
    scores = rng.standard_normal(5000).astype(np.float32)
    reference = np.argsort(-scores, kind="stable")
    for n in (1, 10, 100, 1000, 4999):
        assert top_n(scores, n).tolist() == reference[:n].tolist()
