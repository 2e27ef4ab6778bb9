"""xMTF w/o outer stage (paper section 6.4): the same MFCs and no RL at all.

The cells are trained with the paper's inner-stage loss (eq. 18) whose transfer label is the
*observed per-item reward* (each shown item's watch time) instead of the outer stage's score:
BPR over pairs of shown items ordered by their watch time, plus the monotonicity loss over all
logged candidates. It learns what pays now and nothing about the session (no long-term signal).
"""

from __future__ import annotations

import numpy as np
import torch

from trainer import losses
from trainer.loop import AgentLearner, ScoreFn
from trainer.sim import Observation, StepResult
from trainer.tsh import TSHAgent, to_tensor


class MyopicMFCLearner(AgentLearner):
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
        s = ag.norm(to_tensor(self.state[idx]))
        preds, mask = to_tensor(self.preds[idx]), torch.as_tensor(self.mask[idx])
        label_mask = torch.zeros_like(mask)
        label_mask[:, : self.top_n] = True
        q_inner = ag.mfc(s, preds)
        transfer = losses.transfer_loss(
            to_tensor(self.label[idx]), losses.fused_score(q_inner), label_mask
        )
        ag.updates += 1
        return ag.inner_step(preds, q_inner, mask, transfer)

    def score_fn(self) -> ScoreFn:
        ag = self.agent

        def score(state: np.ndarray, predictions: np.ndarray) -> np.ndarray:
            zeros = np.zeros((state.shape[0], len(ag.tasks)), np.float32)
            return ag.scores(state, predictions, zeros)

        return score
