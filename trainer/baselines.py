"""Baselines of the paper's offline study (Table 3): fusion formulas, CEM, TD3, BatchRL-MTF, and
the "xMTF w/o outer stage" ablation.

* **Formulas** (paper Table 1): ``linear`` is formula 1, ``z = sum_k a_k o_k``; ``log`` is
  formula 2, ``z = sum_k a_k log(o_k + beta_k)``. Both are monotone in every ``o_k`` for
  ``a_k > 0``, so every baseline searches log-weights ``u_k`` and uses ``a_k = exp(u_k)``: the
  fusion is monotone by construction and ``u = 0`` is the neutral fusion (the plain sum for
  formula 1, the plain product for formula 2). A task of direction -1 enters as ``1 - o_k``.
  :func:`outer_formula_scores` is the formula xMTF degenerates to without its inner stage,
  ``z = sum_k o_k (1 + a_k o_k)`` (monotone for ``a_k > -1/2``).
* **CEM** (:func:`cem_optimize`): the cross-entropy method over the K non-personalised
  log-weights, a diagonal Gaussian refitted to the elite of each population.
* **TD3** (:class:`TD3Agent`, Fujimoto et al. 2018): twin critics with the minimum of the two
  target critics in the bootstrap target, target-policy smoothing (clipped Gaussian noise on
  the target action) and delayed actor and target updates. The action is the per-request
  log-weights of a formula. Same :class:`Actor`/:class:`Critic` five-layer MLPs, widths,
  learning rates, discount and batch size as xMTF (from :class:`TSHConfig`).
* **BatchRL-MTF** (Zhang et al., KDD'22): offline RL on a fixed log. Our stand-in is TD3+BC
  (Fujimoto & Gu 2021), the same :class:`TD3Agent` with ``bc_alpha`` set: the actor maximises
  the normalised ``Q`` while a behaviour-cloning term keeps it close to the logged actions
  (the conservative part that counters extrapolation error on actions the log never tried).
  The log is collected once by a behaviour policy (the neutral weights plus Gaussian noise);
  the agent never interacts while it learns.
* **xMTF w/o outer stage** (:class:`MyopicMFCLearner`): the same MFCs, no RL at all. The cells
  are trained with the paper's inner-stage loss (eq. 18) whose transfer label is the *observed
  per-item reward* (each shown item's watch time) instead of the outer stage's score: BPR over
  pairs of shown items ordered by their watch time, plus the monotonicity loss over all logged
  candidates. It learns what pays now and nothing about the session (no long-term signal).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from shared.tasks import TaskSpec
from trainer import losses
from trainer.config import TSHConfig, to_dict
from trainer.networks import Actor, Critic, RunningNorm
from trainer.replay import Batch, ReplayBuffer
from trainer.simulator import Observation, StepResult
from trainer.tsh import TSHAgent, soft_update

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
FORMULAS = ("linear", "log")


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


# ---------------------------------------------------------------------------------- formulas


@dataclass(frozen=True)
class FormulaConfig:
    """The search space of the formula baselines: log-weights ``u`` in [low, high]."""

    log_weight_low: float = -3.0  # a_k >= exp(-3) ~ 0.05
    log_weight_high: float = 3.0  # a_k <= exp(3) ~ 20
    beta: float = 1e-3  # beta_k of formula 2 (the same small constant for every task)

    def __post_init__(self) -> None:
        if not self.log_weight_low < 0.0 < self.log_weight_high:
            raise ValueError("need log_weight_low < 0 < log_weight_high (0 is the neutral fusion)")
        if not self.beta > 0:
            raise ValueError("beta must be > 0")


def _oriented(predictions: np.ndarray, directions: Sequence[int] | None) -> np.ndarray:
    """(U, K, N) predictions, with ``1 - o`` for direction -1 tasks."""
    if directions is None:
        return predictions
    flip = np.asarray(directions).reshape(1, -1, 1) < 0
    return np.where(flip, 1.0 - predictions, predictions)


def formula_scores(
    predictions: np.ndarray,
    weights: np.ndarray,
    formula: str,
    beta: float = 1e-3,
    directions: Sequence[int] | None = None,
) -> np.ndarray:
    """Formula 1 or 2 of the paper's Table 1: predictions (U, K, N), weights (U, K) or (K,)
    with ``a_k > 0`` -> scores (U, N)."""
    o = _oriented(np.asarray(predictions, np.float64), directions)
    a = np.asarray(weights, np.float64)
    a = np.broadcast_to(a, o.shape[:2])[..., None]
    if formula == "linear":
        return (a * o).sum(axis=1)
    if formula == "log":
        return (a * np.log(o + beta)).sum(axis=1)
    raise ValueError(f"unknown formula {formula!r}; expected one of {FORMULAS}")


def outer_formula_scores(
    predictions: np.ndarray, action: np.ndarray, directions: Sequence[int] | None = None
) -> np.ndarray:
    """``z = sum_k o_k (1 + a_k o_k)``: xMTF without its inner stage (paper section 6.4)."""
    o = _oriented(np.asarray(predictions, np.float64), directions)
    a = np.broadcast_to(np.asarray(action, np.float64), o.shape[:2])[..., None]
    return (o * (1.0 + a * o)).sum(axis=1)


def fixed_weights_score_fn(
    log_weights: np.ndarray, formula: str, beta: float, directions: Sequence[int] | None = None
) -> ScoreFn:
    """A simulator ``score_fn`` fusing with fixed (non-personalised) weights ``exp(u)``."""
    weights = np.exp(np.asarray(log_weights, np.float64))

    def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        return formula_scores(predictions.transpose(0, 2, 1), weights, formula, beta, directions)

    return score


# --------------------------------------------------------------------------------------- CEM


@dataclass(frozen=True)
class CEMConfig:
    iterations: int = 12
    population: int = 16
    elite_frac: float = 0.25
    sessions: int = 300  # simulated sessions per candidate (the same users for a whole population)
    init_std: float = 1.0
    min_std: float = 0.05

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.population < 2 or self.sessions < 1:
            raise ValueError("CEM needs iterations >= 1, population >= 2, sessions >= 1")
        if not 0.0 < self.elite_frac <= 1.0:
            raise ValueError("elite_frac must be in (0, 1]")


@dataclass
class CEMResult:
    mean: np.ndarray  # (dim,) the final distribution's mean: the solution
    std: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)


def cem_optimize(
    objective: Callable[[np.ndarray, int], np.ndarray],
    dim: int,
    config: CEMConfig,
    rng: np.random.Generator,
    low: float = -np.inf,
    high: float = np.inf,
    init_mean: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "cem",
) -> CEMResult:
    """Maximise ``objective(candidates (P, dim), iteration) -> values (P,)`` with the
    cross-entropy method: sample a diagonal Gaussian (clipped to [low, high]), keep the elite,
    refit mean and std to it (std floored at ``min_std``)."""
    mean = np.zeros(dim) if init_mean is None else np.asarray(init_mean, np.float64).copy()
    std = np.full(dim, config.init_std)
    n_elite = max(1, round(config.elite_frac * config.population))
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.iterations), desc=desc, disable=not progress, leave=False)
    for it in bar:
        pop = np.clip(mean + std * rng.standard_normal((config.population, dim)), low, high)
        values = np.asarray(objective(pop, it), np.float64)
        elite = pop[np.argsort(-values)[:n_elite]]
        mean = elite.mean(axis=0)
        std = np.maximum(elite.std(axis=0), config.min_std)
        row = {
            "iteration": float(it + 1),
            "population_mean": float(values.mean()),
            "elite_mean": float(np.sort(values)[-n_elite:].mean()),
            "best": float(values.max()),
        }
        history.append(row)
        bar.set_postfix(best=f"{row['best']:.0f}")
    return CEMResult(mean=mean, std=std, history=history)


# --------------------------------------------------------------------------------------- TD3


@dataclass(frozen=True)
class TD3Config:
    policy_noise: float = 0.2  # target smoothing std, as a fraction of the action half-range
    noise_clip: float = 0.5  # clip of that noise, same unit
    policy_delay: int = 2  # actor and target updates every `policy_delay` critic updates
    bc_alpha: float = 2.5  # TD3+BC trade-off (BatchRL only)
    behaviour_noise: float = 0.15  # behaviour policy noise std, fraction of the action range


class TD3Agent:
    """TD3 whose action is the per-request log-weights ``u`` of a fusion formula.

    ``bc_alpha`` set: TD3+BC, the offline (BatchRL-MTF) variant; the actor loss becomes
    ``-alpha Q(s, pi(s)) / mean|Q| + (pi(s) - a_logged)^2``.
    """

    def __init__(
        self,
        state_dim: int,
        n_tasks: int,
        formula: str,
        tsh: TSHConfig | None = None,
        td3: TD3Config | None = None,
        space: FormulaConfig | None = None,
        seed: int = 0,
        bc_alpha: float | None = None,
        directions: Sequence[int] | None = None,
    ) -> None:
        if formula not in FORMULAS:
            raise ValueError(f"unknown formula {formula!r}")
        self.formula = formula
        self.config = cfg = tsh or TSHConfig()
        self.td3 = td3 or TD3Config()
        self.space = space or FormulaConfig()
        self.bc_alpha = bc_alpha
        self.directions = directions
        self.state_dim, self.n_tasks, self.seed = state_dim, n_tasks, seed
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        low, high = self.space.log_weight_low, self.space.log_weight_high
        self.low, self.high = low, high
        self.norm = RunningNorm(state_dim)
        self.actor = Actor(state_dim, n_tasks, cfg.hidden, low, high, neutral=0.0)
        self.critic1 = Critic(state_dim, n_tasks, cfg.hidden, low, high)
        self.critic2 = Critic(state_dim, n_tasks, cfg.hidden, low, high)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic1_target = copy.deepcopy(self.critic1)
        self.critic2_target = copy.deepcopy(self.critic2)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        critic_params = [*self.critic1.parameters(), *self.critic2.parameters()]
        self.critic_opt = torch.optim.Adam(critic_params, lr=cfg.critic_lr)
        self.updates = 0
        self._last_actor: dict[str, float] = {}

    def observe(self, states: np.ndarray) -> None:
        self.norm.update(_t(states))

    @torch.no_grad()
    def act(self, states: np.ndarray, explore: bool) -> np.ndarray:
        mu = self.actor(self.norm(_t(states))).numpy()
        if not explore or self.config.exploration_scale == 0:
            return mu
        std = self.config.exploration_scale * (self.high - self.low)
        return np.clip(mu + self.rng.normal(0.0, std, mu.shape), self.low, self.high).astype(
            np.float32
        )

    def scores(self, predictions: np.ndarray, action: np.ndarray) -> np.ndarray:
        """predictions (U, K, N), log-weights (U, K) -> scores (U, N)."""
        return formula_scores(
            predictions, np.exp(action), self.formula, self.space.beta, self.directions
        )

    def score_fn(self) -> ScoreFn:
        def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
            return self.scores(predictions.transpose(0, 2, 1), self.act(state, explore=False))

        return score

    def target_action(self, next_state_n: torch.Tensor) -> torch.Tensor:
        """Target policy smoothing: ``clip(mu'(s') + clip(eps, -c, c), low, high)``."""
        half = (self.high - self.low) / 2.0
        a = self.actor_target(next_state_n)
        noise = (torch.randn_like(a) * self.td3.policy_noise * half).clamp(
            -self.td3.noise_clip * half, self.td3.noise_clip * half
        )
        return (a + noise).clamp(self.low, self.high)

    def td3_target(self, batch: Batch) -> torch.Tensor:
        """``r + gamma (1 - done) min(Q1'(s', a'), Q2'(s', a'))``: the twin-critic target."""
        cfg = self.config
        with torch.no_grad():
            s2 = self.norm(_t(batch.next_state))
            a2 = self.target_action(s2)
            next_q = torch.minimum(self.critic1_target(s2, a2), self.critic2_target(s2, a2))
            reward = _t(batch.reward) * cfg.reward_scale
            return losses.td_target(reward, _t(batch.done), next_q, cfg.gamma)

    def update(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        s, a = self.norm(_t(batch.state)), _t(batch.action)
        target = self.td3_target(batch)
        q1, q2 = self.critic1(s, a), self.critic2(s, a)
        critic_loss = losses.critic_loss(q1, target) + losses.critic_loss(q2, target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        nn.utils.clip_grad_norm_(
            [*self.critic1.parameters(), *self.critic2.parameters()], cfg.grad_clip
        )
        self.critic_opt.step()
        self.updates += 1
        if self.updates % self.td3.policy_delay == 0:
            pi = self.actor(s)
            q_pi = self.critic1(s, pi)
            if self.bc_alpha is None:
                actor_loss = losses.actor_loss(q_pi)
            else:
                lam = self.bc_alpha / q_pi.abs().mean().detach().clamp(min=1e-6)
                actor_loss = -lam * q_pi.mean() + F.mse_loss(pi, a)
            self.actor_opt.zero_grad()
            actor_loss.backward()
            nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
            self.actor_opt.step()
            soft_update(self.actor_target, self.actor, cfg.tau)
            soft_update(self.critic1_target, self.critic1, cfg.tau)
            soft_update(self.critic2_target, self.critic2, cfg.tau)
            self._last_actor = {
                "actor_loss": float(actor_loss.detach()),
                "action_mean": float(pi.detach().mean()),
            }
        return {
            "critic_loss": float(critic_loss.detach()) / 2.0,
            "q_mean": float(q1.detach().mean()),
            **self._last_actor,
        }

    def save(self, path: Path) -> None:
        modules = {
            "norm": self.norm,
            "actor": self.actor,
            "critic1": self.critic1,
            "critic2": self.critic2,
        }
        tensors = {
            f"{name}.{k}": v.detach().contiguous()
            for name, m in modules.items()
            for k, v in m.state_dict().items()
        }
        meta = {
            "formula": self.formula,
            "bc_alpha": self.bc_alpha,
            "state_dim": self.state_dim,
            "n_tasks": self.n_tasks,
            "config": to_dict(self.config),
            "td3": to_dict(self.td3),
            "space": to_dict(self.space),
            "updates": self.updates,
        }
        save_file(tensors, str(path), metadata={"xmtf-baseline": json.dumps(meta)})


# ---------------------------------------------------------------------- learners (one protocol)


class Learner(Protocol):
    """What the paper runner's online loop drives (collect -> store -> learn)."""

    def act(self, state: np.ndarray, preds: np.ndarray, explore: bool) -> np.ndarray:
        """Scores (U, N) for raw states (U, D) and predictions (U, K, N)."""
        ...

    def record(self, obs: Observation, preds: np.ndarray, res: StepResult) -> None: ...

    def ready(self, learning_starts: int) -> bool: ...

    def learn(self) -> dict[str, float]: ...

    def score_fn(self) -> ScoreFn: ...

    def save(self, path: Path) -> None: ...


class TD3Learner:
    """Online TD3 on a formula (TD3-1 / TD3-2); also the behaviour policy of BatchRL-MTF when
    ``behaviour=True`` (neutral weights plus Gaussian noise, never learning)."""

    def __init__(
        self, agent: TD3Agent, replay: ReplayBuffer, batch_size: int, behaviour: bool = False
    ) -> None:
        self.agent, self.replay, self.batch_size = agent, replay, batch_size
        self.behaviour = behaviour
        self._action: np.ndarray | None = None

    def act(self, state: np.ndarray, preds: np.ndarray, explore: bool) -> np.ndarray:
        ag = self.agent
        if self.behaviour:
            std = ag.td3.behaviour_noise * (ag.high - ag.low)
            noise = ag.rng.normal(0.0, std, (state.shape[0], ag.n_tasks))
            action = np.clip(noise, ag.low, ag.high).astype(np.float32)
        else:
            ag.observe(state)
            action = ag.act(state, explore)
        self._action = action
        return ag.scores(preds, action)

    def record(self, obs: Observation, preds: np.ndarray, res: StepResult) -> None:
        assert self._action is not None
        self.replay.add(obs.state, self._action, res.reward, res.observation.state, res.done, preds)

    def ready(self, learning_starts: int) -> bool:
        return not self.behaviour and len(self.replay) >= learning_starts

    def learn(self) -> dict[str, float]:
        """One TD3 update on a replay batch (BatchRL calls it after collection, offline)."""
        return self.agent.update(self.replay.sample(self.batch_size))

    def score_fn(self) -> ScoreFn:
        return self.agent.score_fn()

    def save(self, path: Path) -> None:
        self.agent.save(path)


class MyopicMFCLearner:
    """xMTF w/o outer stage: MFCs trained by BPR towards each shown item's watch time.

    Uses a :class:`TSHAgent` for its MFCs, normaliser and neutral initialisation; the actor is
    never used (the outer stage is the identity, ``a = 0``), so the fused score is ``z^I``.
    Each logged request keeps the ``top_n`` shown items (with their watch time as label) and
    a uniform sample of the other candidates (monotonicity pairs only).
    """

    def __init__(
        self,
        agent: TSHAgent,
        capacity: int,
        max_candidates: int,
        top_n: int,
        seed: int = 0,
    ) -> None:
        if max_candidates < top_n:
            raise ValueError("max_candidates must be >= top_n")
        self.agent = agent
        k, d = len(agent.tasks), agent.state_dim
        self.capacity, self.m, self.top_n = capacity, max_candidates, top_n
        self.state = np.zeros((capacity, d), np.float32)
        self.preds = np.zeros((capacity, k, max_candidates), np.float32)
        self.mask = np.zeros((capacity, max_candidates), bool)
        self.label = np.zeros((capacity, max_candidates), np.float32)
        self.pos = self.size = 0
        self.rng = np.random.default_rng(seed)

    def act(self, state: np.ndarray, preds: np.ndarray, explore: bool) -> np.ndarray:
        self.agent.observe(state)
        return self.agent.scores(state, preds, np.zeros((state.shape[0], len(self.agent.tasks))))

    def record(self, obs: Observation, preds: np.ndarray, res: StepResult) -> None:
        assert res.shown_ids is not None
        u, _, n = preds.shape
        # position of each shown item among the request's candidates
        shown = np.argmax(obs.item_ids[:, :, None] == res.shown_ids[:, None, :], axis=1)
        others = np.ones((u, n), bool)
        np.put_along_axis(others, shown, False, axis=1)
        rest = np.argsort(np.where(others, self.rng.random((u, n)), 2.0), axis=1)
        n_rest = min(self.m, n) - self.top_n
        keep = np.concatenate([shown, rest[:, :n_rest]], axis=1)
        idx = (self.pos + np.arange(u)) % self.capacity
        self.state[idx] = obs.state
        self.preds[idx] = 0.0
        self.preds[idx, :, : keep.shape[1]] = np.take_along_axis(preds, keep[:, None, :], axis=2)
        self.mask[idx] = False
        self.mask[idx, : keep.shape[1]] = True
        self.label[idx] = 0.0
        self.label[idx, : self.top_n] = res.watch_time
        self.pos = int((self.pos + u) % self.capacity)
        self.size = int(min(self.size + u, self.capacity))

    def ready(self, learning_starts: int) -> bool:
        return self.size >= learning_starts

    def learn(self) -> dict[str, float]:
        ag = self.agent
        idx = self.rng.integers(0, self.size, size=min(ag.config.inner_batch_size, self.size))
        s = ag.norm(_t(self.state[idx]))
        preds, mask = _t(self.preds[idx]), torch.as_tensor(self.mask[idx])
        label_mask = torch.zeros_like(mask)
        label_mask[:, : self.top_n] = True
        q_inner = ag.mfc(s, preds)
        transfer = losses.transfer_loss(
            _t(self.label[idx]), losses.fused_score(q_inner), label_mask
        )
        ag.updates += 1
        return ag.inner_step(preds, q_inner, mask, transfer)

    def score_fn(self) -> ScoreFn:
        ag = self.agent

        def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
            zeros = np.zeros((state.shape[0], len(ag.tasks)), np.float32)
            return ag.scores(state, predictions.transpose(0, 2, 1), zeros)

        return score

    def save(self, path: Path) -> None:
        self.agent.save(path)


def task_directions(tasks: Sequence[TaskSpec]) -> list[int]:
    return [t.direction for t in tasks]
