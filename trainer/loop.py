"""THE collect -> store -> learn loop against the simulator, for any learner.

Read top to bottom like CleanRL's ``td3_continuous_action.py``: every step collects one request
per concurrent simulated user (with exploration), stores the transitions, and learns
(for xMTF: critic -> actor -> inner stage -> target sync, inside ``TSHAgent.update``).
``xmtf-train simulate`` (:mod:`trainer.simulate`) and the offline study
(:mod:`trainer.study`) both drive it; a :class:`Learner` is what it drives.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from trainer.replay import ReplayBuffer
from trainer.sim import Observation, StepResult, UserSimulator
from trainer.tsh import TSHAgent

#: ``score_fn(state (U, D), predictions (U, K, C)) -> scores (U, C)``: a ranking policy.
ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: ``on_step(step, result, metrics)``: called after every collection step (1-based step);
#: returning True stops the loop there (e.g. a budget is spent).
StepHook = Callable[[int, StepResult, dict[str, float]], bool | None]


@dataclass(frozen=True)
class TrainConfig:
    """The outer loop: how much to collect and train, and how to evaluate."""

    seed: int = 0
    n_users: int = 256  # concurrent simulated users while collecting
    total_steps: int = 400  # collection steps (each adds n_users transitions)
    learning_starts: int = 2048  # transitions in the replay buffer before updates begin
    updates_per_step: int = 4
    replay_capacity: int = 200_000
    replay_candidates: int = 32
    eval_every: int = 100  # steps
    eval_sessions: int = 1000
    eval_seed: int = 12345
    # checkpoint selection on validation users (trainer.selection): every `select_every` steps
    # (0: off, the last iterate is kept), `val_sessions` users of seed `val_seed`
    select_every: int = 50
    val_sessions: int = 1000
    val_seed: int = 20_000
    # the chosen checkpoint's confirmation test on fresh users of seed val_seed + 1 (0: none;
    # trainer.selection): guards against a checkpoint that cleared one of many looks by luck
    confirm_sessions: int = 1000

    def __post_init__(self) -> None:
        if self.select_every < 0 or self.val_sessions < 1:
            raise ValueError("select_every must be >= 0 and val_sessions >= 1")
        if self.confirm_sessions < 0:
            raise ValueError("confirm_sessions must be >= 0 (0: no confirmation test)")
        if self.confirm_sessions and self.val_seed + 1 == self.eval_seed:
            raise ValueError(
                "TrainConfig.val_seed + 1 (the confirmation users) equals eval_seed: the "
                "confirmation test would use the evaluation users"
            )
        if self.select_every and self.val_seed == self.eval_seed:
            raise ValueError(
                "TrainConfig.val_seed equals eval_seed: checkpoints would be chosen on the "
                "evaluation users"
            )


class Learner(Protocol):
    """What the loop drives (collect -> store -> learn)."""

    def act(self, state: np.ndarray, preds: np.ndarray, explore: bool) -> np.ndarray:
        """Scores (U, N) for raw states (U, D) and predictions (U, K, N)."""
        ...

    def record(self, obs: Observation, preds: np.ndarray, res: StepResult) -> None: ...

    def ready(self, learning_starts: int) -> bool: ...

    def learn(self) -> dict[str, float]: ...

    def score_fn(self) -> ScoreFn: ...

    def save(self, path: Path) -> None: ...

    def snapshot(self) -> Any:
        """A copy of the model (for checkpoint selection)."""
        ...

    def restore(self, snapshot: Any) -> None:
        """Put a :meth:`snapshot` back (the replay and the environment are untouched)."""
        ...


def policy_score_fn(agent: TSHAgent) -> ScoreFn:
    """Greedy (no exploration) xMTF ranking as a simulator ``score_fn``."""

    def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
        action, _ = agent.act(state, explore=False)
        return agent.scores(state, predictions, action)

    return score


def plain_sum_score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """The neutral baseline: rank by the plain sum of the (U, K, C) predictions."""
    return predictions.sum(axis=1)


class AgentLearner:
    """The part every learner of the study shares: its model is ``self.agent``."""

    agent: Any

    def save(self, path: Path) -> None:
        self.agent.save(path)

    def snapshot(self) -> Any:
        return copy.deepcopy(self.agent)

    def restore(self, snapshot: Any) -> None:
        self.agent = snapshot


class TSHLearner(AgentLearner):
    """xMTF (and its flag variants) behind the :class:`Learner` protocol.

    With ``exploration_noise="session"`` every user slot keeps one noise draw for its whole
    session and draws anew when its session ends (the loop's slots restart automatically).
    """

    def __init__(self, agent: TSHAgent, replay: ReplayBuffer, batch_size: int) -> None:
        self.agent, self.replay, self.batch_size = agent, replay, batch_size
        self._action: np.ndarray | None = None
        self._session_noise: np.ndarray | None = None

    def act(self, state: np.ndarray, preds: np.ndarray, explore: bool) -> np.ndarray:
        self.agent.observe(state)
        noise = None
        if explore and self.agent.config.exploration_noise == "session":
            if self._session_noise is None or len(self._session_noise) != len(state):
                self._session_noise = self.agent.exploration_noise(len(state))
            noise = self._session_noise
        self._action, _ = self.agent.act(state, explore=explore, noise=noise)
        return self.agent.scores(state, preds, self._action)

    def record(self, obs: Observation, preds: np.ndarray, res: StepResult) -> None:
        assert self._action is not None
        self.replay.add(obs.state, self._action, res.reward, res.observation.state, res.done, preds)
        if self._session_noise is not None and res.done.any():
            ended = np.flatnonzero(res.done)
            self._session_noise[ended] = self.agent.exploration_noise(len(ended))

    def ready(self, learning_starts: int) -> bool:
        return len(self.replay) >= learning_starts

    def learn(self) -> dict[str, float]:
        rows = self.agent.config.inner_batch_size  # the inner stage reads these candidates only
        return self.agent.update(self.replay.sample(self.batch_size, candidate_rows=rows))

    def score_fn(self) -> ScoreFn:
        return policy_score_fn(self.agent)


def run_online(
    sim: UserSimulator,
    learner: Learner,
    tc: TrainConfig,
    seed: int,
    steps: int | None = None,
    log_every: int = 10,
    progress: bool = False,
    desc: str = "train",
    on_step: StepHook | None = None,
) -> list[dict[str, float]]:
    """Collect one request per concurrent user (with exploration) -> store -> learn, ``steps``
    times (default ``tc.total_steps``). Returns the training curve: every ``log_every`` steps
    the mean return of the sessions finished since the last row and the last learning
    metrics. ``on_step`` sees every step's result (evaluation, metrics sinks)."""
    steps = tc.total_steps if steps is None else steps
    obs = sim.reset(tc.n_users, seed=seed, auto_reset=True)
    curve: list[dict[str, float]] = []
    finished: list[np.ndarray] = []
    metrics: dict[str, float] = {}
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step", leave=False)
    for step in bar:
        # collect: one request per concurrent user, with exploration noise on the action
        res = sim.step_scores(learner.act(obs.state, obs.predictions, explore=True))
        learner.record(obs, obs.predictions, res)
        obs = res.observation
        # learn: for xMTF critic -> actor -> inner stage -> target sync (TSHAgent.update)
        if learner.ready(tc.learning_starts):
            for _ in range(tc.updates_per_step):
                metrics = learner.learn()
        finished.append(res.finished_returns)
        stop = bool(on_step(step + 1, res, metrics)) if on_step is not None else False
        if (step + 1) % log_every == 0 or step + 1 == steps or stop:
            done = np.concatenate(finished)
            row = {"step": float(step + 1), "transitions": float((step + 1) * tc.n_users)}
            if done.size:
                row["train_return"] = float(done.mean())
            row |= {k: v for k, v in metrics.items() if math.isfinite(v)}
            curve.append(row)
            finished = []
            if "train_return" in row:
                bar.set_postfix(ret=f"{row['train_return']:.0f}")
        if stop:
            break
    return curve
