"""Experiment arms and shadow scoring in the scorer (SPEC §13).

:class:`ExperimentStore` follows ``<model_dir>/EXPERIMENT.json`` the way
:class:`~scorer.model.ModelStore` follows ``CURRENT`` (polled; re-read when the file's stat
changes or ``CURRENT`` names another version). Every arm's version, and the shadow's, is loaded
and verified like ``CURRENT`` (:func:`scorer.model.load_version`) and must have the served
model's tasks and state_dim (requests are parsed against ``CURRENT``); a refused arm's traffic
falls back to ``CURRENT`` under the arm name ``default`` and the refusal is reported by
``/readyz`` and ``/metrics``. The built :class:`LiveExperiment` is swapped in by one reference
assignment; without a running experiment ``live`` is None and a request pays one attribute
check.

Shadow scoring (:func:`compare_shadow`) runs after the response is sent: the shadow version
ranks the same candidates (no exploration noise), and the top-N overlap and Kendall's tau
between its ranking and the served one are accumulated in :class:`ShadowStats`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scorer.model import LoadedModel, ModelRefused, ModelStore, compatible, load_version
from shared.experiment import (
    DEFAULT_ARM,
    Arm,
    Experiment,
    ExperimentError,
    bucket,
    experiment_path,
    parse_experiment,
)

if TYPE_CHECKING:
    from scorer.parsing import RankInput
    from scorer.ranker import RankResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ArmRoute:
    arm: Arm
    model: LoadedModel | None  # None: refused, served by CURRENT under DEFAULT_ARM


@dataclass
class LiveExperiment:
    """A running experiment as the request path uses it (built once per change of the file)."""

    config: Experiment
    routes: list[tuple[float, ArmRoute]]  # (upper end of the arm's interval, route), in order
    shadow: LoadedModel | None
    refused: dict[str, str]  # arm name (or "shadow") -> why its version was refused
    requests: dict[str, int] = field(default_factory=dict)  # per arm, this process
    fallback: int = 0  # requests of refused arms served by CURRENT

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def shadow_rate(self) -> float:
        return self.config.shadow.sample_rate if self.config.shadow and self.shadow else 0.0

    def route(self, user_id: str, current: LoadedModel) -> tuple[str, LoadedModel]:
        """(arm name, model) for ``user_id``: sticky, by the salted hash and cumulative shares."""
        u = bucket(self.config.salt, user_id)
        routes = self.routes
        chosen = routes[-1][1]
        for upper, r in routes:
            if u < upper:
                chosen = r
                break
        name = chosen.arm.name
        self.requests[name] = self.requests.get(name, 0) + 1
        if chosen.model is None:
            self.fallback += 1
            return DEFAULT_ARM, current
        return name, chosen.model

    def describe(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "requests": dict(self.requests),
            "fallback_requests": self.fallback,
            "refused": dict(self.refused),
        }


class ExperimentStore:
    """Follows EXPERIMENT.json; :meth:`refresh` is blocking (run it in a thread)."""

    def __init__(self, model_dir: Path, store: ModelStore) -> None:
        self.model_dir = Path(model_dir)
        self.store = store
        self.live: LiveExperiment | None = None
        self.config: Experiment | None = None  # the file's last valid content (running or not)
        self.last_error: str | None = None
        self.refusals = 0  # arm/shadow versions refused, and unreadable files
        self._signature: tuple[Any, ...] | None = None
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> bool:
        """Re-read EXPERIMENT.json if it (or ``CURRENT``'s version) changed; True on a swap."""
        with self._lock:
            path = experiment_path(self.model_dir)
            current = self.store.current
            try:
                st = os.stat(path)
            except FileNotFoundError:
                changed = self.live is not None or self.config is not None
                self.live = self.config = None
                self._signature = None
                self._models = {}
                return changed
            signature = (st.st_mtime_ns, st.st_size, st.st_ino, current and current.version)
            if signature == self._signature and not force:
                return False
            self._signature = signature
            try:
                config = parse_experiment(path.read_bytes())
            except (ExperimentError, OSError) as exc:
                self.refusals += 1
                self.last_error = str(exc)
                log.error("kept the previous experiment: %s", exc)
                return False
            self.last_error = None
            previous = self.live
            self.config = config
            if not config.running or current is None:
                self.live = None
                return previous is not None
            self.live = self._build(config, current, previous)
            log.info(
                "experiment %s: %s",
                config.name,
                [(a.name, a.version, a.share) for a in config.arms],
            )
            return True

    def _build(
        self, config: Experiment, current: LoadedModel, previous: LiveExperiment | None
    ) -> LiveExperiment:
        models: dict[str, LoadedModel] = {}
        refused: dict[str, str] = {}

        def get(version: str) -> LoadedModel:
            if version in models:
                return models[version]
            model = self._models.get(version)
            if model is None:
                model = (
                    current
                    if version == current.version
                    else load_version(self.model_dir / version)
                )
            reason = compatible(current.manifest, model.manifest)
            if reason:
                raise ModelRefused(f"incompatible with CURRENT: {reason}")
            models[version] = model
            return model

        routes: list[tuple[float, ArmRoute]] = []
        for upper, arm in config.boundaries():
            try:
                model: LoadedModel | None = get(arm.version)
            except ModelRefused as exc:
                model = None
                refused[arm.name] = f"{arm.version}: {exc}"
                self.refusals += 1
                log.error("arm %s (%s) refused, served by CURRENT: %s", arm.name, arm.version, exc)
            routes.append((upper, ArmRoute(arm, model)))
        shadow = None
        if config.shadow is not None:
            try:
                shadow = get(config.shadow.version)
            except ModelRefused as exc:
                refused["shadow"] = f"{config.shadow.version}: {exc}"
                self.refusals += 1
                log.error("shadow %s refused: %s", config.shadow.version, exc)
        self._models = models
        live = LiveExperiment(config, routes, shadow, refused)
        if previous is not None and previous.name == config.name:
            live.requests = previous.requests  # counters survive edits of the same experiment
            live.fallback = previous.fallback
        return live

    def describe(self) -> dict[str, Any]:
        """``GET /v1/experiment`` and ``/readyz``: the live configuration and counters."""
        if self.live is not None:
            return {"running": True, **self.live.describe(), "last_error": self.last_error}
        return {
            "running": False,
            "config": self.config.model_dump() if self.config else None,
            "last_error": self.last_error,
        }

    def metric_lines(self) -> list[str]:
        lines = [
            "# HELP xmtf_experiment_running 1 while an experiment routes requests.",
            "# TYPE xmtf_experiment_running gauge",
            f"xmtf_experiment_running {int(self.live is not None)}",
            "# HELP xmtf_experiment_refusals_total Arm or shadow versions (or files) refused.",
            "# TYPE xmtf_experiment_refusals_total counter",
            f"xmtf_experiment_refusals_total {self.refusals}",
        ]
        live = self.live
        if live is not None:
            lines += [
                "# HELP xmtf_experiment_requests_total Requests by experiment arm.",
                "# TYPE xmtf_experiment_requests_total counter",
            ]
            for _, r in live.routes:
                n = live.requests.get(r.arm.name, 0)
                lines.append(
                    f'xmtf_experiment_requests_total{{experiment="{live.name}",'
                    f'arm="{r.arm.name}",version="{r.arm.version}"}} {n}'
                )
            lines += [
                "# HELP xmtf_experiment_arm_refused 1 for an arm whose version was refused.",
                "# TYPE xmtf_experiment_arm_refused gauge",
            ]
            for _, r in live.routes:
                lines.append(
                    f'xmtf_experiment_arm_refused{{arm="{r.arm.name}"}} {int(r.model is None)}'
                )
        return lines


# ----------------------------------------------------------------------------- shadow scoring


@dataclass
class ShadowStats:
    """Agreement of the shadow version with the served rankings (this process)."""

    scored: int = 0
    errors: int = 0
    overlap_sum: float = 0.0
    tau_sum: float = 0.0
    tau_count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, overlap: float, tau: float | None) -> None:
        with self._lock:
            self.scored += 1
            self.overlap_sum += overlap
            if tau is not None:
                self.tau_sum += tau
                self.tau_count += 1

    def metric_lines(self) -> list[str]:
        overlap = self.overlap_sum / self.scored if self.scored else 0.0
        tau = self.tau_sum / self.tau_count if self.tau_count else 0.0
        out = []
        for name, kind, text, value in (
            ("xmtf_shadow_scored_total", "counter", "Requests scored by the shadow.", self.scored),
            ("xmtf_shadow_errors_total", "counter", "Shadow scorings that failed.", self.errors),
            (
                "xmtf_shadow_topn_overlap_mean",
                "gauge",
                "Mean share of the served top-N that the shadow also puts in its top-N.",
                overlap,
            ),
            (
                "xmtf_shadow_kendall_tau_mean",
                "gauge",
                "Mean Kendall tau between served and shadow order of the served top-N.",
                tau,
            ),
        ):
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value:g}"]
        return out


def kendall_tau(order_scores: np.ndarray) -> float | None:
    """Kendall's tau-a between the served order (best first) and ``order_scores``, the shadow's
    scores of the served items in served order; None for fewer than two items."""
    n = len(order_scores)
    if n < 2:
        return None
    # served rank decreases along the list: a concordant pair has the shadow score decreasing
    diff = np.sign(order_scores[:, None] - order_scores[None, :])  # [i, j] = sign(s_i - s_j)
    upper = np.triu_indices(n, 1)
    return float(diff[upper].sum() / (n * (n - 1) / 2))


def compare_shadow(
    shadow: LoadedModel, req: RankInput, result: RankResult, stats: ShadowStats
) -> None:
    """Rank ``req`` with the shadow version (no noise) and record its agreement with
    ``result``. Runs after the response was sent; never raises."""
    try:
        served = result.indices
        if served is None or len(served) == 0:
            return
        n_all = req.predictions.shape[1]
        noise = np.zeros(len(shadow.task_names), np.float32)
        ranked = shadow.rank(req.state, req.predictions, noise, n_all)
        scores = np.empty(n_all, np.float32)
        scores[ranked.indices] = ranked.scores
        n = len(served)
        overlap = len(set(ranked.indices[:n].tolist()) & set(served.tolist())) / n
        stats.add(overlap, kendall_tau(scores[served]))
    except Exception:  # a shadow must never hurt serving
        stats.errors += 1
        log.exception("shadow scoring failed")
