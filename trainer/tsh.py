"""The TSH learner: actor-critic outer stage + supervised inner stage (paper Algorithm 1).

One :meth:`TSHAgent.update` runs, in order, the critic step (eq. 13), the actor step (eq. 14),
the inner-stage step (eq. 18, with the outer stage's ranking as the label of eq. 16) and the soft
target sync. Each step returns ``dict[str, float]`` for one metrics sink.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from shared.tasks import TaskSpec
from trainer import losses
from trainer.config import TSHConfig, from_dict, to_dict
from trainer.networks import Actor, Critic, MFCBank, RunningNorm
from trainer.replay import Batch


def to_tensor(a: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """float32 tensor of ``a`` (a tensor stays on its device unless ``device`` is given)."""
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)


def _floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar tensors to floats with one device-to-host copy (one sync on a GPU)."""
    values = torch.stack([v.detach().float() for v in metrics.values()]).tolist()
    return dict(zip(metrics, values, strict=True))


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- tau * source + (1 - tau) * target`` (parameters only)."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.lerp_(s, tau)


class TSHAgent:
    """Holds the xMTF networks, their optimisers and the TSH update steps."""

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        state_dim: int,
        config: TSHConfig | None = None,
        seed: int = 0,
        fit_neutral: bool = True,
    ) -> None:
        self.tasks = tuple(tasks)
        self.state_dim = state_dim
        self.config = cfg = config or TSHConfig()
        self.seed = seed
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        k = len(self.tasks)
        self.norm = RunningNorm(state_dim)
        self.mfc = MFCBank(self.tasks, state_dim, cfg.mfc_hidden, cfg.monotone_by_construction)
        self.actor = Actor(state_dim, k, cfg.hidden, cfg.action_low, cfg.action_high)
        self.critic = Critic(state_dim, k, cfg.hidden, cfg.action_low, cfg.action_high)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.inner_opt = torch.optim.Adam(self.mfc.parameters(), lr=cfg.inner_lr)
        self.updates = 0
        self._pair_rng = np.random.default_rng([seed, 1])  # cfg.pair_candidates only
        self.mfc_anchor: MFCBank | None = None
        if fit_neutral and cfg.use_inner:
            self.fit_neutral()
        self.refresh_anchor()

    @property
    def directions(self) -> torch.Tensor:
        return self.mfc.direction

    @property
    def device(self) -> torch.device:
        return self.mfc.direction.device

    def to(self, device: torch.device | str) -> TSHAgent:
        """Move every network (and so the updates) to ``device``; optimisers follow their
        parameters. Acting and scoring still take and return numpy arrays."""
        for module in self._modules().values():
            module.to(device)
        if self.mfc_anchor is not None:
            self.mfc_anchor.to(device)
        return self

    def refresh_anchor(self) -> None:
        """With ``transfer_anchor="version"``, freeze a copy of the cells as they are now: the
        outer stage labels the inner one by acting on this copy until the next refresh (at
        construction and :meth:`load`, i.e. once per served version in ``consume``)."""
        if self.config.transfer_anchor != "version":
            return
        self.mfc_anchor = copy.deepcopy(self.mfc).requires_grad_(False)

    # ------------------------------------------------------------------ initialisation

    def fit_neutral(self, steps: int | None = None) -> float:
        """Fit every cell to a linear ramp of its input over the task's range, for all states:
        with a = 0 the fused score is then (up to a constant) the plain sum of the predictions,
        so a fresh deployment starts from a neutral, monotone fusion. Returns the final MSE."""
        steps = self.config.neutral_fit_steps if steps is None else steps
        lo = torch.tensor([t.low for t in self.tasks])[None, :, None]
        hi = torch.tensor([t.high for t in self.tasks])[None, :, None]
        direction = self.directions[None, :, None]
        opt = torch.optim.Adam(self.mfc.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(self.seed)
        loss = torch.tensor(0.0)
        for _ in range(steps):
            state_n = torch.randn(64, self.state_dim, generator=gen)
            o = lo + (hi - lo) * torch.rand(64, len(self.tasks), 32, generator=gen)
            ramp = (o - lo) / (hi - lo)
            target = 0.02 + 0.96 * torch.where(direction > 0, ramp, 1.0 - ramp)
            loss = torch.mean((self.mfc(state_n, o) - target) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    # ------------------------------------------------------------------ acting

    def observe(self, states: np.ndarray) -> None:
        """Update the observation normaliser with collected states."""
        self.norm.update(to_tensor(states, self.device))

    def _state(self, states: torch.Tensor) -> torch.Tensor:
        """Normalised states, or zeros for the ``use_state=False`` ablation."""
        if not self.config.use_state:
            return torch.zeros_like(states)
        return self.norm(states)

    def exploration_noise(self, n: int) -> np.ndarray:
        """(n, K) fresh Gaussian exploration noise (std ``exploration_scale`` x action range)."""
        cfg = self.config
        std = cfg.exploration_scale * (cfg.action_high - cfg.action_low)
        return self.rng.normal(0.0, std, (n, len(self.tasks)))

    @torch.no_grad()
    def act(
        self, states: np.ndarray, explore: bool, noise: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions (B, K) for raw states, and the exploration noise that was applied (``noise``
        given: that noise, e.g. one held per session; otherwise a fresh draw)."""
        cfg = self.config
        mu = self.actor(self._state(to_tensor(states, self.device))).cpu().numpy()
        if not explore or cfg.exploration_scale == 0:
            return mu, np.zeros_like(mu)
        if noise is None:
            noise = self.exploration_noise(len(mu))
        action = np.clip(mu + noise, cfg.action_low, cfg.action_high)
        action = action.astype(np.float32)
        return action, action - mu

    def _inner(self, state_n: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        """The inner stage q^I (B, K, N): the MFCs, or (``use_inner=False``) the predictions
        themselves, flipped to ``1 - o`` for a direction -1 task so the outer stage stays
        monotone in the task's direction."""
        if self.config.use_inner:
            return self.mfc.forward_task_major(state_n, predictions)
        flip = self.directions.view(1, -1, 1) < 0
        return torch.where(flip, 1.0 - predictions, predictions)

    @torch.no_grad()
    def inner(self, states: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        """Inner-stage outputs (B, K, N) for raw states (B, D) and predictions (B, K, N)."""
        dev = self.device
        q_inner = self._inner(self._state(to_tensor(states, dev)), to_tensor(predictions, dev))
        return q_inner.cpu().numpy()

    @torch.no_grad()
    def scores(self, states: np.ndarray, predictions: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Fused scores (B, N) of eq. 8 with the outer stage of eq. 11."""
        dev = self.device
        q_inner = self._inner(self._state(to_tensor(states, dev)), to_tensor(predictions, dev))
        return losses.fused_score(losses.outer_stage(q_inner, to_tensor(action, dev))).cpu().numpy()

    # ------------------------------------------------------------------ updates

    def update_critic(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        s, s2 = self._state(to_tensor(batch.state)), self._state(to_tensor(batch.next_state))
        reward = to_tensor(batch.reward) * cfg.reward_scale
        with torch.no_grad():
            next_q = self.critic_target(s2, self.actor_target(s2))
            target = losses.td_target(reward, to_tensor(batch.done), next_q, cfg.gamma)
        q = self.critic(s, to_tensor(batch.action))
        loss = losses.critic_loss(q, target)
        self.critic_opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
        self.critic_opt.step()
        return _floats({"critic_loss": loss, "q_mean": q.mean()})

    def update_actor(self, batch: Batch) -> dict[str, float]:
        s = self._state(to_tensor(batch.state))
        action = self.actor(s)
        loss = losses.actor_loss(self.critic(s, action))
        if self.config.action_l2 > 0:
            # The inner stage absorbs whatever the outer stage does (eq. 16), so a constant
            # action compounds step after step; an actor pinned at a bound (tanh saturated, no
            # gradient left) then drives the fusion without end. Keeping a near 0 keeps the
            # outer stage a small, reversible correction of the inner one.
            loss = loss + self.config.action_l2 * action.pow(2).mean()
        # only the actor's gradients: the critic's weight gradients would be thrown away
        params = list(self.actor.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
            p.grad = g
        nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.actor_opt.step()
        return _floats({"actor_loss": loss, "action_mean": action.mean()})

    def update_inner(self, batch: Batch) -> dict[str, float]:
        """Eq. 18 on a batch of requests: the current policy's outer stage is the label."""
        n = min(self.config.inner_batch_size, batch.state.shape[0])
        s = self._state(to_tensor(batch.state[:n], self.device))
        preds, mask = self._inner_candidates(batch, n)
        q_inner = self.mfc.forward_task_major(s, preds)
        with torch.no_grad():
            acted_on = (
                q_inner if self.mfc_anchor is None else self.mfc_anchor.forward_task_major(s, preds)
            )
            q_outer = losses.outer_stage(acted_on, self.actor(s))
        z_outer, z_inner = losses.fused_score(q_outer), losses.fused_score(q_inner)
        if self.config.transfer == "soft":
            transfer = losses.soft_transfer_loss(
                z_outer, z_inner, mask, self.config.transfer_temperature
            )
        elif self.config.transfer == "distill":
            transfer = losses.distill_loss(q_outer, q_inner, mask)
        else:
            transfer = losses.transfer_loss(z_outer, z_inner, mask)
        return self.inner_step(preds, q_inner, mask, transfer)

    def _inner_candidates(self, batch: Batch, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions (n, K, M') and mask (n, M') of the inner stage's requests: padding columns
        that no request uses are dropped (the same losses, less work); with
        ``pair_candidates = c`` a random c of each request's real candidates (opt-in)."""
        preds, mask = np.asarray(batch.predictions[:n]), np.asarray(batch.mask[:n])
        used = np.flatnonzero(mask.any(axis=0))
        width = int(used[-1]) + 1 if used.size else 1
        preds, mask = preds[:, :, :width], mask[:, :width]
        c = self.config.pair_candidates
        if 0 < c < width:  # real candidates first, in random order
            keys = self._pair_rng.random(mask.shape) - mask
            keep = np.argpartition(keys, c - 1, axis=1)[:, :c]
            preds = np.take_along_axis(preds, keep[:, None, :], axis=2)
            mask = np.take_along_axis(mask, keep, axis=1)
        dev = self.device
        return to_tensor(preds, dev), torch.as_tensor(mask, device=dev)

    def inner_step(
        self,
        preds: torch.Tensor,
        q_inner: torch.Tensor,
        mask: torch.Tensor,
        transfer: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> dict[str, float]:
        """Eq. 18 given its transfer term (whatever labelled it): adds the monotonicity loss
        over the masked candidates and takes one step on the MFCs (with the inner stage's own
        optimiser unless ``optimizer`` is given)."""
        optimizer = self.inner_opt if optimizer is None else optimizer
        mono, violation = losses.monotonicity_loss_and_violations(
            preds, q_inner, self.directions, mask
        )
        loss = losses.inner_loss(mono, transfer, self.config.lam)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.mfc.parameters(), self.config.grad_clip)
        optimizer.step()
        return _floats(
            {
                "inner_loss": loss,
                "transfer_loss": transfer,
                "mono_loss": mono.sum(),
                "mono_violation": violation,
            }
        )

    def _batch_on_device(self, batch: Batch) -> Batch:
        """Off the CPU, the critic's and actor's fields as tensors on the device (one copy
        each); the candidates stay on the host until the inner stage picks its columns."""
        if self.device.type == "cpu":
            return batch
        moved: dict[str, Any] = {
            f: to_tensor(getattr(batch, f), self.device)
            for f in ("state", "action", "reward", "next_state", "done")
        }
        return dataclasses.replace(batch, **moved)

    def sync_targets(self) -> None:
        soft_update(self.actor_target, self.actor, self.config.tau)
        soft_update(self.critic_target, self.critic, self.config.tau)

    def update(self, batch: Batch) -> dict[str, float]:
        """One TSH step: critic, actor, inner stage (unless ``use_inner=False``), target sync."""
        batch = self._batch_on_device(batch)
        metrics = self.update_critic(batch)
        metrics |= self.update_actor(batch)
        if self.config.use_inner:
            metrics |= self.update_inner(batch)
        self.sync_targets()
        self.updates += 1
        return metrics

    # ------------------------------------------------------------------ persistence

    def _modules(self) -> dict[str, nn.Module]:
        return {
            "norm": self.norm,
            "mfc": self.mfc,
            "actor": self.actor,
            "critic": self.critic,
            "actor_target": self.actor_target,
            "critic_target": self.critic_target,
        }

    def save(self, path: Path) -> None:
        """Weights as safetensors; tasks, state_dim and config as its JSON metadata."""
        tensors = {
            f"{name}.{key}": value.detach().cpu().contiguous()
            for name, module in self._modules().items()
            for key, value in module.state_dict().items()
        }
        meta = {
            "tasks": [t.__dict__ for t in self.tasks],
            "state_dim": self.state_dim,
            "config": to_dict(self.config),
            "seed": self.seed,
            "updates": self.updates,
        }
        save_file(tensors, str(path), metadata={"xmtf": json.dumps(meta)})

    @classmethod
    def load(cls, path: Path) -> TSHAgent:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["xmtf"])
        tasks = [TaskSpec(**t) for t in meta["tasks"]]
        agent = cls(
            tasks,
            int(meta["state_dim"]),
            from_dict(TSHConfig, meta["config"]),
            seed=int(meta["seed"]),
            fit_neutral=False,
        )
        tensors = load_file(str(path))
        for name, module in agent._modules().items():
            prefix = f"{name}."
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
        agent.updates = int(meta.get("updates", 0))
        agent.refresh_anchor()
        return agent
