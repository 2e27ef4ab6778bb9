"""The TSH learner (paper Algorithm 1): neutral start, acting, one update, targets, persistence."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.tasks import make_tasks
from trainer.config import TSHConfig
from trainer.replay import Batch, ReplayBuffer
from trainer.tsh import TSHAgent, soft_update

TASKS = make_tasks(["click", "like", "skip"], [1, 1, -1])
D = 5
SMALL = TSHConfig(hidden=32, batch_size=64, inner_batch_size=16)


@pytest.fixture(scope="module")
def neutral_agent() -> TSHAgent:
    """An agent after the default neutral fit (shared; tests must not change it)."""
    return TSHAgent(TASKS, D, SMALL, seed=3)


def _fresh(config: TSHConfig = SMALL, seed: int = 0) -> TSHAgent:
    return TSHAgent(TASKS, D, config, seed=seed, fit_neutral=False)


def _batch(b: int = 64, n: int = 12, seed: int = 0, reward: float | None = None) -> Batch:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(capacity=b, state_dim=D, n_tasks=len(TASKS), max_candidates=n, seed=seed)
    buf.add(
        rng.normal(size=(b, D)).astype(np.float32),
        rng.uniform(-0.45, 1.5, size=(b, len(TASKS))).astype(np.float32),
        np.full(b, reward, np.float32) if reward is not None else rng.uniform(0, 100, b),
        rng.normal(size=(b, D)).astype(np.float32),
        (rng.random(b) < 0.2).astype(np.float32),
        rng.random((b, len(TASKS), rng.integers(2, n + 1))).astype(np.float32),
    )
    return buf.sample(b)


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, axis=-1), axis=-1).astype(float)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    n = len(a)
    return float((da * db).sum() / (n * (n - 1)))


# ----------------------------------------------------------------------------- neutral start


def test_neutral_init_ranks_like_plain_sum(neutral_agent: TSHAgent) -> None:
    rng = np.random.default_rng(0)
    b, n = 16, 60
    states = rng.normal(size=(b, D)).astype(np.float32)
    preds = rng.random((b, len(TASKS), n)).astype(np.float32)
    z = neutral_agent.scores(states, preds, np.zeros((b, len(TASKS)), np.float32))
    plain = preds[:, 0] + preds[:, 1] - preds[:, 2]  # skip (direction -1) counts negatively
    spearman = [_spearman(z[i], plain[i]) for i in range(b)]
    kendall = [_kendall(z[i], plain[i]) for i in range(b)]
    assert min(spearman) > 0.95, spearman
    assert np.mean(kendall) > 0.85, kendall
    # and unlike a sum that ignores the direction
    assert np.mean([_spearman(z[i], preds[i].sum(0)) for i in range(b)]) < 0.6


def test_neutral_init_cells_are_monotone_in_their_direction(neutral_agent: TSHAgent) -> None:
    grid = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    states = np.random.default_rng(1).normal(size=(8, D)).astype(np.float32)
    q = neutral_agent.inner(states, np.broadcast_to(grid, (8, 3, 101)).copy())
    direction = np.array([1, 1, -1])[None, :, None]
    assert (direction * np.diff(q, axis=-1) >= -1e-4).mean() > 0.99
    assert np.all(direction[..., 0] * (q[..., -1] - q[..., 0]) > 0.5)


def test_neutral_init_actor_near_zero(neutral_agent: TSHAgent) -> None:
    states = np.random.default_rng(2).normal(size=(32, D)).astype(np.float32)
    action, noise = neutral_agent.act(states, explore=False)
    assert np.all(np.abs(action) < 0.05)
    assert np.all(noise == 0)


# ----------------------------------------------------------------------------- acting


def test_act_respects_bounds_with_and_without_exploration() -> None:
    cfg = TSHConfig(hidden=16, exploration_scale=1.0, action_low=-0.3, action_high=0.9)
    agent = _fresh(cfg)
    with torch.no_grad():
        for p in agent.actor.net.parameters():
            p.normal_(0.0, 2.0)  # a policy that reaches the bounds
    states = np.random.default_rng(0).normal(size=(500, D)).astype(np.float32) * 50
    for explore in (False, True):
        action, noise = agent.act(states, explore=explore)
        assert action.shape == (500, 3)
        assert np.all(action >= -0.3) and np.all(action <= 0.9)
    mu, _ = agent.act(states, explore=False)
    action, noise = agent.act(states, explore=True)
    np.testing.assert_allclose(action, mu + noise, atol=1e-6)
    assert np.abs(noise).max() > 0


def test_act_without_exploration_is_deterministic() -> None:
    agent = _fresh(TSHConfig(hidden=16, exploration_scale=0.2))
    states = np.random.default_rng(0).normal(size=(10, D)).astype(np.float32)
    a1, n1 = agent.act(states, explore=False)
    a2, n2 = agent.act(states, explore=False)
    np.testing.assert_array_equal(a1, a2)
    assert np.all(n1 == 0) and np.all(n2 == 0)
    e1, _ = agent.act(states, explore=True)
    e2, _ = agent.act(states, explore=True)
    assert not np.array_equal(e1, e2)  # exploration noise is fresh each call


def test_exploration_scale_zero_means_no_noise() -> None:
    agent = _fresh(TSHConfig(hidden=16, exploration_scale=0.0))
    states = np.random.default_rng(0).normal(size=(10, D)).astype(np.float32)
    a, noise = agent.act(states, explore=True)
    np.testing.assert_array_equal(a, agent.act(states, explore=False)[0])
    assert np.all(noise == 0)


def test_scores_use_outer_stage(neutral_agent: TSHAgent) -> None:
    rng = np.random.default_rng(3)
    states = rng.normal(size=(2, D)).astype(np.float32)
    preds = rng.random((2, 3, 7)).astype(np.float32)
    action = np.array([[0.5, -0.2, 1.0], [0.0, 0.0, 0.0]], np.float32)
    q = neutral_agent.inner(states, preds)
    want = (q * (1.0 + action[:, :, None] * q)).sum(axis=1)
    np.testing.assert_allclose(neutral_agent.scores(states, preds, action), want, rtol=1e-5)


# ----------------------------------------------------------------------------- updates


def test_update_returns_finite_metrics() -> None:
    agent = _fresh()
    metrics = agent.update(_batch())
    for key in ("critic_loss", "actor_loss", "inner_loss", "transfer_loss", "mono_loss", "q_mean"):
        assert key in metrics, key
        assert isinstance(metrics[key], float)
        assert math.isfinite(metrics[key]), key
    assert agent.updates == 1


def test_update_changes_every_online_network() -> None:
    agent = _fresh()
    before = {
        name: copy.deepcopy(m.state_dict())
        for name, m in (("actor", agent.actor), ("critic", agent.critic), ("mfc", agent.mfc))
    }
    agent.update(_batch())
    for name, m in (("actor", agent.actor), ("critic", agent.critic), ("mfc", agent.mfc)):
        changed = any(not torch.equal(v, before[name][k]) for k, v in m.state_dict().items())
        assert changed, f"{name} did not move"


def test_targets_move_by_soft_update() -> None:
    cfg = TSHConfig(hidden=32, batch_size=64, inner_batch_size=16, tau=0.1)
    agent = _fresh(cfg)
    old_actor_t = [p.detach().clone() for p in agent.actor_target.parameters()]
    old_critic_t = [p.detach().clone() for p in agent.critic_target.parameters()]
    agent.update(_batch())
    for old, new, online in zip(
        old_actor_t, agent.actor_target.parameters(), agent.actor.parameters(), strict=True
    ):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online.detach())
    for old, new, online in zip(
        old_critic_t, agent.critic_target.parameters(), agent.critic.parameters(), strict=True
    ):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online.detach())
    # the target is strictly between the old target and the online net (it moved, not copied)
    moved = [
        not torch.equal(o, n) and not torch.equal(n, s.detach())
        for o, n, s in zip(
            old_critic_t, agent.critic_target.parameters(), agent.critic.parameters(), strict=True
        )
    ]
    assert any(moved)


def test_soft_update_extremes() -> None:
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = copy.deepcopy(a.state_dict())
    soft_update(a, b, 0.0)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, before[k])
    soft_update(a, b, 1.0)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])


def test_inner_update_is_not_driven_by_critic() -> None:
    """Eq. 18 touches only the MFCs; the actor and critic steps touch only their nets."""
    agent = _fresh()
    mfc_before = copy.deepcopy(agent.mfc.state_dict())
    agent.update_critic(_batch())
    agent.update_actor(_batch())
    for k, v in agent.mfc.state_dict().items():
        torch.testing.assert_close(v, mfc_before[k])
    actor_before = copy.deepcopy(agent.actor.state_dict())
    critic_before = copy.deepcopy(agent.critic.state_dict())
    agent.update_inner(_batch())
    for k, v in agent.actor.state_dict().items():
        torch.testing.assert_close(v, actor_before[k])
    for k, v in agent.critic.state_dict().items():
        torch.testing.assert_close(v, critic_before[k])


def test_critic_learns_constant_reward_bandit() -> None:
    cfg = TSHConfig(hidden=32, batch_size=64, inner_batch_size=8, critic_lr=3e-3, reward_scale=0.01)
    agent = _fresh(cfg)
    rng = np.random.default_rng(0)
    b = 64
    batch = Batch(
        state=rng.normal(size=(b, D)).astype(np.float32),
        action=rng.uniform(-0.45, 1.5, (b, 3)).astype(np.float32),
        reward=np.full(b, 70.0, np.float32),
        next_state=rng.normal(size=(b, D)).astype(np.float32),
        done=np.ones(b, np.float32),
        predictions=rng.random((b, 3, 6)).astype(np.float32),
        mask=np.ones((b, 6), bool),
    )
    for _ in range(300):
        metrics = agent.update_critic(batch)
    assert metrics["q_mean"] == pytest.approx(0.7, abs=0.03)
    assert metrics["critic_loss"] < 1e-3
    with torch.no_grad():
        q = agent.critic(agent.norm(torch.as_tensor(batch.state)), torch.as_tensor(batch.action))
    np.testing.assert_allclose(q.numpy(), 0.7, atol=0.05)


def test_critic_bootstraps_through_targets_when_not_done() -> None:
    """With done = 0, reward 0 and gamma 0.5, Q converges to gamma * Q_target(s', mu'(s'))."""
    cfg = TSHConfig(hidden=16, critic_lr=3e-3, gamma=0.5, tau=0.0)
    agent = _fresh(cfg)
    with torch.no_grad():
        agent.critic_target.net[-1].bias.fill_(2.0)
        agent.critic_target.net[-1].weight.zero_()  # Q_target == 2 everywhere
    b = 32
    rng = np.random.default_rng(1)
    batch = Batch(
        state=rng.normal(size=(b, D)).astype(np.float32),
        action=rng.uniform(-0.45, 1.5, (b, 3)).astype(np.float32),
        reward=np.zeros(b, np.float32),
        next_state=rng.normal(size=(b, D)).astype(np.float32),
        done=np.zeros(b, np.float32),
        predictions=rng.random((b, 3, 4)).astype(np.float32),
        mask=np.ones((b, 4), bool),
    )
    for _ in range(300):
        metrics = agent.update_critic(batch)
    assert metrics["q_mean"] == pytest.approx(1.0, abs=0.05)


# ----------------------------------------------------------------------------- persistence


def test_save_load_round_trip(tmp_path: Path) -> None:
    agent = _fresh(TSHConfig(hidden=16, batch_size=32, inner_batch_size=8, lam=0.3), seed=7)
    rng = np.random.default_rng(0)
    agent.observe(rng.normal(2.0, 3.0, size=(50, D)).astype(np.float32))
    agent.update(_batch(32))
    agent.update(_batch(32, seed=1))
    path = tmp_path / "agent.safetensors"
    agent.save(path)
    loaded = TSHAgent.load(path)
    assert loaded.tasks == agent.tasks
    assert loaded.state_dim == D
    assert loaded.config == agent.config
    assert loaded.updates == 2
    states = rng.normal(size=(4, D)).astype(np.float32)
    preds = rng.random((4, 3, 9)).astype(np.float32)
    np.testing.assert_array_equal(loaded.inner(states, preds), agent.inner(states, preds))
    np.testing.assert_array_equal(
        loaded.act(states, explore=False)[0], agent.act(states, explore=False)[0]
    )
    for name, module in agent._modules().items():
        other = loaded._modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, other[key]), f"{name}.{key}"


def test_action_l2_pulls_the_actor_back_from_a_bound() -> None:
    """With a critic that is flat in the action, only the penalty moves the actor: towards 0
    with ``action_l2`` > 0, nowhere without it."""
    batch = _batch()
    moved = {}
    for rho in (0.0, 1.0):
        agent = _fresh(TSHConfig(hidden=32, batch_size=64, actor_lr=1e-2, action_l2=rho))
        for p in agent.critic.parameters():
            torch.nn.init.zeros_(p)
        with torch.no_grad():  # start pinned near the lower bound, as a saturated actor is
            agent.actor.net[-1].bias.fill_(-2.0)
        s = np.asarray(batch.state)
        before = np.abs(agent.act(s, explore=False)[0]).mean()
        for _ in range(20):
            agent.update_actor(batch)
        moved[rho] = before - np.abs(agent.act(s, explore=False)[0]).mean()
    assert moved[0.0] == pytest.approx(0.0, abs=1e-6)
    assert moved[1.0] > 0.05


def test_action_l2_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="action_l2"):
        TSHConfig(action_l2=-1.0)


# ----------------------------------------------------------------------------- transfer anchor

ANCHORED = TSHConfig(hidden=32, batch_size=64, inner_batch_size=16, transfer_anchor="version")


def _constant_actor(agent: TSHAgent, value: float) -> None:
    """Replace the actor by one that always answers ``value`` (the inner stage's label only)."""
    k = len(agent.tasks)
    agent.actor = lambda s: torch.full((s.shape[0], k), value)  # type: ignore[assignment]


def _saturated_share(agent: TSHAgent, batch: Batch) -> float:
    """Share of the real candidates' cell outputs within 0.02 of 0 or 1 (a step, not a ramp)."""
    s = agent._state(torch.as_tensor(batch.state))
    with torch.no_grad():
        q = agent.mfc.forward_task_major(s, torch.as_tensor(batch.predictions))
    q = q[torch.as_tensor(batch.mask)[:, None, :].expand_as(q)]
    return float(((q < 0.02) | (q > 0.98)).float().mean())


def test_transfer_anchor_is_a_frozen_copy_of_the_served_cells(tmp_path: Path) -> None:
    assert _fresh(dataclasses.replace(SMALL, transfer_anchor="none")).mfc_anchor is None
    agent = _fresh(ANCHORED)
    assert agent.mfc_anchor is not None
    start = copy.deepcopy(agent.mfc.state_dict())
    for _ in range(3):
        agent.update_inner(_batch())
    for key, value in agent.mfc_anchor.state_dict().items():
        assert torch.equal(value, start[key]), key  # training does not move the anchor
    assert not any(p.requires_grad for p in agent.mfc_anchor.parameters())
    assert any(not torch.equal(v, start[k]) for k, v in agent.mfc.state_dict().items())
    agent.save(tmp_path / "a.safetensors")
    loaded = TSHAgent.load(tmp_path / "a.safetensors")  # a new version: the anchor follows
    assert loaded.mfc_anchor is not None
    for key, value in loaded.mfc_anchor.state_dict().items():
        assert torch.equal(value, agent.mfc.state_dict()[key]), key


def test_anchored_transfer_has_its_fixed_point_at_zero_action() -> None:
    """a = 0 and cells equal to the anchor: the label is the cells' own score differences, the
    transfer's gradient is exactly 0 and (lam = 0) the cells do not move."""
    agent = _fresh(TSHConfig(hidden=32, inner_batch_size=16, transfer_anchor="version", lam=0.0))
    _constant_actor(agent, 0.0)
    start = copy.deepcopy(agent.mfc.state_dict())
    metrics = agent.update_inner(_batch())
    assert metrics["transfer_loss"] == pytest.approx(0.0, abs=1e-7)
    for key, value in agent.mfc.state_dict().items():
        assert torch.equal(value, start[key]), key


def test_anchored_transfer_does_not_compound_a_constant_action() -> None:
    """With a persistent a > 0 the unanchored inner stage absorbs q(1 + a q) again at every
    update and its cells end as 0/1 steps (the production collapse); anchored, the target is
    one application of the outer stage to the served cells, and most outputs stay ramps."""
    batch = _batch(n=12, seed=4)
    saturated = {}
    for anchor in ("none", "version"):
        cfg = TSHConfig(hidden=32, inner_batch_size=64, inner_lr=1e-2, lam=0.0,
                        transfer_anchor=anchor)  # fmt: skip
        agent = TSHAgent(TASKS, D, cfg, seed=1, fit_neutral=True)
        assert _saturated_share(agent, batch) == 0.0
        _constant_actor(agent, 0.5)
        for _ in range(400):
            agent.update_inner(batch)
        saturated[anchor] = _saturated_share(agent, batch)
    assert saturated["none"] > 0.9
    assert saturated["version"] < 0.5


def test_the_product_anchors_and_the_study_runs_the_papers_transfer() -> None:
    from trainer.study.config import PaperConfig

    assert TSHConfig().transfer_anchor == "version"
    assert PaperConfig().tsh.transfer_anchor == "none"
    assert PaperConfig.quick_config().tsh.transfer_anchor == "none"


def test_transfer_anchor_must_be_known() -> None:
    with pytest.raises(ValueError, match="transfer_anchor"):
        TSHConfig(transfer_anchor="served")
