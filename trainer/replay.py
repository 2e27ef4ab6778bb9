"""Replay buffer of TSH transitions ``(s_t, a_t, r_t, s_{t+1}, done, O_t)``.

``O_t`` holds the predictions of up to ``max_candidates`` candidates of the request (a uniform
sample when there were more), with a mask for requests that had fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    state: np.ndarray  # (B, D)
    action: np.ndarray  # (B, K)
    reward: np.ndarray  # (B,)
    next_state: np.ndarray  # (B, D)
    done: np.ndarray  # (B,)
    predictions: np.ndarray  # (B, K, M)
    mask: np.ndarray  # (B, M) bool


class ReplayBuffer:
    """A fixed-capacity ring buffer in numpy."""

    def __init__(
        self, capacity: int, state_dim: int, n_tasks: int, max_candidates: int, seed: int = 0
    ) -> None:
        self.capacity = capacity
        self.max_candidates = max_candidates
        self.state = np.zeros((capacity, state_dim), np.float32)
        self.action = np.zeros((capacity, n_tasks), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.next_state = np.zeros((capacity, state_dim), np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.predictions = np.zeros((capacity, n_tasks, max_candidates), np.float32)
        self.mask = np.zeros((capacity, max_candidates), bool)
        self.pos = 0
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        state: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_state: np.ndarray,
        done: np.ndarray,
        predictions: np.ndarray,
    ) -> None:
        """Add B transitions; ``predictions`` is (B, K, N) for any N (sampled down to M)."""
        b = predictions.shape[0]
        preds, mask = self._fit_candidates(predictions)
        idx = (self.pos + np.arange(b)) % self.capacity
        self.state[idx] = state
        self.action[idx] = action
        self.reward[idx] = reward
        self.next_state[idx] = next_state
        self.done[idx] = done
        self.predictions[idx] = preds
        self.mask[idx] = mask
        self.pos = int((self.pos + b) % self.capacity)
        self.size = int(min(self.size + b, self.capacity))

    def _fit_candidates(self, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b, k, n = predictions.shape
        m = self.max_candidates
        if n > m:  # uniform sample without replacement, per row
            keep = np.argsort(self.rng.random((b, n)), axis=1)[:, :m]
            preds = np.take_along_axis(predictions, keep[:, None, :], axis=2)
            return preds, np.ones((b, m), bool)
        preds = np.zeros((b, k, m), np.float32)
        preds[:, :, :n] = predictions
        mask = np.zeros((b, m), bool)
        mask[:, :n] = True
        return preds, mask

    def sample(self, batch_size: int, candidate_rows: int | None = None) -> Batch:
        """A uniform batch. ``candidate_rows=n`` copies the candidates (``predictions``,
        ``mask``) of the first n rows only, for a learner that reads no more of them (the same
        draw, a fraction of the copying)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, size=min(batch_size, self.size))
        rows = idx if candidate_rows is None else idx[:candidate_rows]
        return Batch(
            state=self.state[idx],
            action=self.action[idx],
            reward=self.reward[idx],
            next_state=self.next_state[idx],
            done=self.done[idx],
            predictions=self.predictions[rows],
            mask=self.mask[rows],
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer's arrays at full capacity."""
        arrays = (self.state, self.action, self.reward, self.next_state, self.done)
        return sum(a.nbytes for a in (*arrays, self.predictions, self.mask))
