"""The collect -> store -> learn loop (trainer/loop.py): session-held exploration, the budget
counter, and the loop's hook."""

from __future__ import annotations

import numpy as np

from trainer.config import TSHConfig
from trainer.loop import TrainConfig, TSHLearner, run_online
from trainer.replay import ReplayBuffer
from trainer.sim import SimConfig, UserSimulator
from trainer.tsh import TSHAgent

SMALL = SimConfig(n_candidates=20, max_steps=8, n_items=500)
TINY = TSHConfig(hidden=16, batch_size=32, inner_batch_size=8, neutral_fit_steps=5)


def _learner(sim: UserSimulator, cfg: TSHConfig) -> TSHLearner:
    agent = TSHAgent(sim.task_specs(), sim.state_dim, cfg, seed=0)
    return TSHLearner(agent, ReplayBuffer(512, sim.state_dim, 6, 8, seed=0), cfg.batch_size)


def test_session_noise_is_held_within_a_session_and_redrawn_after_it() -> None:
    sim = UserSimulator(SMALL)
    learner = _learner(sim, TSHConfig(**{**TINY.__dict__, "exploration_noise": "session"}))
    obs = sim.reset(16, seed=1)
    noises = []
    for _ in range(12):
        learner.act(obs.state, obs.predictions, explore=True)
        mu, _ = learner.agent.act(obs.state, explore=False)
        noises.append(learner._action - mu)  # clipped noise; the raw draw is held
        res = sim.step_scores(learner.agent.scores(obs.state, obs.predictions, learner._action))
        held = None if learner._session_noise is None else learner._session_noise.copy()
        learner.record(obs, obs.predictions, res)
        if held is not None:
            same = ~res.done
            np.testing.assert_array_equal(learner._session_noise[same], held[same])
            if res.done.any():
                assert not np.allclose(learner._session_noise[res.done], held[res.done])
        obs = res.observation
    assert np.std(noises) > 0


def test_step_noise_is_fresh_every_request() -> None:
    sim = UserSimulator(SMALL)
    learner = _learner(sim, TINY)
    obs = sim.reset(8, seed=1)
    learner.act(obs.state, obs.predictions, explore=True)
    first = learner._action.copy()
    learner.act(obs.state, obs.predictions, explore=True)
    assert not np.array_equal(first, learner._action)
    assert learner._session_noise is None


def test_the_simulator_counts_every_request_it_serves() -> None:
    sim = UserSimulator(SMALL)
    learner = _learner(sim, TINY)
    seen = []
    tc = TrainConfig(n_users=16, total_steps=5, learning_starts=10_000, select_every=0)
    run_online(sim, learner, tc, seed=0, on_step=lambda step, res, m: seen.append(step))
    assert seen == [1, 2, 3, 4, 5]
    assert sim.requests_served == 5 * 16  # auto-reset keeps every slot active
