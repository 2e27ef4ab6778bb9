"""Baselines of the offline study: formulas, CEM, TD3 (twin critics), TD3+BC, myopic MFCs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from shared.tasks import make_tasks
from trainer.config import TSHConfig
from trainer.losses import violation_rate
from trainer.replay import ReplayBuffer
from trainer.sim import SimConfig, UserSimulator
from trainer.study.methods.cem import CandidateSessions, CEMConfig, cem_optimize
from trainer.study.methods.formulas import FORMULAS, formula_scores, outer_formula_scores
from trainer.study.methods.myopic import MyopicMFCLearner
from trainer.study.methods.td3 import TD3Agent, TD3Config
from trainer.tsh import TSHAgent

SMALL = TSHConfig(hidden=32, batch_size=64, inner_batch_size=16)
D, K = 5, 3


def _increasing_along_task(fn, rng: np.random.Generator) -> None:
    """Raising one task's prediction of one candidate never lowers that candidate's score."""
    preds = rng.uniform(1e-4, 1 - 1e-4, size=(8, K, 10))
    base = fn(preds)
    for k in range(K):
        bumped = preds.copy()
        bumped[:, k, :] = np.minimum(bumped[:, k, :] + rng.uniform(0, 0.3, (8, 10)), 1 - 1e-6)
        assert np.all(fn(bumped) >= base - 1e-9), k


@pytest.mark.parametrize("formula", FORMULAS)
def test_formulas_are_monotone_for_positive_weights(formula: str) -> None:
    rng = np.random.default_rng(0)
    weights = np.exp(rng.uniform(-3, 3, size=(8, K)))
    _increasing_along_task(lambda p: formula_scores(p, weights, formula, 1e-3), rng)


def test_outer_formula_is_monotone_above_minus_half() -> None:
    rng = np.random.default_rng(1)
    action = rng.uniform(-0.49, 1.5, size=(8, K))
    _increasing_along_task(lambda p: outer_formula_scores(p, action), rng)


def test_direction_minus_one_flips_the_formula() -> None:
    preds = np.array([[[0.2, 0.8]]])  # (1, K=1, N=2)
    up = formula_scores(preds, np.ones(1), "linear")
    down = formula_scores(preds, np.ones(1), "linear", directions=[-1])
    assert up[0, 1] > up[0, 0] and down[0, 1] < down[0, 0]


def test_formula_one_with_unit_weights_is_the_plain_sum() -> None:
    preds = np.random.default_rng(2).random((4, K, 7))
    np.testing.assert_allclose(formula_scores(preds, np.ones(K), "linear"), preds.sum(axis=1))
    with pytest.raises(ValueError, match="unknown formula"):
        formula_scores(preds, np.ones(K), "exp")


def test_cem_improves_a_simple_objective() -> None:
    target = np.array([1.5, -2.0, 0.5, 2.5])

    def objective(pop: np.ndarray, it: int) -> np.ndarray:
        return -((pop - target) ** 2).sum(axis=1)

    cfg = CEMConfig(iterations=15, population=32, elite_frac=0.25, sessions=1)
    result = cem_optimize(objective, 4, cfg, np.random.default_rng(0), low=-3, high=3)
    start = objective(np.zeros((1, 4)), 0)[0]
    end = objective(result.mean[None, :], 0)[0]
    assert end > start and end > -0.05
    assert result.history[-1]["elite_mean"] > result.history[0]["elite_mean"]


def test_candidate_sessions_score_a_population_on_common_users_and_count_its_requests() -> None:
    sim = UserSimulator(SimConfig(n_candidates=12, top_n=3, max_steps=5, n_items=200))
    preds_weighted = lambda w: lambda s, p: np.tensordot(w, p, axes=([0], [1]))  # noqa: E731
    wrapped: list[int] = []

    def wrap(i, fn):
        wrapped.append(i)
        return fn

    objective = CandidateSessions(
        sim, preds_weighted, sessions=6, users=lambda it: 100 + it, wrap=wrap
    )
    k = len(sim.tasks)
    pop = np.stack([np.ones(k), np.ones(k), -np.ones(k)])
    before = sim.requests_served
    values = objective(pop, 0)
    assert values.shape == (3,) and wrapped == [0, 1, 2]
    assert values[0] == values[1]  # the same users and random numbers for every candidate
    assert values[0] != values[2]
    assert objective.cost == sim.requests_served - before > 0
    # the next iteration draws other users: the same candidate scores differently
    assert objective(pop[:1], 1)[0] != values[0]


def _batch(n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(n, D, K, 6, seed=seed)
    buf.add(
        rng.normal(size=(n, D)).astype(np.float32),
        rng.uniform(-3, 3, size=(n, K)).astype(np.float32),
        rng.uniform(0, 100, n).astype(np.float32),
        rng.normal(size=(n, D)).astype(np.float32),
        (rng.random(n) < 0.2).astype(np.float32),
        rng.random((n, K, 6)).astype(np.float32),
    )
    return buf.sample(n)


def test_td3_target_uses_the_min_of_the_twin_target_critics() -> None:
    agent = TD3Agent(D, K, "linear", SMALL, TD3Config(policy_noise=0.0), seed=0)
    with torch.no_grad():  # make the two target critics disagree by a constant
        agent.critic1_target.net[-1].bias.fill_(5.0)
        agent.critic2_target.net[-1].bias.fill_(-5.0)
    batch = _batch()
    target = agent.td3_target(batch)
    s2 = agent.norm(torch.as_tensor(batch.next_state))
    a2 = agent.actor_target(s2)
    with torch.no_grad():
        q1, q2 = agent.critic1_target(s2, a2), agent.critic2_target(s2, a2)
    assert torch.all(q2 < q1)
    reward = torch.as_tensor(batch.reward) * SMALL.reward_scale
    expected = reward + SMALL.gamma * (1 - torch.as_tensor(batch.done)) * q2
    torch.testing.assert_close(target, expected)


def test_td3_smoothing_noise_is_clipped_and_actor_updates_are_delayed() -> None:
    td3 = TD3Config(policy_noise=10.0, noise_clip=0.1, policy_delay=3)
    agent = TD3Agent(D, K, "log", SMALL, td3, seed=1)
    s2 = torch.randn(256, D)
    with torch.no_grad():
        diff = agent.target_action(s2) - agent.actor_target(s2)
    assert diff.abs().max() <= 0.1 * 3.0 + 1e-5  # clip x half-range
    before = [p.detach().clone() for p in agent.actor.parameters()]
    batch = _batch()
    agent.update(batch)
    agent.update(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))
    metrics = agent.update(batch)
    assert not all(torch.equal(a, b) for a, b in zip(before, agent.actor.parameters(), strict=True))
    assert all(math.isfinite(v) for v in metrics.values()) and "actor_loss" in metrics


def test_td3_bc_pulls_the_actor_towards_logged_actions() -> None:
    """bc_alpha = 0 and no action penalty: the actor loss is pure behaviour cloning."""
    cfg = dataclasses.replace(SMALL, actor_lr=3e-3, action_l2=0.0)
    agent = TD3Agent(D, K, "linear", cfg, TD3Config(policy_delay=1), seed=2, bc_alpha=0.0)
    batch = _batch()
    batch = dataclasses.replace(batch, action=np.full_like(batch.action, 2.0))
    s = torch.as_tensor(batch.state)

    def gap() -> float:
        with torch.no_grad():
            return float(((agent.actor(agent.norm(s)) - 2.0) ** 2).mean())

    start = gap()
    for _ in range(100):
        agent.update(batch)
    assert gap() < 0.1 * start


def test_td3_action_penalty_is_xmtfs() -> None:
    """bc_alpha = 0 with action_l2 = 1: (pi - 2)^2 + pi^2 is smallest at pi = 1."""
    cfg = dataclasses.replace(SMALL, actor_lr=3e-3, action_l2=1.0)
    agent = TD3Agent(D, K, "linear", cfg, TD3Config(policy_delay=1), seed=2, bc_alpha=0.0)
    batch = _batch()
    batch = dataclasses.replace(batch, action=np.full_like(batch.action, 2.0))
    s = torch.as_tensor(batch.state)
    for _ in range(300):
        agent.update(batch)
    with torch.no_grad():
        pi = agent.actor(agent.norm(s))
    assert float((pi - 1.0).abs().mean()) < 0.15


def test_td3_actions_stay_in_bounds() -> None:
    agent = TD3Agent(D, K, "linear", SMALL, seed=3)
    states = np.random.default_rng(0).normal(size=(100, D)).astype(np.float32) * 10
    for explore in (False, True):
        a = agent.act(states, explore)
        assert a.shape == (100, K) and a.min() >= -3.0 and a.max() <= 3.0


def test_violation_rate_counts_pairs_ordered_against_the_direction() -> None:
    preds = torch.tensor([[[0.1, 0.2, 0.3]]])  # (B=1, K=1, N=3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    up = torch.tensor([1])
    assert violation_rate(preds, preds * 2, up, mask) == 0.0
    assert violation_rate(preds, -preds, up, mask) == 1.0
    assert violation_rate(preds, -preds, torch.tensor([-1]), mask) == 0.0


def test_myopic_learner_labels_the_shown_items_with_their_watch_time() -> None:
    sim = UserSimulator(SimConfig(n_candidates=12, top_n=3, max_steps=5, n_items=200))
    tasks = make_tasks(sim.tasks)
    agent = TSHAgent(tasks, sim.state_dim, SMALL, seed=0, fit_neutral=False)
    learner = MyopicMFCLearner(agent, capacity=64, max_candidates=8, top_n=3, seed=0)
    obs = sim.reset(4, seed=0)
    preds = obs.predictions
    res = sim.step_scores(learner.act(obs.state, preds, explore=True))
    learner.record(obs, preds, res)
    assert learner.size == 4 and learner.mask[:4].all()
    np.testing.assert_allclose(learner.label[:4, :3], res.watch_time)
    for u in range(4):
        for j, item in enumerate(res.shown_ids[u]):
            col = int(np.flatnonzero(obs.item_ids[u] == item)[0])
            np.testing.assert_allclose(learner.preds[u, :, j], preds[u, :, col])
        # the other kept candidates are distinct, unshown ones
        kept = {tuple(learner.preds[u, :, j]) for j in range(8)}
        assert len(kept) == 8
    metrics = learner.learn()
    assert all(math.isfinite(v) for v in metrics.values())


def test_batchrl_runs_its_configured_offline_updates() -> None:
    """BatchRL-MTF trains for ``td3.offline_updates`` gradient steps on its fixed log, whatever
    the log's size (the budget is the log; the updates spend no simulated requests)."""
    from trainer.study.config import PaperConfig
    from trainer.study.registry import METHOD_BY_KEY
    from trainer.study.runner import Runner

    config = PaperConfig.quick_config(trials=1)
    config = dataclasses.replace(config, td3=TD3Config(offline_updates=30))
    trial = Runner(config).run(METHOD_BY_KEY["batchrl1"], seed=0)
    assert trial.curve[-1]["step"] == 30 / config.train.updates_per_step
    assert trial.eval["requests"] >= config.budgets[-1]  # the log spent the budget
    with pytest.raises(ValueError, match="offline_updates"):
        TD3Config(offline_updates=-1)


def test_block_wise_es_runs_with_its_method_overrides() -> None:
    """``xmtf_es_blocks`` is the ES learner with the method's ``block_iterations``; a quick
    study trial of it distils (one iteration per block) and still reports every budget."""
    from trainer.study.config import PaperConfig
    from trainer.study.registry import METHOD_BY_KEY
    from trainer.study.runner import Runner

    base = PaperConfig.quick_config(trials=1)
    es = dataclasses.replace(base.es, block_iterations=1, val_sessions=8, distill_steps=5)
    config = dataclasses.replace(base, es=es, budgets=(2000, 3000))
    runner = Runner(config)
    method = METHOD_BY_KEY["xmtf_es_blocks"]
    assert runner.make_es_learner(method, seed=0).es.config.block_iterations == 5
    plain = runner.make_es_learner(METHOD_BY_KEY["xmtf_es"], seed=0)
    assert plain.es.config.block_iterations == 1  # the study's own es section
    one_per_block = dataclasses.replace(method, es=(("block_iterations", 1),))
    trial = runner.run(one_per_block, seed=0)
    assert [r["budget"] for r in trial.budgets] == list(config.budgets)
    assert any("distill_block" in row for row in trial.curve)


def test_warm_started_es_spends_its_share_on_a_global_search_then_distils() -> None:
    """``xmtf_es_warm``: CEM over global formula weights within its share of the last budget
    (counted; a budget it passes reports the start), the solution distilled into the cells,
    then ES; every budget is reported, and where the share leaves nothing for the search, ES
    starts from the cells as initialised."""
    from trainer.study.config import PaperConfig
    from trainer.study.registry import METHOD_BY_KEY
    from trainer.study.runner import Runner

    base = PaperConfig.quick_config(trials=1)
    es = dataclasses.replace(base.es, val_sessions=8, distill_steps=5)
    config = dataclasses.replace(base, es=es, budgets=(6000, 24000))
    method = METHOD_BY_KEY["xmtf_es_warm"]
    assert method.es_config(base.es).warm_sessions == PaperConfig().cem.sessions  # CEM-1's
    trial = Runner(config).run(method, seed=0)
    start = Runner(config).run(METHOD_BY_KEY["xmtf_init"], seed=0).budgets[0]["return_mean"]
    assert [r["budget"] for r in trial.budgets] == list(config.budgets)
    warm = [row for row in trial.curve if "warm_iteration" in row]
    assert warm and all(row["step"] == 0.0 for row in warm)
    distilled = next(row for row in trial.curve if "warm_requests" in row)
    assert distilled["distill_block"] == 1.0
    assert config.budgets[0] < distilled["warm_requests"] <= 0.5 * config.budgets[-1]
    first = trial.budgets[0]  # passed by the global search: the start's row
    assert first["kept_start"] and first["return_mean"] == pytest.approx(start)
    assert set(trial.extra["warm_solution"]) == {t.name for t in Runner(config).tasks}
    assert all(r["requests"] <= r["budget"] for r in trial.budgets)
    # a warm start that ends just below a budget leaves no room for a look (the same search
    # ends at the same request count: its limit depends on the last budget only): the budget
    # reports the start without a look instead of overspending on one
    first = int(distilled["warm_requests"]) + 1
    near = Runner(dataclasses.replace(config, budgets=(first, 24000))).run(method, seed=0)
    assert next(r for r in near.curve if "warm_requests" in r) == distilled
    assert all(r["requests"] <= r["budget"] for r in near.budgets)
    assert near.budgets[0]["kept_start"] and near.budgets[0]["return_mean"] == pytest.approx(start)
    assert all(v["step"] > 0 for v in near.extra["validation"] if "val_gain" in v)
    tiny = dataclasses.replace(config, budgets=(50, 100))  # no room: ES from the cells as they are
    plain = Runner(tiny).run(method, seed=0)
    assert "warm_solution" not in plain.extra
    assert not any("warm_iteration" in row for row in plain.curve)
    assert [r["budget"] for r in plain.budgets] == list(tiny.budgets)


def test_a_budget_row_counts_the_requests_its_choice_spent() -> None:
    """The row's ``requests`` are read after the selector chose (and, with a confirmation
    test, spent more validation requests), so the budget's accounting includes them."""
    from trainer.study.config import PaperConfig
    from trainer.study.runner import Runner

    spent = [1000]

    class Spending:
        def finish(self, learner: object) -> dict[str, object]:
            spent[0] += 250  # e.g. a confirmation test's sessions
            return {"selected_step": 3, "kept_start": False}

    class Plain:
        def snapshot(self) -> object:
            return None

        def restore(self, snapshot: object) -> None:
            pass

        def score_fn(self):  # type: ignore[no-untyped-def]
            return lambda state, preds: preds.sum(axis=1)

    runner = Runner(PaperConfig.quick_config(trials=1))
    row, _ = runner._selected_row(250, lambda: spent[0], Plain(), Spending(), False)  # type: ignore[arg-type]
    assert row["requests"] == 1250 and row["selected_step"] == 3


def test_guarded_cem_pays_for_its_looks_and_reports_what_the_guard_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``cem1_cal_guarded``: the search stops while a look still fits in the budget, the looks
    are counted, and each budget's row is the guard's choice against the learners' own
    reference: xMTF as initialised (this seed's) unless the search's mean beat it with 95 %
    confidence on validation users."""
    from trainer.study.config import PaperConfig
    from trainer.study.registry import METHOD_BY_KEY
    from trainer.study.runner import Runner

    base = PaperConfig.quick_config(trials=1)
    config = dataclasses.replace(
        base, es=dataclasses.replace(base.es, val_sessions=16), budgets=(3000, 9000)
    )
    runner = Runner(config)
    method = METHOD_BY_KEY["cem1_cal_guarded"]
    trial = runner.run(method, seed=0)
    assert [r["budget"] for r in trial.budgets] == list(config.budgets)
    looks = [row for row in trial.extra["validation"] if "val_gain" in row]
    assert len(looks) == len(config.budgets)  # one look per budget
    for row in trial.budgets:
        assert row["requests"] <= row["budget"]  # the looks fit (the first iteration aside)
        assert "kept_start" in row and "selected_step" in row
    assert trial.budgets[-1]["kept_start"]  # 16 validation users: the search did not clear it
    assert trial.extra["solution"] is None
    served = runner.run(METHOD_BY_KEY["xmtf_init"], seed=0).budgets[-1]
    assert trial.budgets[-1]["returns"] == served["returns"]  # xMTF as initialised
    # a guard that always sees a gain lets the search's mean through at every budget
    from types import SimpleNamespace

    from trainer import selection

    passing = SimpleNamespace(mean=1.0, lo=0.5)
    monkeypatch.setattr(selection.stats, "paired_difference", lambda *a, **k: passing)
    opened = runner.run(method, seed=0)
    assert not any(r["kept_start"] for r in opened.budgets)
    chosen = np.array(list(opened.extra["solution"].values()))
    final = runner.evaluate(runner.formula_fn(method, chosen))
    assert opened.budgets[-1]["return_mean"] == pytest.approx(final["return_mean"])
    plain = runner.run(METHOD_BY_KEY["cem1_cal"], seed=0)
    assert "validation" not in plain.extra
    assert "kept_start" not in plain.budgets[0]
