"""Prediction tasks: names, order and monotonicity directions."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The six KuaiRand feedbacks the paper fuses, in the paper's order.
DEFAULT_TASK_NAMES: tuple[str, ...] = ("click", "long_view", "like", "follow", "comment", "share")

_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class TaskSpec:
    """One prediction fed to the fusion.

    ``direction`` is +1 when the fused score must not decrease as the prediction grows (the
    paper's case: click, like, ...) and -1 for a negative signal (skip, dislike) whose score must
    not increase. ``offset``/``scale`` normalise the raw prediction, ``(o - offset) / scale``,
    before it enters the fusion cell; ``low``/``high`` bound the raw range used by the export's
    monotonicity audit.
    """

    name: str
    direction: int = 1
    offset: float = 0.0
    scale: float = 1.0
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not _TASK_NAME.match(self.name):
            raise ValueError(f"task name {self.name!r} must match {_TASK_NAME.pattern}")
        if self.direction not in (1, -1):
            raise ValueError(f"task {self.name!r}: direction must be 1 or -1, got {self.direction}")
        if not self.scale > 0:
            raise ValueError(f"task {self.name!r}: scale must be > 0, got {self.scale}")
        if not self.high > self.low:
            raise ValueError(f"task {self.name!r}: high must be > low")


def make_tasks(
    names: Sequence[str], directions: Sequence[int] | None = None
) -> tuple[TaskSpec, ...]:
    """Build task specs from names and optional directions (default +1 each)."""
    names = [n.strip() for n in names]
    if not names:
        raise ValueError("at least one task is required")
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    if directions is None:
        directions = [1] * len(names)
    if len(directions) != len(names):
        raise ValueError(f"{len(directions)} directions given for {len(names)} tasks")
    return tuple(TaskSpec(name=n, direction=int(d)) for n, d in zip(names, directions, strict=True))


DEFAULT_TASKS: tuple[TaskSpec, ...] = make_tasks(DEFAULT_TASK_NAMES)


def calibrate_tasks(
    tasks: Sequence[TaskSpec], predictions: np.ndarray, tail: float = 0.001
) -> tuple[TaskSpec, ...]:
    """Per-task input normalisation from a sample of logged predictions ``(n, K)``.

    ``offset``/``scale`` become the mean and standard deviation, so every fusion cell sees an
    input of unit spread (a share prediction around 0.001 and a click prediction around 0.2
    otherwise differ by two orders of magnitude in what the cell can resolve); ``low``/``high``
    become the ``tail`` and ``1 - tail`` quantiles: the range the cells start as a ramp over,
    and the range the export's monotonicity audit probes.
    """
    x = np.asarray(predictions, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(tasks):
        raise ValueError(f"predictions must be (n, {len(tasks)}), got {x.shape}")
    if not 0.0 <= tail < 0.5:
        raise ValueError("tail must be in [0, 0.5)")
    low, high = np.quantile(x, tail, axis=0), np.quantile(x, 1.0 - tail, axis=0)
    high = np.maximum(high, low + 1e-6)  # a constant prediction still gets a valid range
    offset, scale = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    return tuple(
        dataclasses.replace(
            task,
            offset=float(offset[k]),
            scale=float(scale[k]),
            low=float(low[k]),
            high=float(high[k]),
        )
        for k, task in enumerate(tasks)
    )
