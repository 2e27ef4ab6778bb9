"""Networks of xMTF: the bank of K monotonic fusion cells, the actor and the critic.

All K MFCs are evaluated in one batched pass. The first layer of cell k is
``W_o,k * x_k + W_s,k s + b_k``: its state part depends only on the request, so it is computed
once per request (one matmul for all K cells) and broadcast over the N candidates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from shared.tasks import TaskSpec


class RunningNorm(nn.Module):
    """Running mean/variance observation normaliser (the paper's "normalised observations")."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros(()))
        self.clip = clip
        self.eps = eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch (B, dim) into the running moments (parallel Welford)."""
        if x.shape[0] == 0:
            return
        b_mean = x.mean(0)
        b_var = x.var(0, unbiased=False)
        b_count = float(x.shape[0])
        total = self.count + b_count
        delta = b_mean - self.mean
        self.mean += delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta.pow(2) * self.count * b_count / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + self.eps)).clamp(-self.clip, self.clip)


class MFCBank(nn.Module):
    """K monotonic fusion cells ``q^I_k = h^I_k(o_k, s)`` evaluated together.

    ``forward(state_n (B, D), predictions (B, K, N)) -> q_inner (B, K, N)`` in (0, 1). Raw
    predictions are normalised per task, ``x = direction * (o - offset) / scale``, so every cell
    is meant to be increasing in ``x``. With ``monotone=True`` the weights on the prediction path
    are made non-negative (softplus) and the activations are monotone, so each cell is increasing
    in ``x`` by construction; otherwise the monotonicity loss (eq. 17) keeps it so.
    """

    direction: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        state_dim: int,
        hidden: Sequence[int] = (32, 32),
        monotone: bool = False,
    ) -> None:
        super().__init__()
        k = len(tasks)
        self.n_tasks = k
        self.hidden = tuple(hidden)
        self.monotone = monotone
        self.register_buffer("direction", torch.tensor([float(t.direction) for t in tasks]))
        self.register_buffer("offset", torch.tensor([t.offset for t in tasks]))
        self.register_buffer("scale", torch.tensor([t.scale for t in tasks]))
        h0 = self.hidden[0]
        self.w_pred = nn.Parameter(torch.empty(k, h0))
        self.state_proj = nn.Linear(state_dim, k * h0)
        dims = [*self.hidden, 1]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(k, d_in, d_out)) for d_in, d_out in itertools.pairwise(dims)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(k, 1, d_out)) for d_out in dims[1:])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.w_pred, 0.5, 2.0)
        for w in self.weights:
            if self.monotone:  # softplus(w) in (0.13, 0.69): positive, moderate slopes
                nn.init.uniform_(w, -2.0, 0.0)
            else:
                bound = 1.0 / math.sqrt(w.shape[1])
                nn.init.uniform_(w, -bound, bound)

    def _path(self, w: torch.Tensor) -> torch.Tensor:
        return F.softplus(w) if self.monotone else w

    def normalise(self, predictions: torch.Tensor) -> torch.Tensor:
        """Raw predictions (B, K, N) -> direction-adjusted normalised inputs x."""
        return self.direction[:, None] * (predictions - self.offset[:, None]) / self.scale[:, None]

    def forward(self, state_n: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        b, k, _ = predictions.shape
        x = self.normalise(predictions).unsqueeze(-1)  # (B, K, N, 1)
        state_part = self.state_proj(state_n).view(b, k, 1, self.hidden[0])  # once per request
        h = torch.tanh(x * self._path(self.w_pred)[None, :, None, :] + state_part)
        n_layers = len(self.weights)
        for i, (w, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ self._path(w)[None] + bias[None]
            if i < n_layers - 1:
                h = torch.tanh(h)
        return torch.sigmoid(h.squeeze(-1))

    def forward_task_major(self, state_n: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s maths laid out task-major, ``(K, B*N, H)``: each layer is one
        batched matmul per task (K GEMMs of B*N rows) instead of B*K small ones, and the
        weight gradients need no reduction over broadcast copies. Training and scoring use it;
        :meth:`forward` stays the exported graph. Returns a (B, K, N) view."""
        b, k, n = predictions.shape
        h0 = self.hidden[0]
        x = self.normalise(predictions).transpose(0, 1).contiguous().unsqueeze(-1)  # (K, B, N, 1)
        state_part = self.state_proj(state_n).view(b, k, 1, h0).transpose(0, 1)  # (K, B, 1, H)
        w_pred = self._path(self.w_pred).view(k, 1, 1, h0)
        h = torch.tanh(torch.addcmul(state_part, x, w_pred)).reshape(k, b * n, h0)
        n_layers = len(self.weights)
        for i, (w, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(bias, h, self._path(w))
            if i < n_layers - 1:
                h = torch.tanh(h)
        return torch.sigmoid(h.view(k, b, n)).transpose(0, 1)


def mlp(in_dim: int, hidden: int, out_dim: int, n_layers: int = 5) -> nn.Sequential:
    """An ``n_layers``-layer MLP (n_layers linear layers, ReLU between them)."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_layers - 1):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def neutral_preimage(low: float, high: float, neutral: float = 0.0) -> float:
    """The pre-squash output whose :class:`Actor` action is ``neutral`` (clipped inside tanh's
    range): the actor's initial bias."""
    y = 2.0 * (neutral - low) / (high - low) - 1.0
    return math.atanh(max(min(y, 0.999), -0.999))


class Actor(nn.Module):
    """Deterministic policy ``a = mu(s)``: K outer-stage scalars inside [low, high]."""

    low: torch.Tensor
    high: torch.Tensor

    def __init__(
        self,
        state_dim: int,
        n_tasks: int,
        hidden: int,
        low: float,
        high: float,
        neutral: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = mlp(state_dim, hidden, n_tasks)
        self.register_buffer("low", torch.tensor(float(low)))
        self.register_buffer("high", torch.tensor(float(high)))
        # Start near the neutral action (plain sum of the inner stage): small last layer, bias at
        # the pre-image of `neutral` under the squashing below.
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.fill_(neutral_preimage(low, high, neutral))

    def forward(self, state_n: torch.Tensor) -> torch.Tensor:
        a = self.low + (self.high - self.low) * 0.5 * (torch.tanh(self.net(state_n)) + 1.0)
        # float32 rounding can land one ulp outside the bounds when tanh saturates
        return torch.clamp(a, self.low, self.high)


class Critic(nn.Module):
    """``Q(s, a)``; the action enters rescaled to [-1, 1]."""

    a_mid: torch.Tensor
    a_half: torch.Tensor

    def __init__(self, state_dim: int, n_tasks: int, hidden: int, low: float, high: float) -> None:
        super().__init__()
        self.net = mlp(state_dim + n_tasks, hidden, 1)
        self.register_buffer("a_mid", torch.tensor((low + high) / 2.0))
        self.register_buffer("a_half", torch.tensor((high - low) / 2.0))

    def forward(self, state_n: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        a = (action - self.a_mid) / self.a_half
        return self.net(torch.cat([state_n, a], dim=-1)).squeeze(-1)
