"""Losses of TSH training (paper eqs. 11, 13, 14, 16, 17, 18) as small pure functions, and the
monotonicity measures (the batch violation rate and the probe grid of the audits).

Shapes: B requests, K tasks, N candidates per request; ``mask`` (B, N) marks real candidates
(requests logged with fewer candidates are padded). Pair sums of the paper are normalised by the
number of pairs that count, so the loss scale does not depend on N.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from shared.tasks import TaskSpec


def outer_stage(q_inner: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """Eq. 11: ``q_k = q^I_k (1 + a_k q^I_k)``; q_inner (B, K, N), action (B, K)."""
    return q_inner * (1.0 + action.unsqueeze(-1) * q_inner)


def fused_score(q: torch.Tensor) -> torch.Tensor:
    """Eqs. 8 / 15: ``z_i = sum_k q_ki``; (B, K, N) -> (B, N)."""
    return q.sum(dim=1)


def td_target(
    reward: torch.Tensor, done: torch.Tensor, next_q: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``r + gamma (1 - done) Q'(s', mu'(s'))``: the bootstrap target of eq. 13."""
    return reward + gamma * (1.0 - done) * next_q


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 13: mean squared TD error (target is treated as a constant)."""
    return F.mse_loss(q, target.detach())


def actor_loss(q_of_policy: torch.Tensor) -> torch.Tensor:
    """Eq. 14: the deterministic policy gradient ascends Q(s, mu(s)); we minimise -Q."""
    return -q_of_policy.mean()


def _pair_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) candidate mask -> (B, N, N) mask of pairs of real candidates."""
    m = mask.to(torch.bool)
    return m.unsqueeze(-1) & m.unsqueeze(-2)


def _pairwise_diff(z: torch.Tensor) -> torch.Tensor:
    """(B, N) scores -> (B, N, N) differences ``[b, i, j] = z_j - z_i``."""
    return z.unsqueeze(-2) - z.unsqueeze(-1)


def _ordered_pairs(z_outer: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N, N) mask of real-candidate pairs strictly ordered by the label, ``z_i < z_j``."""
    return (_pairwise_diff(z_outer) > 0) & _pair_mask(mask)


def _pair_mean(losses: torch.Tensor, ordered: torch.Tensor) -> torch.Tensor:
    return (losses * ordered).sum() / ordered.sum().clamp(min=1)


def transfer_loss(z_outer: torch.Tensor, z_inner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 16, BPR knowledge transfer: for each pair with ``z_i < z_j`` (outer-stage score, the
    label), ``-log sigmoid(z^I_j - z^I_i)``. Only pairs strictly ordered by the outer stage count.
    """
    ordered = _ordered_pairs(z_outer.detach(), mask)
    return _pair_mean(-F.logsigmoid(_pairwise_diff(z_inner)), ordered)


def soft_transfer_loss(
    z_outer: torch.Tensor, z_inner: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """A soft-label variant of eq. 16 (a documented deviation, ``TSHConfig.transfer="soft"``):
    RankNet cross-entropy of ``sigmoid((z^I_j - z^I_i) / T)`` against the soft label
    ``sigmoid((z_j - z_i) / T)`` over the same pairs (``z_i < z_j``). Its minimum is at
    ``z^I_j - z^I_i = z_j - z_i``: the inner stage absorbs the outer stage's score differences
    instead of pushing every ordered pair's margin to infinity, which with the hard 0/1 label of
    eq. 16 saturates the sigmoid MFCs into step functions even when the outer stage is the
    identity (a = 0). Normalised by the number of pairs, like :func:`transfer_loss`.
    """
    z_outer = z_outer.detach()
    label = torch.sigmoid(_pairwise_diff(z_outer) / temperature)
    logits = _pairwise_diff(z_inner) / temperature
    losses = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
    # subtract the label's entropy so the loss is 0 at the optimum (same gradients)
    entropy = F.binary_cross_entropy(label, label, reduction="none")
    return _pair_mean(losses - entropy, _ordered_pairs(z_outer, mask))


def distill_loss(q_outer: torch.Tensor, q_inner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``TSHConfig.transfer="distill"``: mean squared error of every cell's ``q^I_k`` toward the
    stop-gradient outer stage ``q_k = q^I_k (1 + a_k q^I_k)`` over the real candidates. Zero, with
    zero gradient, at ``a = 0``: the inner stage only moves where the actor asks it to."""
    m = mask.to(q_inner.dtype).unsqueeze(1)  # (B, 1, N)
    err = (q_inner - q_outer.detach()).pow(2) * m
    return err.sum() / (m.sum() * q_inner.shape[1]).clamp(min=1)


def monotonicity_loss(
    predictions: torch.Tensor, q_inner: torch.Tensor, directions: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Eq. 17 per task, (K,): for pairs with ``o_ki < o_kj``, ``max(0, q_ki - q_kj)`` for an
    increasing task (direction +1) and ``max(0, q_kj - q_ki)`` for a decreasing one (-1).
    """
    x = predictions * directions.view(1, -1, 1)  # increasing in x for both directions
    below = x.unsqueeze(-1) < x.unsqueeze(-2)  # [b, k, i, j]: x_i < x_j
    below = below & _pair_mask(mask).unsqueeze(1)
    violation = F.relu(q_inner.unsqueeze(-1) - q_inner.unsqueeze(-2))  # q_i - q_j
    n_pairs = below.sum(dim=(0, 2, 3)).clamp(min=1)
    return (violation * below).sum(dim=(0, 2, 3)) / n_pairs


class _MonotonicityPairs(torch.autograd.Function):
    """Eq. 17 per task and its violation rate from boolean pair counts only.

    For the pairs ``below[i, j]`` (``x_i < x_j``, both real) that violate (``q_i > q_j``),
    ``sum relu(q_i - q_j) = sum_i q_i (r_i - c_i)`` with ``r_i`` / ``c_i`` the violating pairs in
    which candidate i comes first / second; ``(r - c) / n_pairs`` is also the exact gradient.
    So no float (B, K, N, N) tensor is built or kept for the backward pass.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, q: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # 0/1 masks written as floats: several times faster on CPU than bool masks + casts
        q = q.contiguous()  # a strided view compares several times slower
        shape = (*q.shape, q.shape[-1])
        below = torch.lt(x.unsqueeze(-1), x.unsqueeze(-2), out=q.new_empty(shape))  # NaN: 0
        counted = below.sum(dim=(0, 2, 3))
        n_pairs = counted.clamp(min=1)
        against = torch.gt(q.unsqueeze(-1), q.unsqueeze(-2), out=q.new_empty(shape)).mul_(below)
        first = against.sum(-1)  # (B, K, N): r, small integers
        net = first - against.sum(-2)  # r - c
        loss = (q.double() * net.double()).sum(dim=(0, 2)) / n_pairs.double()
        ctx.save_for_backward(net / n_pairs.view(1, -1, 1))
        violations = first.sum() / counted.sum().clamp(min=1)
        ctx.mark_non_differentiable(violations)
        return loss.to(q.dtype), violations

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor, _: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        (coef,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return coef * grad.view(1, -1, 1), None


def monotonicity_loss_and_violations(
    predictions: torch.Tensor, q_inner: torch.Tensor, directions: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`monotonicity_loss` (K,) and :func:`violation_rate` (a 0-d tensor, no gradient)
    in one pass over the pairs, with the same values and gradients (up to float rounding):
    the training path's version of the two."""
    x = predictions * directions.view(1, -1, 1)
    x = torch.where(mask.to(torch.bool).unsqueeze(1), x, torch.nan)
    loss, violations = _MonotonicityPairs.apply(q_inner, x)
    return loss, violations


def inner_loss(mono_per_task: torch.Tensor, transfer: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 18: ``lambda sum_k L^mono_k + (1 - lambda) L^transfer``."""
    return lam * mono_per_task.sum() + (1.0 - lam) * transfer


# -------------------------------------------------------------------------------- monotonicity
@torch.no_grad()
def violation_rate(
    predictions: torch.Tensor, q_inner: torch.Tensor, directions: torch.Tensor, mask: torch.Tensor
) -> float:
    """Share of candidate pairs ordered by a prediction (in the task's direction) whose inner
    outputs are strictly in the opposite order: the monotonicity violation rate of eq. 17."""
    x = predictions * directions.view(1, -1, 1)
    m = mask.to(torch.bool)
    pairs = (m.unsqueeze(-1) & m.unsqueeze(-2)).unsqueeze(1)
    below = (x.unsqueeze(-1) < x.unsqueeze(-2)) & pairs
    against = below & (q_inner.unsqueeze(-1) > q_inner.unsqueeze(-2))
    return float(against.sum()) / max(int(below.sum()), 1)


def probe_grid(tasks: Sequence[TaskSpec], grid: int) -> np.ndarray:
    """(K, G) float32: ``grid`` evenly spaced points over each task's ``[low, high]``.

    The monotonicity probes of the export audit, the study's metric and the plots all use it.
    """
    lo = np.array([t.low for t in tasks], np.float32)[:, None]
    hi = np.array([t.high for t in tasks], np.float32)[:, None]
    return (lo + (hi - lo) * np.linspace(0.0, 1.0, grid, dtype=np.float32)[None, :]).astype(
        np.float32
    )


def grid_violations(
    q: np.ndarray, tasks: Sequence[TaskSpec], tolerance: float = 1e-6
) -> np.ndarray:
    """(..., K, G - 1) bool: adjacent probe-grid steps where a cell's output ``q (..., K, G)``
    moves against its task's direction by more than ``tolerance``."""
    direction = np.array([t.direction for t in tasks], np.float32)[:, None]
    return direction * np.diff(q, axis=-1) < -tolerance
