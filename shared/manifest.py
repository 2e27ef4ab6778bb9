"""Model artifact contract: ``<model_dir>/<version>/{mfc.onnx, actor.onnx, manifest.json}``.

``<model_dir>/CURRENT`` names the version to serve. It is replaced atomically (write a temp file,
then ``os.replace``), and a version directory is itself published by renaming a fully written
temp directory, so a reader never sees a half-written version.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared import onnx_io
from shared.tasks import TaskSpec

SCHEMA_VERSION = 1
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ManifestError(ValueError):
    """A version directory or manifest that must not be served."""


class TaskEntry(BaseModel):
    """A task as recorded in the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    direction: int = Field(ge=-1, le=1)
    offset: float = 0.0
    scale: float = Field(default=1.0, gt=0)
    low: float = 0.0
    high: float = 1.0

    @field_validator("direction")
    @classmethod
    def _nonzero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("direction must be 1 or -1")
        return v

    def to_spec(self) -> TaskSpec:
        return TaskSpec(**self.model_dump())

    @classmethod
    def from_spec(cls, spec: TaskSpec) -> TaskEntry:
        return cls(
            name=spec.name,
            direction=spec.direction,
            offset=spec.offset,
            scale=spec.scale,
            low=spec.low,
            high=spec.high,
        )


class GraphEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    inputs: list[str]
    outputs: list[str]


class ExportChecks(BaseModel):
    """Figures of the checks export ran before publishing the version."""

    model_config = ConfigDict(extra="allow", frozen=True)

    parity_max_abs_err: float
    parity_tolerance: float
    monotonicity_violation_rate: float
    monotonicity_bound: float
    monotonicity_per_task: dict[str, float] = Field(default_factory=dict)
    # share of probe requests tied at the top-10 boundary, and the export's bound (absent in
    # versions exported before the tie audit existed)
    tie_rate: float | None = None
    tie_bound: float | None = None


class Manifest(BaseModel):
    """``manifest.json`` of one model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = SCHEMA_VERSION
    version: str
    created_at: str
    tasks: list[TaskEntry]
    state_dim: int = Field(gt=0)
    action_low: float
    action_high: float
    opset: int = onnx_io.OPSET
    mfc: GraphEntry = GraphEntry(
        file=onnx_io.MFC_FILE,
        inputs=list(onnx_io.MFC_INPUTS),
        outputs=list(onnx_io.MFC_OUTPUTS),
    )
    actor: GraphEntry = GraphEntry(
        file=onnx_io.ACTOR_FILE,
        inputs=list(onnx_io.ACTOR_INPUTS),
        outputs=list(onnx_io.ACTOR_OUTPUTS),
    )
    sha256: dict[str, str]
    training: dict[str, Any] = Field(default_factory=dict)
    checks: ExportChecks

    @field_validator("version")
    @classmethod
    def _version_name(cls, v: str) -> str:
        if not _VERSION_RE.match(v):
            raise ValueError(f"invalid version name {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError("tasks must be a non-empty list of unique names")
        # q(1 + a q) with q in (0, 1) is increasing in q iff a > -1/2.
        if not (-0.5 < self.action_low < self.action_high):
            raise ValueError("action bounds must satisfy -0.5 < action_low < action_high")
        return self

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def task_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(t.to_spec() for t in self.tasks)


def new_version_name(now: datetime | None = None) -> str:
    """A sortable, unique version name such as ``20261124-201530-3fa2``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(version_dir: Path) -> Manifest:
    """Parse and validate ``manifest.json``; raise :class:`ManifestError` with the reason."""
    path = version_dir / onnx_io.MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from exc
    try:
        return Manifest.model_validate_json(raw)
    except ValueError as exc:
        raise ManifestError(f"invalid manifest {path}: {exc}") from exc


def verify_files(version_dir: Path, manifest: Manifest) -> None:
    """Check that every file the manifest lists exists and has the recorded sha256."""
    for required in (manifest.mfc.file, manifest.actor.file):
        if required not in manifest.sha256:
            raise ManifestError(f"manifest lists no sha256 for {required}")
    for name, expected in manifest.sha256.items():
        if "/" in name or name.startswith("."):
            raise ManifestError(f"manifest names a file outside the version directory: {name!r}")
        path = version_dir / name
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from exc
        if actual != expected:
            raise ManifestError(f"sha256 mismatch for {name}: {actual} != {expected}")


def read_current(model_dir: Path) -> str | None:
    """The version named by ``CURRENT``, or None if there is none yet."""
    try:
        name = (model_dir / onnx_io.CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    if not _VERSION_RE.match(name):
        raise ManifestError(f"CURRENT holds an invalid version name {name!r}")
    return name


def write_current(model_dir: Path, version: str) -> None:
    """Point ``CURRENT`` at ``version`` atomically (write then rename)."""
    if not _VERSION_RE.match(version):
        raise ManifestError(f"invalid version name {version!r}")
    tmp = model_dir / f".{onnx_io.CURRENT_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    with tmp.open("w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, model_dir / onnx_io.CURRENT_FILE)
