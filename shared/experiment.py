"""Experiments (SPEC §13): the ``<model_dir>/EXPERIMENT.json`` schema and the arm assignment.

Both sides use this module: the scorer reads the file and assigns each request's user to an arm
(:meth:`Experiment.assign`), the trainer's ``xmtf-train experiment`` commands write it
(:func:`write_experiment`, write then rename) and attribute the logged sessions to arms.

Assignment: ``user_id`` hashed together with the salt by BLAKE2b (not Python's ``hash``, which is
salted per process) to a point of [0, 1); the arms are taken in order by cumulative share. A
user therefore lands in the same arm on every request, in every worker and after restarts,
while the experiment is unchanged. An arm with ``status: rolled_back`` has share 0: nobody is
assigned to it. The guard (:func:`roll_back`) gives its share to the control arm, so in a
two-arm experiment every user of a rolled-back treatment is served by control.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

EXPERIMENT_FILE = "EXPERIMENT.json"
#: The arm name of requests served by ``CURRENT`` outside any experiment (or by the fallback
#: when an arm's version was refused).
DEFAULT_ARM = "default"
CONTROL = "control"
SHARE_TOLERANCE = 1e-6

Name = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
Version = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^/\\]+$")]


class ExperimentError(ValueError):
    """An EXPERIMENT.json that cannot be read or does not follow the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Arm(_Strict):
    name: Name
    version: Version
    share: float = Field(ge=0.0, le=1.0)
    status: Literal["active", "rolled_back"] = "active"


class Shadow(_Strict):
    version: Version
    sample_rate: float = Field(gt=0.0, le=1.0)


class Guardrail(_Strict):
    metric: Literal["watch_time_per_session"] = "watch_time_per_session"
    max_drop: float = Field(default=0.02, ge=0.0, lt=1.0)
    min_sessions: int = Field(default=500, ge=0)


class Experiment(_Strict):
    name: Name
    salt: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    status: Literal["running", "stopped"] = "running"
    #: When ``experiment start`` (or ``consume --publish canary``) wrote it, Unix seconds: the
    #: end of the pre-period that ``report --cuped`` takes its covariate from (optional).
    started_at: float | None = None
    arms: list[Arm] = Field(min_length=1)
    shadow: Shadow | None = None
    guardrail: Guardrail = Field(default_factory=Guardrail)

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if DEFAULT_ARM in names:
            raise ValueError(f"{DEFAULT_ARM!r} is reserved for traffic outside the experiment")
        for arm in self.arms:
            if arm.status == "rolled_back" and arm.share != 0.0:
                raise ValueError(f"arm {arm.name!r} is rolled_back but has share {arm.share}")
        active = [a for a in self.arms if a.status == "active"]
        if not active:
            raise ValueError("at least one arm must be active")
        total = math.fsum(a.share for a in active)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(f"shares of the active arms must sum to 1, got {total}")
        return self

    # ------------------------------------------------------------------ assignment

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def control(self) -> Arm:
        """The arm named ``control``, else the first arm."""
        return next((a for a in self.arms if a.name == CONTROL), self.arms[0])

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    def boundaries(self) -> list[tuple[float, Arm]]:
        """(upper end of its interval, arm) for the arms that get traffic, in order."""
        out, cum = [], 0.0
        for a in self.arms:
            if a.status == "active" and a.share > 0:
                cum += a.share
                out.append((cum, a))
        return out

    def assign(self, user_id: str) -> Arm:
        """The arm of ``user_id`` (sticky: a pure function of salt, user and the shares)."""
        return pick(self.boundaries(), bucket(self.salt, user_id))


def bucket(salt: str, user_id: str) -> float:
    """``user_id`` hashed with ``salt`` to [0, 1) (BLAKE2b, 53 bits)."""
    digest = hashlib.blake2b(
        user_id.encode("utf-8", "surrogatepass"), digest_size=8, key=salt.encode()[:64]
    ).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def pick(boundaries: list[tuple[float, Arm]], u: float) -> Arm:
    """The first arm whose cumulative share exceeds ``u`` (the last one for rounding at 1)."""
    for upper, arm in boundaries:
        if u < upper:
            return arm
    return boundaries[-1][1]


# ----------------------------------------------------------------------------- files


def experiment_path(model_dir: Path | str) -> Path:
    return Path(model_dir) / EXPERIMENT_FILE


def parse_experiment(raw: bytes | str) -> Experiment:
    try:
        return Experiment.model_validate_json(raw)
    except ValueError as exc:
        raise ExperimentError(f"invalid {EXPERIMENT_FILE}: {exc}") from exc


def read_experiment(model_dir: Path | str) -> Experiment | None:
    """The experiment of ``model_dir``, or None when it has no EXPERIMENT.json."""
    path = experiment_path(model_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_experiment(raw)


def write_experiment(model_dir: Path | str, experiment: Experiment) -> Path:
    """Write EXPERIMENT.json atomically (a temp file in the same directory, then rename)."""
    path = experiment_path(model_dir)
    tmp = path.with_name(f".{EXPERIMENT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(experiment.model_dump_json(indent=2) + "\n")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def roll_back(experiment: Experiment, arm_name: str) -> Experiment:
    """``arm_name`` with share 0 and status ``rolled_back``; its share goes to control.

    Giving the share to control (rather than spreading it over every arm) keeps the arms before
    it in place; in a two-arm experiment every user of the rolled-back arm moves to control.
    """
    control = experiment.control
    target = experiment.arm(arm_name)
    if target.name == control.name:
        raise ExperimentError("the control arm cannot be rolled back")
    arms = []
    for a in experiment.arms:
        if a.name == target.name:
            a = a.model_copy(update={"share": 0.0, "status": "rolled_back"})
        elif a.name == control.name:
            a = a.model_copy(update={"share": a.share + target.share})
        arms.append(a.model_dump())
    return Experiment.model_validate({**experiment.model_dump(), "arms": arms})
