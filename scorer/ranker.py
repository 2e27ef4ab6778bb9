"""The rank work of one request: :meth:`Ranker.execute` (``RankInput`` -> ``RankResult``).

For a request already validated against a model version (:func:`scorer.parsing.parse_rank`):
draw the exploration noise (:func:`shared.fusion.exploration_noise`), make the one ONNX Runtime
call of the version's serving graph (:meth:`scorer.model.LoadedModel.rank`: actor + noise,
clipped, the MFCs, the outer stage and the top-N), and map the returned indices back to the
caller's item ids. The :class:`RankResult` is everything the answer and the session log need;
:meth:`RankResult.response` encodes the SPEC §5 answer.

It runs inline in the ``async`` rank route (a hop to the threadpool would cost more than the
call) and copies nothing it does not have to: the arrays it keeps are the graph's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from scorer.model import LoadedModel
from scorer.parsing import RankInput
from shared.experiment import DEFAULT_ARM
from shared.fusion import exploration_noise, outer_stage


@dataclass(frozen=True, slots=True)
class RankResult:
    """What one ranking did: the answer's content and the session log's rank fields."""

    model_version: str
    tasks: tuple[str, ...]  # the served task order (the rows of RankInput.predictions)
    action: np.ndarray  # (K,) float32, applied: clip(actor + noise)
    noise: np.ndarray  # (K,) float32, the noise actually applied (after clipping)
    exploration_scale: float
    returned_ids: list[str]  # the top n item ids, best first
    scores: np.ndarray  # (n,) float32 fused scores of returned_ids
    indices: np.ndarray | None = None  # (n,) int64 candidate indices of returned_ids
    arm: str = DEFAULT_ARM  # SPEC §13: the experiment arm that served the request
    experiment: str | None = None  # the experiment's name (None outside experiments)
    contributions: np.ndarray | None = None  # (n, K) q_k (1 + a_k q_k), with explain only

    @property
    def explored(self) -> bool:
        return self.exploration_scale > 0

    def response(self, request_id: str) -> bytes:
        """The ``/v1/rank`` answer body (SPEC §5, with §13's ``arm`` and explanations)."""
        items: list[dict[str, object]] = [
            {"item_id": item, "score": s}
            for item, s in zip(self.returned_ids, self.scores.tolist(), strict=True)
        ]
        if self.contributions is not None:
            for item, row in zip(items, self.contributions.tolist(), strict=True):
                item["contributions"] = dict(zip(self.tasks, row, strict=True))
        return orjson.dumps(
            {
                "request_id": request_id,
                "model_version": self.model_version,
                "items": items,
                "action": self.action.tolist(),
                "explored": self.explored,
                "arm": self.arm,
            }
        )


class Ranker:
    """Ranks requests with exploration noise of std ``exploration_scale * (high - low)``."""

    def __init__(self, exploration_scale: float, rng: np.random.Generator) -> None:
        self.exploration_scale = exploration_scale
        self.rng = rng

    def execute(
        self,
        model: LoadedModel,
        req: RankInput,
        arm: str = DEFAULT_ARM,
        experiment: str | None = None,
    ) -> RankResult:
        """Rank ``req`` with ``model`` (the version it was validated against, or an experiment
        arm's version of the same tasks and state_dim)."""
        m = model.manifest
        noise = exploration_noise(
            len(model.task_names), self.exploration_scale, m.action_low, m.action_high, self.rng
        )
        ranked = model.rank(req.state, req.predictions, noise, req.top_n)
        ids = req.item_ids
        contributions = None
        if req.explain:  # one more ORT call, on the returned candidates only
            contributions = explain(model, req, ranked.indices, ranked.action)
        return RankResult(
            model_version=model.version,
            tasks=model.task_names,
            action=ranked.action,
            noise=ranked.noise,
            exploration_scale=self.exploration_scale,
            returned_ids=[ids[i] for i in ranked.indices.tolist()],
            scores=ranked.scores,
            indices=ranked.indices,
            arm=arm,
            experiment=experiment,
            contributions=contributions,
        )


def explain(
    model: LoadedModel, req: RankInput, indices: np.ndarray, action: np.ndarray
) -> np.ndarray:
    """(n, K) per-task contributions ``q_k (1 + a_k q_k)`` of the candidates ``indices`` under
    the applied ``action``; a row sums to the candidate's fused score (the MFCs score each
    candidate on its own, so the returned columns alone give the same ``q``)."""
    q, _ = model.infer(req.state, np.ascontiguousarray(req.predictions[:, indices]))
    return np.asarray(outer_stage(q, action.astype(np.float32)).T, np.float32)
