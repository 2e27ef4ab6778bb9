"""HTTP contract of the scorer (SPEC §5): request, response and error models.

The scorer parses ``/v1/rank`` bodies with a columnar fast path (see ``scorer.parsing``) and uses
these models for the OpenAPI schema, for ``/v1/feedback`` and for responses. Clients may use them
to build requests.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_ID_LENGTH = 256

Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]


class RankRequest(BaseModel):
    """``POST /v1/rank`` body."""

    model_config = ConfigDict(extra="forbid")

    request_id: Id | None = Field(default=None, description="generated (uuid4 hex) if absent")
    session_id: Id
    user_id: Id
    user_state: list[float] = Field(description="length == state_dim of the served model")
    item_ids: list[Id] = Field(min_length=1, description="unique candidate ids")
    predictions: dict[str, list[float]] = Field(
        description="one array per task of the served model, each of length len(item_ids)"
    )
    top_n: int = Field(ge=1, description="items to return; all N when top_n > N")
    explain: bool = Field(
        default=False, description="add each returned item's per-task contributions (SPEC §13)"
    )


class RankedItem(BaseModel):
    item_id: str
    score: float
    contributions: dict[str, float] | None = Field(
        default=None,
        description="with explain: q_k (1 + a_k q_k) per task, summing to the score",
    )


class RankResponse(BaseModel):
    request_id: str
    model_version: str
    items: list[RankedItem]
    action: list[float]
    explored: bool
    arm: str = Field(default="default", description="experiment arm (SPEC §13)")


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: Id
    watch_time: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, le=1e7)
    signals: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], int] = Field(
        default_factory=dict, description="task name -> 0/1 (or a small count)"
    )


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback`` body: what the user did with the items of one rank request."""

    model_config = ConfigDict(extra="forbid")

    request_id: Id
    session_id: Id
    user_id: Id
    items: list[FeedbackItem] = Field(default_factory=list, max_length=10_000)
    session_end: bool = False


class FeedbackResponse(BaseModel):
    """``POST /v1/feedback`` answer (202)."""

    accepted: bool = True


class TaskInfo(BaseModel):
    name: str
    direction: int = Field(description="1: more is better; -1: less is better (skip, dislike)")


class ModelInfo(BaseModel):
    """``GET /v1/model`` answer: the served version, as its manifest describes it."""

    version: str
    tasks: list[TaskInfo]
    state_dim: int
    created_at: str
    action_low: float
    action_high: float
    checks: dict[str, object] = Field(description="figures of the checks export ran")
    loaded_at: str = Field(description="when this scorer process loaded the version (UTC)")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. invalid_input, body_too_large")
    message: str
    field: str | None = Field(description="the offending field, or null")


class ErrorBody(BaseModel):
    """Every 4xx/5xx body: ``{"error": {"code", "message", "field"}}``."""

    error: ErrorDetail
