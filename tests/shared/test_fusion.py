"""Unit tests of the scorer's per-request maths (``shared.fusion``)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.fusion import exploration_noise, fused_scores, top_n


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


def test_no_noise_at_zero_scale_and_no_randomness_consumed() -> None:
    rng = np.random.default_rng(0)
    state_before = rng.bit_generator.state
    noise = exploration_noise(3, 0.0, -0.4, 1.0, rng)
    np.testing.assert_array_equal(noise, np.zeros(3, np.float32))
    assert noise.dtype == np.float32
    assert rng.bit_generator.state == state_before


def test_noise_std_scales_with_the_range() -> None:
    noise = exploration_noise(20000, 0.01, -0.4, 1.0, np.random.default_rng(2))
    assert noise.dtype == np.float32 and noise.shape == (20000,)
    assert float(np.std(noise)) == pytest.approx(0.014, rel=0.05)  # 0.01 * (1.0 - -0.4)
    assert abs(float(np.mean(noise))) < 0.001


def test_noise_is_reproducible_with_a_seeded_rng() -> None:
    a = exploration_noise(4, 0.2, -0.4, 1.0, np.random.default_rng(5))
    b = exploration_noise(4, 0.2, -0.4, 1.0, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


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
