"""The policy-search outer stage: the linear actor, the ES estimator, the learner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.config import TSHConfig
from trainer.export import export_version
from trainer.networks import Actor
from trainer.policy_search import (
    TARGET_CEILING,
    TARGET_CLIP,
    TARGET_QUANTILE,
    EvolutionStrategy,
    PolicySearchConfig,
    PolicySearchLearner,
    centred_ranks,
    distill_targets,
    es_gradient,
    formula_targets,
    linear_actions,
    neutral_preimage,
    top_n_overlap,
    write_linear_actor,
)
from trainer.sim import SimConfig, UserSimulator, evaluate
from trainer.tsh import TSHAgent

LOW, HIGH = -0.45, 1.5


def _agent(sim: UserSimulator, hidden: int = 64) -> TSHAgent:
    cfg = TSHConfig(hidden=hidden, neutral_fit_steps=20, monotone_by_construction=True)
    return TSHAgent(sim.task_specs(), sim.state_dim, cfg, seed=0)


@pytest.fixture(scope="module")
def sim() -> UserSimulator:
    return UserSimulator(SimConfig(n_candidates=20, max_steps=8, n_items=500, seed=3))


def test_neutral_preimage_maps_to_the_neutral_action() -> None:
    off = neutral_preimage(LOW, HIGH)
    a = linear_actions(np.zeros((6, 11)), np.ones((3, 10)), LOW, HIGH, off)
    np.testing.assert_allclose(a, 0.0, atol=1e-6)


def test_written_actor_equals_the_linear_policy() -> None:
    rng = np.random.default_rng(0)
    d, k = 10, 6
    actor = Actor(d, k, 32, LOW, HIGH)
    theta = rng.normal(0, 0.5, (k, 1 + d))
    mu, sd = rng.normal(size=d), rng.uniform(0.5, 2.0, d)
    off = neutral_preimage(LOW, HIGH)
    write_linear_actor(actor, theta, off, mu, sd)
    z = rng.normal(0, 2, (64, d)).astype(np.float32)
    with torch.no_grad():
        got = actor(torch.as_tensor(z)).numpy()
    want = linear_actions(theta, (z - mu) / sd, LOW, HIGH, off)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_written_actor_refuses_a_narrow_network() -> None:
    with pytest.raises(ValueError, match="hidden width"):
        write_linear_actor(Actor(10, 6, 16, LOW, HIGH), np.zeros((6, 11)), 0.0, np.zeros(10),
                           np.ones(10))  # fmt: skip


def test_centred_ranks() -> None:
    np.testing.assert_allclose(centred_ranks(np.array([3.0, -1.0, 10.0])), [0.0, -0.5, 0.5])


def test_es_gradient_on_a_hand_computable_case() -> None:
    # two pairs, eps = e1 and e2; the + member of pair 1 wins, pair 2 ties its mirror:
    # ranks of [r+1, r+2, r-1, r-2] = [4, 2, 1, 2] -> the weight vector is (+, 0)
    eps = np.array([[1.0, 0.0], [0.0, 1.0]])
    grad = es_gradient(eps, np.array([4.0, 2.0]), np.array([1.0, 2.0]))
    assert grad[0] > 0 and grad[1] == pytest.approx(0.0, abs=0.2)


def test_es_climbs_a_quadratic() -> None:
    target = np.array([[0.5, -0.3], [-0.4, 0.2]])
    cfg = PolicySearchConfig(pairs=8, sigma_bias=0.2, sigma_state=0.2, lr=0.05)
    es = EvolutionStrategy(target.shape, cfg, seed=0)
    for _ in range(200):
        es.step(lambda thetas: -np.sum((thetas - target) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(es.theta, target, atol=0.1)


def test_constant_search_leaves_the_state_weights_at_zero() -> None:
    cfg = PolicySearchConfig(pairs=4, personalise=False)
    es = EvolutionStrategy((3, 5), cfg, seed=1)
    for _ in range(5):
        es.step(lambda thetas: thetas[:, 0, 0] + thetas[:, 1, 3])
    assert np.all(es.theta[:, 1:] == 0.0) and es.theta[0, 0] > 0


def test_learner_starts_at_xmtf_as_initialised(sim: UserSimulator) -> None:
    agent = _agent(sim)
    reference = _agent(sim)
    learner = PolicySearchLearner(agent, PolicySearchConfig(pairs=2, sessions=8), seed=0)
    learner.start(sim.reset(64, seed=5).state)
    obs = sim.reset(16, seed=7)
    want, _ = reference.act(obs.state, explore=False)
    got = learner.score_fn()(obs.state, obs.predictions)
    # the same cells; the actor's exact neutral action vs the fresh actor's near-neutral one
    np.testing.assert_allclose(got, reference.scores(obs.state, obs.predictions, want), atol=1e-3)
    np.testing.assert_allclose(agent.norm.mean.numpy(), reference.norm.mean.numpy())


def test_iterations_spend_counted_requests_and_move_the_actor(sim: UserSimulator) -> None:
    agent = _agent(sim)
    cfg = PolicySearchConfig(pairs=2, sessions=8, lr=0.2)
    learner = PolicySearchLearner(agent, cfg, seed=0)
    learner.start(sim.reset(64, seed=5).state)
    before = sim.requests_served
    row = learner.iterate(sim, users_seed=11)
    assert sim.requests_served - before >= 4 * 8  # 4 candidates x 8 sessions, >= 1 step each
    assert row["theta_bias_abs"] > 0
    # the actor holds the searched policy: its greedy ranking equals the candidate's
    obs = sim.reset(16, seed=9)
    np.testing.assert_allclose(
        learner.score_fn()(obs.state, obs.predictions),
        learner.candidate_fn(learner.es.theta)(obs.state, obs.predictions),
        atol=1e-4,
    )
    same = evaluate(sim, learner.score_fn(), 8, 13).returns
    assert np.isfinite(same).all()


def test_searched_policy_exports_with_parity(sim: UserSimulator, tmp_path) -> None:
    # cells fitted to the neutral ramp as in the study (20 steps leave them flat: the export's
    # tie audit refuses those)
    cfg = TSHConfig(hidden=64, monotone_by_construction=True)
    agent = TSHAgent(sim.task_specs(), sim.state_dim, cfg, seed=0)
    learner = PolicySearchLearner(agent, PolicySearchConfig(pairs=2, sessions=4, lr=0.3), 0)
    learner.start(sim.reset(64, seed=5).state)
    learner.es.theta = np.random.default_rng(0).normal(0, 0.3, learner.es.theta.shape)
    write_linear_actor(agent.actor, learner.es.theta, learner.offset, learner.mu, learner.sd)
    # export_version refuses (raises) a version whose ONNX graphs differ from the agent
    result = export_version(agent, tmp_path)
    assert (tmp_path / result.version).is_dir()


# ---------------------------------------------------------------- block-wise TSH (distillation)
def test_distill_targets_keep_each_requests_ranking_and_fit_the_cells() -> None:
    q = torch.tensor([[[0.9, 0.2, 0.5], [0.1, 0.8, 0.5]]])  # 1 request, K = 2, N = 3
    action = torch.tensor([[1.5, 0.0]])
    targets, scale = distill_targets(q, action)
    # task 0: 0.9 (1 + 1.5 * 0.9) = 2.115 is the largest outer value -> scale = 2.115 / 0.98
    assert scale == pytest.approx(2.115 / TARGET_CEILING)
    assert float(targets.max()) == pytest.approx(TARGET_CEILING)
    summed = targets.sum(1)[0].numpy()
    policy = (q * (1 + action[..., None] * q)).sum(1)[0].numpy()
    np.testing.assert_allclose(summed * scale, policy, rtol=1e-6)
    assert list(np.argsort(-summed)) == list(np.argsort(-policy)) == [0, 2, 1]


def test_distill_targets_leave_small_outputs_unscaled() -> None:
    q = torch.full((2, 3, 4), 0.5)
    targets, scale = distill_targets(q, torch.zeros(2, 3))
    assert scale == 1.0
    torch.testing.assert_close(targets, q)


def test_formula_targets_rank_each_request_as_the_formula() -> None:
    x = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]])  # 1 request, K = 2, N = 3
    log_w = np.log([2.0, 0.5])  # each task's floor is its smallest input: -1 and -2
    targets, scores, scale = formula_targets(x, log_w)
    # task 0: 2 (x + 1) = [6, 0, 3]; task 1: 0.5 (x + 2) = [1, 2.5, 0]
    top = float(np.quantile([6.0, 0.0, 3.0], TARGET_QUANTILE))  # the larger task quantile
    assert scale == pytest.approx(top / TARGET_CEILING)
    unclipped = np.array([[6, 0, 3], [1, 2.5, 0]]) / scale
    np.testing.assert_allclose(targets[0].numpy(), np.minimum(unclipped, TARGET_CLIP), rtol=1e-5)
    np.testing.assert_allclose(scores[0].numpy(), [4.0, -0.5, 0.0], rtol=1e-6)
    # the per-task shifts move every candidate alike: the summed targets rank as the formula
    summed = targets.sum(1)[0].numpy()
    assert list(np.argsort(-summed)) == list(np.argsort(-scores[0].numpy())) == [0, 2, 1]
    assert float(targets.min()) >= 0.0 and float(targets.max()) <= TARGET_CLIP


def test_formula_targets_saturate_a_rare_tasks_outlier() -> None:
    """One candidate 70 units out on one task does not set the scale: the others keep their
    spread, and the outlier saturates at the clip."""
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((50, 2, 20)), dtype=torch.float32)
    x[0, 1, 0] = 70.0
    targets, _, scale = formula_targets(x, np.zeros(2))
    assert scale < 10.0
    assert float(targets[0, 1, 0]) == pytest.approx(TARGET_CLIP)
    assert float(targets[:, 0].std()) > 0.1  # the bulk is not squeezed towards 0


def test_top_n_overlap() -> None:
    before = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    assert top_n_overlap(before, before, 2) == 1.0
    after = np.array([[4.0, 1.0, 3.0, 2.0], [4.0, 3.0, 2.0, 1.0]])
    # request 0 keeps 1 of {0, 1}; request 1 keeps 0 of {3, 2}
    assert top_n_overlap(before, after, 2) == pytest.approx(0.25)


def test_block_config_is_validated() -> None:
    with pytest.raises(ValueError, match="block_iterations"):
        PolicySearchConfig(block_iterations=-1)
    with pytest.raises(ValueError, match="distill_steps"):
        PolicySearchConfig(distill_steps=0)
    with pytest.raises(ValueError, match="distill_lr"):
        PolicySearchConfig(distill_lr=0.0)
    with pytest.raises(ValueError, match="warm_share"):
        PolicySearchConfig(warm_share=1.0)
    with pytest.raises(ValueError, match="warm_sessions"):
        PolicySearchConfig(warm_share=0.5, warm_sessions=0)


def _searched_policy_learner(sim: UserSimulator, **config: float) -> PolicySearchLearner:
    cfg = TSHConfig(hidden=64, neutral_fit_steps=300)
    agent = TSHAgent(sim.task_specs(), sim.state_dim, cfg, seed=0)
    es_cfg = PolicySearchConfig(pairs=2, sessions=16, **config)  # type: ignore[arg-type]
    learner = PolicySearchLearner(agent, es_cfg, seed=0)
    learner.start(sim.reset(64, seed=5).state)
    return learner


def test_without_blocks_the_cells_never_move(sim: UserSimulator) -> None:
    learner = _searched_policy_learner(sim)
    before = [p.detach().clone() for p in learner.agent.mfc.parameters()]
    for it in range(3):
        row = learner.iterate(sim, users_seed=40 + it)
        assert "distill_block" not in row
    for b, a in zip(before, learner.agent.mfc.parameters(), strict=True):
        torch.testing.assert_close(b, a)


def test_a_block_distils_the_searched_policy_into_the_cells(sim: UserSimulator) -> None:
    learner = _searched_policy_learner(sim, block_iterations=2, distill_steps=400, lr=0.5)
    learner.iterate(sim, users_seed=21)
    # a strongly tilted policy, so that the distillation has something to absorb
    learner.es.theta[:, 0] = np.array([2.0, -2.0, 1.0, -1.0, 0.5, 2.0])[: learner.es.theta.shape[0]]
    theta = learner.es.theta.copy()
    obs = sim.reset(64, seed=99)
    policy = learner.candidate_fn(theta)(obs.state, obs.predictions)
    neutral_before = learner.candidate_fn(np.zeros_like(theta))(obs.state, obs.predictions)
    row = learner.iterate(sim, users_seed=22)  # the second iteration ends the block
    assert row["distill_block"] == 1.0 and learner.blocks == 1
    assert row["distill_top_n_overlap"] > 0.7
    # the search re-centred: theta = 0 and the actor is neutral again
    assert np.all(learner.es.theta == 0.0)
    after = learner.score_fn()(obs.state, obs.predictions)
    top = sim.config.top_n
    # the fusion at a = 0 now ranks like the searched policy, not like the old neutral cells
    assert top_n_overlap(policy, after, top) > top_n_overlap(policy, neutral_before, top)
    assert top_n_overlap(policy, after, top) > 0.7


def test_a_formula_distils_into_the_cells(sim: UserSimulator) -> None:
    """The warm start: the requests a recorded formula ranked are the data, the cells at a = 0
    then rank as the formula (not as they did), and the search is centred at theta = 0."""
    learner = _searched_policy_learner(sim, distill_steps=400)
    agent = learner.agent
    log_w = np.log([3.0, 0.2, 1.0, 0.2, 0.2, 2.0])[: len(agent.tasks)]

    def formula(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        x = agent.mfc.normalise(torch.as_tensor(predictions)).numpy()
        return (np.exp(log_w)[None, :, None] * x).sum(1)

    evaluate(sim, learner.recording(formula), 64, 23)
    learner.es.theta[:, 0] = 0.3
    obs = sim.reset(64, seed=98)
    wanted = formula(obs.state, obs.predictions)
    before = learner.candidate_fn(np.zeros_like(learner.es.theta))(obs.state, obs.predictions)
    row = learner.distill_formula(log_w, sim.config.top_n)
    assert row["distill_block"] == 1.0 and row["distill_top_n_overlap"] > 0.7
    assert np.all(learner.es.theta == 0.0)
    after = learner.candidate_fn(learner.es.theta)(obs.state, obs.predictions)
    top = sim.config.top_n
    assert top_n_overlap(wanted, after, top) > top_n_overlap(wanted, before, top)
    assert top_n_overlap(wanted, after, top) > 0.7
    assert learner.distill_formula(log_w, top) == {}  # the kept requests were used up
