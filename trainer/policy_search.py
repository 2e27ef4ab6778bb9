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

The inner stage (the MFCs) stays as initialised: this outer stage learns with the inner frozen
(the first block of block-wise TSH). The searched policy is written into the agent's actor MLP
exactly (:func:`write_linear_actor`), so checkpoints, export and the scorer are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

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

    def __post_init__(self) -> None:
        if self.pairs < 1 or self.sessions < 1 or self.val_sessions < 0:
            raise ValueError("policy search needs pairs, sessions >= 1 and val_sessions >= 0")
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
    updated, so the inner stage stays xMTF's as initialised.
    """

    def __init__(self, agent: TSHAgent, config: PolicySearchConfig, seed: int) -> None:
        self.agent = agent
        cfg = agent.config
        self.low, self.high = cfg.action_low, cfg.action_high
        self.offset = neutral_preimage(self.low, self.high)
        shape = (len(agent.tasks), 1 + agent.state_dim)
        self.es = EvolutionStrategy(shape, config, seed)
        self.mu, self.sd = np.zeros(agent.state_dim), np.ones(agent.state_dim)
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

    def candidate_fn(self, theta: np.ndarray) -> ScoreFn:
        """The greedy ranking of the policy ``theta`` (the agent's inner stage)."""
        agent = self.agent

        def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
            x = (self._agent_state(state) - self.mu) / self.sd
            action = linear_actions(theta, x, self.low, self.high, self.offset)
            return agent.scores(state, predictions, action)

        return score

    def iterate(self, sim: UserSimulator, users_seed: int) -> dict[str, float]:
        """One ES iteration on ``sim``, every candidate on the users of ``users_seed``."""
        sessions = self.es.config.sessions

        def objective(thetas: np.ndarray) -> np.ndarray:
            return np.array(
                [
                    evaluate(sim, self.candidate_fn(t), sessions, users_seed).returns.mean()
                    for t in thetas
                ]
            )

        metrics = self.es.step(objective)
        write_linear_actor(self.agent.actor, self.es.theta, self.offset, self.mu, self.sd)
        return metrics

    def score_fn(self) -> ScoreFn:
        return policy_score_fn(self.agent)
