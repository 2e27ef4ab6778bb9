"""TD3 (TD3-1/2) and TD3+BC (BatchRL-MTF-1/2) whose action is the log-weights of a formula.

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
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from trainer import losses
from trainer.config import TSHConfig, to_dict
from trainer.loop import AgentLearner, ScoreFn
from trainer.networks import Actor, Critic, RunningNorm
from trainer.replay import Batch, ReplayBuffer
from trainer.sim import Observation, StepResult
from trainer.study.methods.formulas import FORMULAS, FormulaConfig, formula_scores
from trainer.tsh import soft_update, to_tensor


@dataclass(frozen=True)
class TD3Config:
    policy_noise: float = 0.2  # target smoothing std, as a fraction of the action half-range
    noise_clip: float = 0.5  # clip of that noise, same unit
    policy_delay: int = 2  # actor and target updates every `policy_delay` critic updates
    bc_alpha: float = 2.5  # TD3+BC trade-off (BatchRL only)
    behaviour_noise: float = 0.15  # behaviour policy noise std, fraction of the action range
    # BatchRL-MTF's gradient updates on its fixed log (TD3+BC is usually run for 1e5-1e6);
    # they spend no simulated requests, so the budget is the log's size. 0: one per logged step.
    offline_updates: int = 100_000

    def __post_init__(self) -> None:
        if self.offline_updates < 0:
            raise ValueError("offline_updates must be >= 0")


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
        self.norm.update(to_tensor(states))

    @torch.no_grad()
    def act(self, states: np.ndarray, explore: bool) -> np.ndarray:
        mu = self.actor(self.norm(to_tensor(states))).numpy()
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
            return self.scores(predictions, self.act(state, explore=False))

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
            s2 = self.norm(to_tensor(batch.next_state))
            a2 = self.target_action(s2)
            next_q = torch.minimum(self.critic1_target(s2, a2), self.critic2_target(s2, a2))
            reward = to_tensor(batch.reward) * cfg.reward_scale
            return losses.td_target(reward, to_tensor(batch.done), next_q, cfg.gamma)

    def update(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        s, a = self.norm(to_tensor(batch.state)), to_tensor(batch.action)
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
            if cfg.action_l2 > 0:  # the same action penalty as xMTF's actor (0 = neutral)
                actor_loss = actor_loss + cfg.action_l2 * pi.pow(2).mean()
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


class TD3Learner(AgentLearner):
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
