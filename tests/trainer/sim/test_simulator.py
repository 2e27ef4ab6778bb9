"""Tests of the KuaiRand-like user simulator (trainer/sim/)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shared.fusion import top_n_indices
from tests.trainer.real_data import REAL_DIR, needs_real
from trainer.sim import (
    TASKS,
    EvalResult,
    Observation,
    SimConfig,
    StepResult,
    UserSimulator,
    evaluate,
    sample_durations,
)

K = len(TASKS)
#: Paper Table 6 positive rates (fraction of shown items).
TARGET_RATES = {
    "click": 0.3793,
    "long_view": 0.2635,
    "like": 0.0151,
    "follow": 0.0012,
    "comment": 0.0025,
    "share": 0.0009,
}


#: The synthetic KuaiRand fixture (same formats as the real files, 36 users, 50 videos).
FIXTURE_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "kuairand"


@pytest.fixture(scope="module", autouse=True)
def _synthetic_by_default() -> Iterator[None]:
    """SimConfig() honours $XMTF_KUAIRAND_DIR: unset it so the defaults mean synthetic here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("XMTF_KUAIRAND_DIR", raising=False)
        yield


@pytest.fixture(scope="module")
def sim() -> UserSimulator:
    return UserSimulator(SimConfig())


def reasonable(state: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Predicted click + long view."""
    return preds[:, 0] + preds[:, 1]


def satisfying(state: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Predicted long view plus the interaction signals."""
    return preds[:, 1] + 5.0 * preds[:, 2] + 10.0 * preds[:, 3:].sum(axis=1)


def random_ranker(seed: int):
    rng = np.random.default_rng(seed)
    return lambda state, preds: rng.random((preds.shape[0], preds.shape[2]))


def greedy_watch_time(sim: UserSimulator):
    """Oracle maximising immediate expected watch time: P(click) x true duration."""

    def score(state: np.ndarray, preds: np.ndarray) -> np.ndarray:
        obs = sim._obs
        assert obs is not None
        ids = obs.item_ids[obs.active]
        return preds[:, 0] * sim.item_durations[ids]

    return score


def random_shown(rng: np.random.Generator, n_users: int, config: SimConfig) -> np.ndarray:
    keys = rng.random((n_users, config.n_candidates))
    return np.argsort(keys, axis=1)[:, : config.top_n]


# ------------------------------------------------------------------------------------ shapes
def test_observation_and_step_shapes(sim: UserSimulator) -> None:
    cfg = sim.config
    obs = sim.reset(16, seed=0)
    assert isinstance(obs, Observation)
    assert sim.tasks == TASKS
    assert obs.state.shape == (16, sim.state_dim) and obs.state.dtype == np.float32
    assert sim.state_dim == len(sim.state_feature_names)
    assert 16 <= sim.state_dim <= 32
    assert obs.predictions.shape == (16, K, cfg.n_candidates)
    assert obs.predictions.dtype == np.float32
    assert obs.item_ids.shape == (16, cfg.n_candidates) and obs.item_ids.dtype == np.int64
    assert obs.active.shape == (16,) and obs.active.dtype == bool and obs.active.all()
    res = sim.step(random_shown(np.random.default_rng(0), 16, cfg))
    assert isinstance(res, StepResult)
    assert res.reward.shape == (16,) and res.reward.dtype == np.float32
    assert res.watch_time.shape == (16, cfg.top_n) and res.watch_time.dtype == np.float32
    assert res.signals.shape == (16, cfg.top_n, K) and res.signals.dtype == np.int8
    assert res.done.shape == (16,) and res.done.dtype == bool
    assert res.finished_returns.dtype == np.float32
    assert res.finished_lengths.dtype == np.int32
    assert len(res.finished_returns) == len(res.finished_lengths) == int(res.done.sum())
    np.testing.assert_allclose(res.reward, res.watch_time.sum(axis=1), rtol=1e-5)


def test_predictions_in_unit_interval_and_state_finite(sim: UserSimulator) -> None:
    obs = sim.reset(64, seed=1)
    rng = np.random.default_rng(1)
    for _ in range(20):
        assert np.all(obs.predictions > 0) and np.all(obs.predictions < 1)
        assert np.all(np.isfinite(obs.state))
        obs = sim.step_scores(rng.random((64, sim.config.n_candidates))).observation


def test_candidates_distinct_per_request(sim: UserSimulator) -> None:
    obs = sim.reset(512, seed=2)
    ids = np.sort(obs.item_ids, axis=1)
    assert not np.any(ids[:, 1:] == ids[:, :-1])
    assert ids.min() >= 0 and ids.max() < sim.config.n_items


def test_no_torch_import() -> None:
    code = "import sys, trainer.sim; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ------------------------------------------------------------------------------- determinism
def _trajectory(seed: int, steps: int = 15) -> list[np.ndarray]:
    sim = UserSimulator(SimConfig())
    obs = sim.reset(32, seed=seed)
    out = [obs.state, obs.predictions]
    for _ in range(steps):
        res = sim.step_scores(obs.predictions[:, 1])
        obs = res.observation
        out += [res.reward, res.signals, res.done, obs.state, obs.predictions, obs.item_ids]
    return out


def test_same_seed_same_trajectory() -> None:
    for a, b in zip(_trajectory(7), _trajectory(7), strict=True):
        np.testing.assert_array_equal(a, b)


def test_different_seed_different_trajectory() -> None:
    a, b = _trajectory(7), _trajectory(8)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_evaluate_deterministic(sim: UserSimulator) -> None:
    r1 = evaluate(sim, reasonable, 200, seed=11)
    r2 = evaluate(sim, reasonable, 200, seed=11)
    np.testing.assert_array_equal(r1.returns, r2.returns)
    np.testing.assert_array_equal(r1.lengths, r2.lengths)


# ---------------------------------------------------------------------------- session logic
def test_auto_reset_keeps_all_users_active(sim: UserSimulator) -> None:
    cfg = sim.config
    obs = sim.reset(256, seed=3, auto_reset=True)
    n_done = 0
    for _ in range(cfg.max_steps + 5):
        res = sim.step_scores(reasonable(obs.state, obs.predictions))
        obs = res.observation
        assert obs.active.all()
        n_done += int(res.done.sum())
        if len(res.finished_lengths):
            assert res.finished_lengths.min() >= 1
            assert res.finished_lengths.max() <= cfg.max_steps
            assert np.all(res.finished_returns >= 0)
    assert n_done > 256  # every slot ended at least one session within max_steps + 5 steps


def test_eval_mode_users_become_inactive(sim: UserSimulator) -> None:
    cfg = sim.config
    obs = sim.reset(128, seed=4, auto_reset=False)
    ever_inactive = np.zeros(128, bool)
    for _ in range(cfg.max_steps):
        shown = random_shown(np.random.default_rng(0), 128, cfg)
        shown[~obs.active] = 0  # rows of inactive users are ignored, even invalid ones
        res = sim.step(shown)
        assert np.all(res.reward[~obs.active] == 0)
        assert np.all(res.signals[~obs.active] == 0)
        assert not np.any(res.done & ~obs.active)
        ever_inactive |= ~res.observation.active
        assert np.array_equal(res.observation.active, obs.active & ~res.done)
        obs = res.observation
    assert ever_inactive.all() and not obs.active.any()


def test_evaluate_ends_every_session(sim: UserSimulator) -> None:
    result = evaluate(sim, random_ranker(0), 300, seed=5)
    assert isinstance(result, EvalResult)
    assert result.returns.shape == result.lengths.shape == (300,)
    assert result.lengths.min() >= 1 and result.lengths.max() <= sim.config.max_steps
    assert np.all(result.returns >= 0)
    summary = result.summary()
    assert set(summary) == {"return_mean", "return_std", "length_mean", "length_std", "n_sessions"}
    assert summary["n_sessions"] == 300


def test_step_rejects_duplicate_indices(sim: UserSimulator) -> None:
    sim.reset(4, seed=0)
    shown = np.zeros((4, sim.config.top_n), np.int64)
    with pytest.raises(ValueError, match="distinct"):
        sim.step(shown)
    with pytest.raises(ValueError, match="shape"):
        sim.step(np.zeros((4, sim.config.top_n + 1), np.int64))


# ------------------------------------------------------------------------- feedback realism
def _collect(sim: UserSimulator, score_fn, n_users: int, steps: int, seed: int):
    obs = sim.reset(n_users, seed=seed)
    signals, watch, durations = [], [], []
    for _ in range(steps):
        res = sim.step_scores(score_fn(obs.state, obs.predictions))
        signals.append(res.signals.reshape(-1, K))
        watch.append(res.watch_time.ravel())
        assert res.durations is not None
        durations.append(res.durations.ravel())
        obs = res.observation
    return np.concatenate(signals), np.concatenate(watch), np.concatenate(durations)


def assert_rates_near_kuairand(signals: np.ndarray) -> None:
    """Feedback rates (signals: rows of K 0/1 signals) near KuaiRand's: click and long view
    within 0.08, the rare ones within a factor of 1.5."""
    rates = dict(zip(TASKS, signals.mean(axis=0), strict=True))
    for task in ("click", "long_view"):
        assert abs(rates[task] - TARGET_RATES[task]) < 0.08, (task, rates[task])
    for task in ("like", "follow", "comment", "share"):
        ratio = rates[task] / TARGET_RATES[task]
        assert 1 / 1.5 < ratio < 1.5, (task, rates[task])


def test_rates_under_reasonable_ranker(sim: UserSimulator) -> None:
    signals, _, _ = _collect(sim, reasonable, 1024, 60, seed=6)
    assert_rates_near_kuairand(signals)


def test_feedback_consistency(sim: UserSimulator) -> None:
    signals, watch, durations = _collect(sim, random_ranker(1), 512, 40, seed=7)
    click, long_view = signals[:, 0] == 1, signals[:, 1] == 1
    assert not np.any(signals[~click, 1:])  # nothing happens without a click
    threshold = np.minimum(durations, sim.config.long_view_s)
    assert np.all(watch[~click] == 0)
    assert np.all(watch[click] > 0)
    assert np.all(watch[long_view] >= threshold[long_view] - 1e-4)
    short = click & ~long_view
    assert np.all(watch[short] < threshold[short])
    assert np.all(watch <= np.maximum(durations, 0) + 1e-3)
    # interactions are more likely with a long view
    like_lv = signals[long_view, 2].mean()
    like_short = signals[short, 2].mean()
    assert like_lv > like_short


def test_duration_quantiles_match_kuairand() -> None:
    d = sample_durations(np.random.default_rng(0), 200_000, SimConfig())
    q10, q50, q90 = np.percentile(d, [10, 50, 90])
    assert q10 == pytest.approx(14.6, rel=0.1)
    assert q50 == pytest.approx(81.2, rel=0.1)
    assert q90 == pytest.approx(237.9, rel=0.1)


# ------------------------------------------------------------------------ long-term effects
def assert_long_term_conflict(sim: UserSimulator, n: int, greedy_per_step_gain: float) -> None:
    """A satisfying ranker keeps users far longer than a random one, and beats the greedy
    watch-time ranker per session although greedy earns more per request."""
    rand = evaluate(sim, random_ranker(2), n, seed=21).summary()
    good = evaluate(sim, satisfying, n, seed=21).summary()
    greedy = evaluate(sim, greedy_watch_time(sim), n, seed=21).summary()
    # Standard errors of the means (n = 2000): lengths ~0.3 steps, returns ~45 s.
    assert good["length_mean"] > rand["length_mean"] + 3.0
    assert good["return_mean"] > 2.0 * rand["return_mean"]
    assert greedy["length_mean"] < good["length_mean"] - 4.0
    # The conflict: greedy earns more per request but less per session.
    greedy_per_step = greedy["return_mean"] / greedy["length_mean"]
    good_per_step = good["return_mean"] / good["length_mean"]
    assert greedy_per_step > greedy_per_step_gain * good_per_step
    assert good["return_mean"] > 1.2 * greedy["return_mean"]


def test_better_policy_yields_longer_sessions() -> None:
    assert_long_term_conflict(UserSimulator(SimConfig()), 2000, greedy_per_step_gain=1.15)


# ------------------------------------------------------------------------------ utilities
def test_top_n_indices_tie_breaking() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 5.0]])
    np.testing.assert_array_equal(top_n_indices(scores, 3), [[1, 2, 4], [4, 0, 1]])
    with_nan = np.array([[np.nan, 1.0, 0.5]])
    np.testing.assert_array_equal(top_n_indices(with_nan, 2), [[1, 2]])
    assert top_n_indices(scores, 2).dtype == np.int64


def test_step_scores_shows_top_n(sim: UserSimulator) -> None:
    obs = sim.reset(8, seed=9)
    scores = obs.predictions[:, 1]
    res = sim.step_scores(scores)
    expected = np.take_along_axis(obs.item_ids, top_n_indices(scores, sim.config.top_n), axis=1)
    np.testing.assert_array_equal(res.shown_ids, expected)


def test_config_from_file(tmp_path: Path) -> None:
    good = tmp_path / "world.json"
    good.write_text(json.dumps({"n_candidates": 30, "prediction_noise": 0.2}))
    cfg = SimConfig.from_file(good)
    assert cfg.n_candidates == 30 and cfg.prediction_noise == 0.2
    assert isinstance(cfg.n_candidates, int)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n_candidates": 30, "not_a_field": 1}))
    with pytest.raises(ValueError, match="not_a_field"):
        SimConfig.from_file(bad)


def test_config_replace_and_validation() -> None:
    cfg = SimConfig().replace(top_n=4)
    assert cfg.top_n == 4 and SimConfig().top_n == 6
    with pytest.raises(ValueError, match="bogus"):
        SimConfig().replace(bogus=1)
    with pytest.raises(ValueError):
        SimConfig(top_n=60, n_candidates=50)
    sim = UserSimulator(cfg.replace(n_candidates=20))
    obs = sim.reset(3, seed=0)
    assert obs.predictions.shape == (3, K, 20)
    assert sim.step_scores(obs.predictions[:, 0]).watch_time.shape == (3, 4)


# ------------------------------------------------------------------ populations and data_dir
def test_default_population_is_synthetic(sim: UserSimulator) -> None:
    assert sim.config.data_dir is None and sim.data_dir is None
    assert sim.population == "synthetic"
    assert sim.n_items == sim.config.n_items and sim.n_categories == sim.config.n_categories
    sim.reset(4, seed=0)
    assert np.all(sim.user_ids() == -1)
    np.testing.assert_array_equal(sim.item_video_ids, np.arange(sim.config.n_items))


def test_data_dir_config_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = SimConfig().replace(data_dir=str(FIXTURE_DIR))
    assert cfg.data_dir == str(FIXTURE_DIR)
    assert SimConfig(data_dir=FIXTURE_DIR).data_dir == str(FIXTURE_DIR)  # type: ignore[arg-type]
    assert cfg.replace(data_dir=None).data_dir is None
    with pytest.raises(ValueError, match="data_dir"):
        SimConfig().replace(data_dir=3)
    world = tmp_path / "world.json"
    world.write_text(json.dumps({"data_dir": str(FIXTURE_DIR), "n_candidates": 20}))
    assert SimConfig.from_file(world).data_dir == str(FIXTURE_DIR)
    # a folder without the two feature files: the synthetic population, with a warning
    with caplog.at_level(logging.WARNING, logger="trainer.sim.population"):
        fallback = UserSimulator(SimConfig(data_dir=str(tmp_path / "absent")))
    assert fallback.population == "synthetic"
    assert "absent" in caplog.text


def test_env_var_and_empty_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMTF_KUAIRAND_DIR", str(FIXTURE_DIR))
    assert UserSimulator(SimConfig(n_candidates=20)).population == "kuairand"
    assert UserSimulator(SimConfig(n_candidates=20, data_dir="")).population == "synthetic"


@pytest.fixture(scope="module")
def fixture_sim() -> UserSimulator:
    return UserSimulator(SimConfig(data_dir=str(FIXTURE_DIR), n_candidates=20))


def test_fixture_population_uses_the_tables(fixture_sim: UserSimulator) -> None:
    from trainer.sim.kuairand import load_user_features, load_video_features

    sim = fixture_sim
    users = load_user_features(FIXTURE_DIR / "user_features_pure.csv")
    videos = load_video_features(FIXTURE_DIR / "video_features_basic_pure.csv")
    assert sim.population == "kuairand" and sim.data_dir == FIXTURE_DIR
    assert sim.n_items == len(videos) == 50
    np.testing.assert_array_equal(sim.item_video_ids, videos.video_id)
    known = ~np.isnan(videos.duration_s)
    np.testing.assert_allclose(sim.item_durations[known], videos.duration_s[known], rtol=1e-6)
    assert np.all(np.isfinite(sim.item_durations)) and sim.item_durations.min() > 0
    # categories are the videos' first tags (videos without a tag form one category)
    assert sim.n_categories == len(np.unique(videos.primary_tag))
    for tag in np.unique(videos.primary_tag):
        assert len(np.unique(sim.item_categories[videos.primary_tag == tag])) == 1
    obs = sim.reset(64, seed=0)
    assert obs.state.shape == (64, 24) and sim.state_dim == 24
    assert np.isin(sim.user_ids(), users.user_id).all()
    # the profile part of the state is a fixed function of the real user
    ids = sim.user_ids()
    profile = obs.state[:, :10]
    for uid in np.unique(ids):
        rows = profile[ids == uid]
        np.testing.assert_array_equal(rows, np.broadcast_to(rows[0], rows.shape))
    res = sim.step_scores(obs.predictions[:, 0] + obs.predictions[:, 1])
    assert res.signals.shape == (64, sim.config.top_n, K)
    assert np.all(np.isfinite(res.observation.state))


def test_fixture_population_deterministic() -> None:
    def run() -> list[np.ndarray]:
        sim = UserSimulator(SimConfig(data_dir=str(FIXTURE_DIR), n_candidates=20))
        obs = sim.reset(16, seed=3)
        out = [obs.state, sim.user_ids()]
        for _ in range(5):
            res = sim.step_scores(obs.predictions[:, 1])
            obs = res.observation
            out += [res.reward, res.signals, obs.state, sim.user_ids()]
        return out

    for a, b in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def real_sim() -> UserSimulator:
    assert REAL_DIR is not None
    return UserSimulator(SimConfig(data_dir=str(REAL_DIR)))


@needs_real
def test_real_population_tables(real_sim: UserSimulator) -> None:
    sim = real_sim
    assert sim.population == "kuairand"
    assert sim.n_items == 7_583 and sim.state_dim == UserSimulator(SimConfig()).state_dim
    q10, q50, q90 = np.percentile(sim.item_durations, [10, 50, 90])
    assert q10 == pytest.approx(14.6, rel=0.05)
    assert q50 == pytest.approx(81.2, rel=0.05)
    assert q90 == pytest.approx(237.9, rel=0.05)
    obs = sim.reset(4000, seed=1)
    ids = sim.user_ids()
    assert ids.min() >= 0 and ids.max() < 27_285 and len(np.unique(ids)) > 3000
    # activity levels 30/40/30 as in the synthetic population; visible scores inform traits
    levels = obs.state[:, :3].mean(axis=0)
    np.testing.assert_allclose(levels, [0.3, 0.4, 0.3], atol=0.04)
    users = sim._users
    assert users is not None
    assert np.corrcoef(obs.state[:, 3], users.interact)[0, 1] > 0.6
    assert np.corrcoef(obs.state[:, 4], -users.threshold)[0, 1] > 0.6
    assert np.corrcoef(obs.state[:, 5], users.bait_sens)[0, 1] > 0.6


@needs_real
def test_real_population_rates_under_reasonable_ranker(real_sim: UserSimulator) -> None:
    signals, watch, durations = _collect(real_sim, reasonable, 1024, 60, seed=6)
    assert_rates_near_kuairand(signals)
    long_view = signals[:, 1] == 1
    threshold = np.minimum(durations, real_sim.config.long_view_s)
    assert np.all(watch[long_view] >= threshold[long_view] - 1e-4)


@needs_real
def test_real_population_keeps_the_long_term_conflict(real_sim: UserSimulator) -> None:
    assert_long_term_conflict(real_sim, 1500, greedy_per_step_gain=1.1)
