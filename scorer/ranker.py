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
from shared.fusion import exploration_noise


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

    @property
    def explored(self) -> bool:
        return self.exploration_scale > 0

    def response(self, request_id: str) -> bytes:
        """The ``/v1/rank`` answer body (SPEC §5)."""
        return orjson.dumps(
            {
                "request_id": request_id,
                "model_version": self.model_version,
                "items": [
                    {"item_id": item, "score": s}
                    for item, s in zip(self.returned_ids, self.scores.tolist(), strict=True)
                ],
                "action": self.action.tolist(),
                "explored": self.explored,
            }
        )


class Ranker:
    """Ranks requests with exploration noise of std ``exploration_scale * (high - low)``."""

    def __init__(self, exploration_scale: float, rng: np.random.Generator) -> None:
        self.exploration_scale = exploration_scale
        self.rng = rng

    def execute(self, model: LoadedModel, req: RankInput) -> RankResult:
        """Rank ``req`` with ``model``, the version it was validated against."""
        m = model.manifest
        noise = exploration_noise(
            len(model.task_names), self.exploration_scale, m.action_low, m.action_high, self.rng
        )
        ranked = model.rank(req.state, req.predictions, noise, req.top_n)
        ids = req.item_ids
        return RankResult(
            model_version=model.version,
            tasks=model.task_names,
            action=ranked.action,
            noise=ranked.noise,
            exploration_scale=self.exploration_scale,
            returned_ids=[ids[i] for i in ranked.indices.tolist()],
            scores=ranked.scores,
        )
