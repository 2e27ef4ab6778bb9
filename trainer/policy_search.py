"""A policy-search outer stage for xMTF: evolution strategies over a state-linear actor.

The paper calls the RL algorithm of the outer stage orthogonal to its contribution (section 4).
The actor-critic outer stage learns from one-step TD targets whose action effects (~7 s per unit
action) sit below their noise at study budgets (issue 12). This outer stage instead searches the
actor's parameters directly on *session returns*, the metric itself:

* the policy is ``a(s) = squash(c + V x)`` with ``x`` the state standardised by moments fixed
  at the start, ``c`` (K) and ``V`` (K x D); ``squash`` is the actor's own map onto
  [action_low, action_high], so ``theta = 0`` is the neutral action and the untrained model;
* each iteration draws antithetic pairs ``theta +- sigma * eps``; both members of a pair and
  every pair of the iteration rank the *same* users (common random numbers), so a pair's
  difference carries the action's effect without the users' variance;
* the gradient estimate is the OpenAI-ES one with centred-rank fitness shaping, followed by
  Adam (Salimans et al. 2017).

By default the inner stage (the MFCs) stays as initialised: the outer stage learns with the
inner frozen. With ``block_iterations = n > 0`` the search is block-wise TSH: every n iterations
the searched policy is distilled into the cells (:func:`distill_targets`), the search re-centres
at ``theta = 0`` and goes on from the distilled fusion. The outer stage alone can tilt a task's
weight by at most ``1 + 2 a q`` (a <= 1.5); block after block the cells absorb one tilt on top
of the last, which is how the paper's inner stage gains its expressiveness ("the outer stage
continuously adjusts the inner stage's output ... while the inner stage absorbs new
knowledge"), here one searched block at a time instead of after every update (the study's
guard still looks only at each budget).
The searched policy is written into the agent's actor MLP exactly (:func:`write_linear_actor`),
so checkpoints, export and the scorer are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from shared.fusion import top_n_indices
from trainer import losses
from trainer.loop import AgentLearner, ScoreFn, policy_score_fn
from trainer.networks import Actor, neutral_preimage
from trainer.sim import UserSimulator, evaluate
from trainer.tsh import TSHAgent, to_tensor


@dataclass(frozen=True)
class PolicySearchConfig:
    """Evolution strategies over ``theta = [c | V]`` (K x (1 + D))."""

    pairs: int = 8  # antithetic pairs per iteration (2 x pairs candidates)
    sessions: int = 32  # sessions per candidate, the same users for every candidate (CRN)
    sigma_bias: float = 0.5  # perturbation std of c (pre-squash action units)
    sigma_state: float = 0.05  # perturbation std of V (per unit of standardised state)
    lr: float = 0.1  # Adam step on theta
    personalise: bool = True  # False: search c only (a constant action, no personalisation)
    # One validation look just before each budget is reached (the search's last iterate is its
    # candidate), on ``val_sessions`` validation users (0: the study's ``train.val_sessions``):
    # fewer, larger looks than the online learners' periodic ones, so a smaller gain can clear
    # the guard's 95 % bound.
    val_sessions: int = 1000
    # Block-wise TSH: distil the searched policy into the cells every ``block_iterations``
    # iterations and re-centre the search (0: never, the inner stage stays as initialised).
    block_iterations: int = 0
    distill_steps: int = 300  # Adam steps on the cells per distillation
    distill_lr: float = 1e-3
    distill_batch: int = 128  # requests per distillation step (all their candidates)
    distill_requests: int = 8192  # the latest requests of the search kept as distillation data
    # Global warm start: a share ``warm_share`` of the last budget searches one global weight
    # vector of the linear formula on the cells' own (calibrated) inputs by CEM (candidates
    # scored on ``warm_sessions`` common users each), which is then distilled into the cells
    # (:func:`formula_targets`); ES searches the personalised outer stage from there (0: no
    # warm start). The study runs it as ``xmtf_es_warm``.
    warm_share: float = 0.0
    warm_sessions: int = 32

    def __post_init__(self) -> None:
        if self.pairs < 1 or self.sessions < 1 or self.val_sessions < 0:
            raise ValueError("policy search needs pairs, sessions >= 1 and val_sessions >= 0")
        if self.block_iterations < 0:
            raise ValueError("block_iterations must be >= 0 (0: no distillation)")
        if not 0.0 <= self.warm_share < 1.0 or self.warm_sessions < 1:
            raise ValueError("warm_share must be in [0, 1) (0: no warm start), warm_sessions >= 1")
        if min(self.distill_steps, self.distill_batch, self.distill_requests) < 1:
            raise ValueError("distill_steps, distill_batch and distill_requests must be >= 1")
        if not self.distill_lr > 0:
            raise ValueError("distill_lr must be > 0")
        if not (self.sigma_bias > 0 and self.sigma_state > 0 and self.lr > 0):
            raise ValueError("sigma_bias, sigma_state and lr must be > 0")


def squash(y: np.ndarray, low: float, high: float) -> np.ndarray:
    """The actor's output map: pre-squash ``y`` onto ``[low, high]`` (``Actor.forward``)."""
    return low + (high - low) * 0.5 * (np.tanh(y) + 1.0)


def linear_actions(
    theta: np.ndarray, state_n: np.ndarray, low: float, high: float, offset: float
) -> np.ndarray:
    """Actions (B, K) of ``theta`` (K, 1 + D) for normalised states (B, D): ``offset`` is the
    neutral pre-image, so ``theta = 0`` gives the neutral action for every state."""
    y = offset + theta[:, 0][None, :] + state_n @ theta[:, 1:].T
    return np.clip(squash(y, low, high), low, high).astype(np.float32)


@torch.no_grad()
def write_linear_actor(
    actor: Actor, theta: np.ndarray, offset: float, mu: np.ndarray, sd: np.ndarray
) -> None:
    """Set the actor MLP so that ``actor(z) == squash(offset + c + V x)`` with
    ``x = (z - mu) / sd``, exactly.

    The first layer writes ``[x, -x]`` into 2D hidden units, the middle layers pass them
    through (ReLU of a non-negative value is itself), and the last layer forms
    ``V (relu(x) - relu(-x)) + c = V x + c``. Needs a hidden width of at least 2D.
    """
    linears = [m for m in actor.net if isinstance(m, torch.nn.Linear)]
    d = linears[0].in_features
    k = linears[-1].out_features
    if theta.shape != (k, 1 + d):
        raise ValueError(f"theta must be ({k}, {1 + d}), got {theta.shape}")
    if linears[0].out_features < 2 * d:
        raise ValueError(f"the actor's hidden width must be >= {2 * d} to hold a linear policy")
    scale = torch.diag(torch.as_tensor(1.0 / sd, dtype=torch.float32))
    shift = torch.as_tensor(-mu / sd, dtype=torch.float32)
    for i, layer in enumerate(linears):
        layer.weight.zero_()
        layer.bias.zero_()
        if i == 0:
            layer.weight[:d, :] = scale
            layer.weight[d : 2 * d, :] = -scale
            layer.bias[:d] = shift
            layer.bias[d : 2 * d] = -shift
        elif i < len(linears) - 1:
            layer.weight[: 2 * d, : 2 * d] = torch.eye(2 * d)
    v = torch.as_tensor(theta[:, 1:], dtype=torch.float32)
    linears[-1].weight[:, :d] = v
    linears[-1].weight[:, d : 2 * d] = -v
    linears[-1].bias.copy_(torch.as_tensor(offset + theta[:, 0], dtype=torch.float32))


#: Distillation targets are scaled to at most this (the sigmoid cells' comfortable range).
TARGET_CEILING = 0.98


def distill_targets(q_inner: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The cells' targets when the policy ``action`` (B, K) is distilled into them: the outer
    stage ``q (1 + a q)`` of their current outputs ``q_inner`` (B, K, N), divided by one common
    scale ``c >= 1`` that brings the largest target to :data:`TARGET_CEILING`. A common positive
    scale keeps every request's ranking by the summed score, so the distilled cells at ``a = 0``
    rank as the policy did; the sigmoid cells can only reach values in (0, 1). Returns
    ``(targets, c)``."""
    target = losses.outer_stage(q_inner, action)
    scale = max(1.0, float(target.max()) / TARGET_CEILING)
    return target / scale, scale


#: The warm start's scale maps this quantile of each task's formula targets to
#: :data:`TARGET_CEILING`; the rarer, larger values saturate at :data:`TARGET_CLIP`.
TARGET_QUANTILE = 0.99
TARGET_CLIP = 0.995


def formula_targets(
    x: torch.Tensor, log_weights: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The cells' targets when the linear formula ``z = sum_k w_k x_k`` (``w = exp(log_weights)``)
    on the cells' own inputs ``x`` (B, K, N) is distilled into them:
    ``min(w_k (x_k - floor_k) / c, TARGET_CLIP)``. The per-task shift ``floor_k``, the task's
    smallest input in ``x``, moves every candidate of a request alike, and one common scale
    ``c >= 1`` keeps the tasks' relative weights, so the summed targets rank each request as
    the formula does, except that the extreme values of a task saturate: ``c`` brings the
    largest per-task :data:`TARGET_QUANTILE` quantile to :data:`TARGET_CEILING` (the sigmoid
    cells reach only (0, 1); a scale set by the maximum would let one rare task's outlier,
    ~70 standard deviations out, squeeze every other value towards 0). Returns
    ``(targets, formula scores (B, N), c)``."""
    w = torch.as_tensor(np.exp(log_weights), dtype=x.dtype, device=x.device).view(1, -1, 1)
    floor = x.amin(dim=(0, 2)).view(1, -1, 1)
    target = w * (x - floor)
    per_task = target.transpose(0, 1).reshape(target.shape[1], -1).cpu().numpy()
    top = float(np.quantile(per_task, TARGET_QUANTILE, axis=1).max())
    scale = max(1.0, top / TARGET_CEILING)
    return (target / scale).clamp(max=TARGET_CLIP), (w * x).sum(dim=1), scale


def top_n_overlap(before: np.ndarray, after: np.ndarray, n: int) -> float:
    """Mean share of each request's top ``n`` by ``before`` (U, C) that is in its top ``n`` by
    ``after``: 1.0 when the two rank the shown slate alike."""
    a, b = top_n_indices(before, n), top_n_indices(after, n)
    hits = (a[:, :, None] == b[:, None, :]).any(axis=2)
    return float(hits.mean())


def centred_ranks(values: np.ndarray) -> np.ndarray:
    """Fitness shaping: ranks mapped onto [-0.5, 0.5] (ties share no rank; order is stable)."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values) - 1, 1) - 0.5


class Adam:
    """Adam on a numpy parameter array (ascent)."""

    def __init__(self, shape: tuple[int, ...], lr: float, b1: float = 0.9, b2: float = 0.999):
        self.lr, self.b1, self.b2 = lr, b1, b2
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = 0

    def step(self, grad: np.ndarray) -> np.ndarray:
        """The ascent step for ``grad``."""
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad**2
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def sigma_of(shape: tuple[int, int], config: PolicySearchConfig) -> np.ndarray:
    """Per-parameter perturbation std: ``sigma_bias`` on c, ``sigma_state`` on V (0 when the
    search is not personalised)."""
    sigma = np.full(shape, config.sigma_state if config.personalise else 0.0)
    sigma[:, 0] = config.sigma_bias
    return sigma


def es_gradient(eps: np.ndarray, values_plus: np.ndarray, values_minus: np.ndarray) -> np.ndarray:
    """OpenAI-ES gradient in units of ``eps``: ``sum_i (r+_i - r-_i) eps_i / n`` with the
    returns of all 2n candidates replaced by their centred ranks."""
    shaped = centred_ranks(np.concatenate([values_plus, values_minus]))
    n = len(values_plus)
    weights = shaped[:n] - shaped[n:]
    return np.tensordot(weights, eps, axes=1) / n


class EvolutionStrategy:
    """One ES search over ``theta`` (K x (1 + D)), starting at 0 (the neutral action)."""

    def __init__(self, shape: tuple[int, int], config: PolicySearchConfig, seed: int) -> None:
        self.config = config
        self.theta = np.zeros(shape)
        self.sigma = sigma_of(shape, config)
        self.adam = Adam(shape, config.lr)
        self.rng = np.random.default_rng(seed)
        self.iterations = 0

    def recentre(self) -> None:
        """Start afresh at ``theta = 0`` (after the policy was distilled into the cells)."""
        self.theta = np.zeros_like(self.theta)
        self.adam = Adam(self.theta.shape, self.config.lr)

    def step(self, objective: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
        """One iteration: ``objective(thetas (2n, K, 1 + D)) -> mean session returns (2n,)`` on
        common users; moves ``theta`` and returns the iteration's metrics."""
        n = self.config.pairs
        eps = self.rng.standard_normal((n, *self.theta.shape))
        delta = eps * self.sigma
        values = np.asarray(objective(np.concatenate([self.theta + delta, self.theta - delta])))
        plus, minus = values[:n], values[n:]
        grad = es_gradient(eps, plus, minus) * (self.sigma > 0)
        # the step is taken in sigma units, so c and V move on their own scales
        self.theta = self.theta + self.adam.step(grad) * (self.sigma / self.config.sigma_bias)
        self.iterations += 1
        return {
            "iteration": float(self.iterations),
            "population_mean": float(values.mean()),
            "pair_diff_abs": float(np.abs(plus - minus).mean()),
            "theta_bias_abs": float(np.abs(self.theta[:, 0]).mean()),
            "theta_state_abs": float(np.abs(self.theta[:, 1:]).mean()),
        }


class PolicySearchLearner(AgentLearner):
    """xMTF whose outer stage is searched by :class:`EvolutionStrategy` on session returns.

    The policy standardises the state with moments fixed once by :meth:`start` (moving ones
    would change what ``theta`` means between iterations); the agent's own normaliser is never
    updated. Without blocks the inner stage stays xMTF's as initialised; with
    ``block_iterations`` the requests the search ranked are kept and the policy is distilled
    into the cells at the end of every block (:meth:`distill`).
    """

    #: the first candidates of every iteration whose requests are kept for distillation
    RECORDED_CANDIDATES = 2

    def __init__(self, agent: TSHAgent, config: PolicySearchConfig, seed: int) -> None:
        self.agent = agent
        cfg = agent.config
        self.low, self.high = cfg.action_low, cfg.action_high
        self.offset = neutral_preimage(self.low, self.high)
        shape = (len(agent.tasks), 1 + agent.state_dim)
        self.es = EvolutionStrategy(shape, config, seed)
        self.seed = seed
        self.mu, self.sd = np.zeros(agent.state_dim), np.ones(agent.state_dim)
        self.blocks = 0  # distillations done
        self._requests: list[tuple[np.ndarray, np.ndarray]] = []
        write_linear_actor(agent.actor, self.es.theta, self.offset, self.mu, self.sd)

    def start(self, states: np.ndarray) -> None:
        """Fix the policy's standardisation of the state on a sample of states. The agent's own
        normaliser is left as it is, so the inner stage is exactly xMTF's as initialised."""
        z = self._agent_state(states)
        self.mu, self.sd = z.mean(0), z.std(0) + 1e-3
        write_linear_actor(self.agent.actor, self.es.theta, self.offset, self.mu, self.sd)

    def _agent_state(self, states: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.agent._state(to_tensor(states, self.agent.device)).cpu().numpy()

    def _actions(self, theta: np.ndarray, states: np.ndarray) -> np.ndarray:
        x = (self._agent_state(states) - self.mu) / self.sd
        return linear_actions(theta, x, self.low, self.high, self.offset)

    def candidate_fn(self, theta: np.ndarray, record: bool = False) -> ScoreFn:
        """The greedy ranking of the policy ``theta`` (the agent's inner stage); with ``record``
        the requests it ranks are kept as distillation data."""
        agent = self.agent

        def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
            return agent.scores(state, predictions, self._actions(theta, state))

        return self.recording(score) if record else score

    def recording(self, fn: ScoreFn) -> ScoreFn:
        """``fn``, keeping the requests it ranks as distillation data (the latest
        ``distill_requests`` of them)."""

        def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
            self._keep(state, predictions)
            return fn(state, predictions)

        return score

    def _keep(self, state: np.ndarray, predictions: np.ndarray) -> None:
        self._requests.append((state.astype(np.float32), predictions.astype(np.float32)))
        limit = self.es.config.distill_requests
        while sum(len(s) for s, _ in self._requests) - len(self._requests[0][0]) >= limit:
            self._requests.pop(0)

    def iterate(self, sim: UserSimulator, users_seed: int) -> dict[str, float]:
        """One ES iteration on ``sim``, every candidate on the users of ``users_seed``; at the
        end of a block, the distillation of the searched policy into the cells."""
        config = self.es.config
        blocks = config.block_iterations > 0

        def objective(thetas: np.ndarray) -> np.ndarray:
            returns = []
            for i, t in enumerate(thetas):
                fn = self.candidate_fn(t, record=blocks and i < self.RECORDED_CANDIDATES)
                returns.append(evaluate(sim, fn, config.sessions, users_seed).returns.mean())
            return np.array(returns)

        metrics = self.es.step(objective)
        if blocks and self.es.iterations % config.block_iterations == 0:
            metrics |= self.distill(sim.config.top_n)
        write_linear_actor(self.agent.actor, self.es.theta, self.offset, self.mu, self.sd)
        return metrics

    def distill(self, top_n: int) -> dict[str, float]:
        """Distil the searched policy into the cells on the kept requests, then re-centre the
        search at ``theta = 0``: the fusion at a = 0 is now (close to) the searched policy.
        The targets are :func:`distill_targets` of the cells as they are."""
        data = self._kept()
        if data is None:
            return {}
        states, state_n, preds = data
        action = to_tensor(self._actions(self.es.theta, states), self.agent.device)
        with torch.no_grad():
            targets, scale = distill_targets(self._cells(state_n, preds), action)
            policy_scores = losses.fused_score(targets) * scale  # the policy's fused scores
        return self._fit_cells(state_n, preds, targets, policy_scores, top_n) | {
            "distill_scale": scale
        }

    def distill_formula(self, log_weights: np.ndarray, top_n: int) -> dict[str, float]:
        """Distil the global linear formula of ``log_weights`` on the cells' inputs into the
        cells (the warm start, :attr:`PolicySearchConfig.warm_share`) on the kept requests,
        then re-centre the search: xMTF at ``a = 0`` now ranks (close to) as the formula."""
        data = self._kept()
        if data is None:
            return {}
        _, state_n, preds = data
        with torch.no_grad():
            x = self.agent.mfc.normalise(preds)
            targets, scores, scale = formula_targets(x, log_weights)
        return self._fit_cells(state_n, preds, targets, scores, top_n) | {"distill_scale": scale}

    def _kept(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor] | None:
        """The kept requests as (raw states, normalised states, predictions); emptied."""
        if not self._requests:
            return None
        device = self.agent.device
        states = np.concatenate([s for s, _ in self._requests])
        preds = to_tensor(np.concatenate([p for _, p in self._requests]), device)
        self._requests = []
        return states, self.agent._state(to_tensor(states, device)), preds

    def _fit_cells(
        self,
        state_n: torch.Tensor,
        preds: torch.Tensor,
        targets: torch.Tensor,
        policy_scores: torch.Tensor,
        top_n: int,
    ) -> dict[str, float]:
        """Regress the cells onto ``targets`` (MSE, :func:`losses.distill_loss`) with the
        monotonicity loss of eq. 18 beside it, then re-centre the search. A tenth of the
        requests is held out to measure how faithfully: the share of the top ``top_n`` by
        ``policy_scores`` (B, N) that the distilled cells keep."""
        agent, config = self.agent, self.es.config
        n = len(state_n)
        held = max(1, n // 10)
        train = n - held
        mask = torch.ones(preds.shape[0], preds.shape[2], dtype=torch.bool, device=agent.device)
        opt = torch.optim.Adam(agent.mfc.parameters(), lr=config.distill_lr)
        rng = np.random.default_rng([self.seed, self.blocks])
        step: dict[str, float] = {}
        for _ in range(config.distill_steps):
            idx = torch.as_tensor(rng.integers(0, max(train, 1), config.distill_batch))
            q = agent.mfc.forward_task_major(state_n[idx], preds[idx])
            transfer = losses.distill_loss(targets[idx], q, mask[idx])
            step = agent.inner_step(preds[idx], q, mask[idx], transfer, optimizer=opt)
        with torch.no_grad():
            distilled = losses.fused_score(self._cells(state_n[train:], preds[train:]))
        overlap = top_n_overlap(policy_scores[train:].cpu().numpy(), distilled.cpu().numpy(), top_n)
        self.blocks += 1
        self.es.recentre()
        return {
            "distill_block": float(self.blocks),
            "distill_mse": step.get("transfer_loss", float("nan")),
            "distill_mono_violation": step.get("mono_violation", float("nan")),
            "distill_top_n_overlap": overlap,
        }

    def _cells(self, state_n: torch.Tensor, preds: torch.Tensor, chunk: int = 512) -> torch.Tensor:
        """The cells' outputs (B, K, N) in chunks of requests (bounded memory)."""
        return torch.cat(
            [
                self.agent.mfc.forward_task_major(state_n[i : i + chunk], preds[i : i + chunk])
                for i in range(0, len(state_n), chunk)
            ]
        )

    def score_fn(self) -> ScoreFn:
        return policy_score_fn(self.agent)
