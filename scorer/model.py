"""Loading model versions into ONNX Runtime and swapping them atomically.

A version is fully verified (manifest schema, sha256 of every file, graph input/output names
and shapes against the manifest) and warmed up before it replaces the served one; the swap is a
single reference assignment, so a request sees either the old or the new model, never a mix.
Requests are served by one combined graph (:mod:`scorer.serving_graph`), checked at load time
against the version's own two graphs plus the numpy outer stage and top-N.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

from scorer.serving_graph import ServingGraphError, build_serving_graph
from shared.fusion import fused_scores
from shared.manifest import Manifest, ManifestError, read_current, read_manifest, verify_files

log = logging.getLogger(__name__)


class ModelRefused(Exception):
    """A version that cannot be served (corrupt, incompatible, failing to load)."""


@dataclass(frozen=True)
class Ranked:
    """What the serving graph returns for one request."""

    action: np.ndarray  # (K,) applied action (actor + noise, clipped)
    noise: np.ndarray  # (K,) noise actually applied
    scores: np.ndarray  # (n,) fused scores of the top n, best first
    indices: np.ndarray  # (n,) int64 candidate indices of the top n


@dataclass(frozen=True)
class LoadedModel:
    """One served model version: its ONNX sessions plus what the request path needs.

    ``serving`` answers requests (:meth:`rank`); ``mfc`` and ``actor`` are the version's own
    graphs, the reference the serving graph was checked against (:meth:`infer`).
    """

    version: str
    manifest: Manifest
    mfc: ort.InferenceSession
    actor: ort.InferenceSession
    serving: ort.InferenceSession
    loaded_at: str
    task_names: tuple[str, ...] = field(init=False)
    state_dim: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_names", tuple(self.manifest.task_names))
        object.__setattr__(self, "state_dim", self.manifest.state_dim)

    def infer(self, state: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q_inner (K, N), action (K,)) for state (1, D) and predictions (K, N), float32."""
        (q_inner,) = self.mfc.run(None, {"state": state, "predictions": predictions})
        (action,) = self.actor.run(None, {"state": state})
        return q_inner, action[0]

    def rank(self, state: np.ndarray, predictions: np.ndarray, noise: np.ndarray, n: int) -> Ranked:
        """The top ``n`` (at most N) candidates for state (1, D), predictions (K, N) and
        exploration noise (K,), all float32, in one ONNX Runtime call."""
        k = np.array([min(n, predictions.shape[1])], np.int64)
        feed = {"state": state, "predictions": predictions, "noise": noise, "k": k}
        return Ranked(*self.serving.run(None, feed))


def _session(graph: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    # One intra-op thread per session: the request's batch is small, and several spinning
    # threads per worker on a few cores cost more in tail latency than they win.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])


def _check_io(sess: ort.InferenceSession, inputs: list[str], outputs: list[str], what: str) -> None:
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    if got_in != inputs or got_out != outputs:
        raise ModelRefused(
            f"{what}: graph has inputs {got_in} / outputs {got_out}, "
            f"manifest says {inputs} / {outputs}"
        )


def load_version(version_dir: Path) -> LoadedModel:
    """Verify, load and warm one version directory; raise :class:`ModelRefused` if unusable."""
    try:
        manifest = read_manifest(version_dir)
        verify_files(version_dir, manifest)
    except ManifestError as exc:
        raise ModelRefused(str(exc)) from exc
    if manifest.version != version_dir.name:
        raise ModelRefused(
            f"manifest version {manifest.version!r} != directory {version_dir.name!r}"
        )
    k, d = len(manifest.tasks), manifest.state_dim
    try:
        # each graph is read once: its bytes feed both its own session and the serving graph
        mfc_onnx = (version_dir / manifest.mfc.file).read_bytes()
        actor_onnx = (version_dir / manifest.actor.file).read_bytes()
        mfc = _session(mfc_onnx)
        actor = _session(actor_onnx)
    except Exception as exc:  # ORT raises its own exception types for corrupt graphs
        raise ModelRefused(f"ONNX Runtime cannot load the graphs: {exc}") from exc
    _check_io(mfc, manifest.mfc.inputs, manifest.mfc.outputs, "mfc")
    _check_io(actor, manifest.actor.inputs, manifest.actor.outputs, "actor")
    try:
        serving = _session(
            build_serving_graph(
                mfc_onnx, actor_onnx, k, d, manifest.action_low, manifest.action_high
            )
        )
    except ServingGraphError as exc:
        raise ModelRefused(f"cannot build the serving graph: {exc}") from exc
    except Exception as exc:
        raise ModelRefused(f"ONNX Runtime cannot load the serving graph: {exc}") from exc
    model = LoadedModel(
        version=manifest.version,
        manifest=manifest,
        mfc=mfc,
        actor=actor,
        serving=serving,
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    try:  # warm-up runs (the first run of a session is slow) that also prove the graphs
        _check_serving(model, k, d)
    except ModelRefused:
        raise
    except Exception as exc:
        raise ModelRefused(f"warm-up inference failed: {exc}") from exc
    return model


def _check_serving(model: LoadedModel, k: int, d: int, tolerance: float = 1e-5) -> None:
    """The serving graph must rank as the version's two graphs + the numpy outer stage do.

    Compared up to float rounding: the scores it returns are the reference scores of the
    candidates it returns, in order, and no candidate left out scores better than the last
    one returned; equal scores come in index order.
    """
    rng = np.random.default_rng(0)
    low, high = model.manifest.action_low, model.manifest.action_high
    for n, top in ((8, 8), (1, 5), (64, 10)):
        state = rng.normal(size=(1, d)).astype(np.float32)
        preds = rng.random((k, n), dtype=np.float32)
        preds[:, n // 2 :] = preds[:, : n - n // 2]  # repeated candidates make ties
        noise = rng.normal(0.0, 0.5 * (high - low), k).astype(np.float32)
        q, mu = model.infer(state, preds)
        if q.shape != (k, n) or mu.shape != (k,):
            raise ModelRefused(
                f"graphs return shapes {q.shape} / {mu.shape}, expected {(k, n)} / {(k,)}"
            )
        action = np.clip(mu + noise, low, high)
        reference = fused_scores(q, action)
        got = model.rank(state, preds, noise, top)
        idx, scores = got.indices, got.scores
        cutoff = np.sort(reference)[::-1][len(idx) - 1] if len(idx) else np.inf
        ties = scores[1:] == scores[:-1]
        problems = {
            "count": len(idx) != min(top, n) or len(set(idx.tolist())) != len(idx),
            "scores": not np.allclose(scores, reference[idx], rtol=0, atol=tolerance),
            "order": bool((np.diff(scores) > 0).any()),
            "top": bool(len(idx) and scores[-1] < cutoff - tolerance),
            "ties": bool((idx[1:][ties] < idx[:-1][ties]).any()),
            "action": not np.allclose(got.action, action, rtol=0, atol=tolerance),
            "noise": not np.allclose(got.noise, action - mu, rtol=0, atol=tolerance),
        }
        if any(problems.values()):
            failed = ", ".join(name for name, bad in problems.items() if bad)
            raise ModelRefused(
                f"the serving graph disagrees with the version's graphs at n={n} ({failed})"
            )


def compatible(old: Manifest, new: Manifest) -> str | None:
    """Why ``new`` cannot replace ``old`` under live traffic, or None if it can."""
    if [(t.name, t.direction) for t in old.tasks] != [(t.name, t.direction) for t in new.tasks]:
        return f"task list changed from {old.task_names} to {new.task_names}"
    if old.state_dim != new.state_dim:
        return f"state_dim changed from {old.state_dim} to {new.state_dim}"
    return None


class ModelStore:
    """Holds the served model; :meth:`refresh` follows ``CURRENT`` (blocking: run it in a thread).

    Counters (for ``/metrics``): ``reloads`` (versions swapped in) and ``refusals`` (versions
    refused). A refused version is not retried until ``CURRENT`` names another one.
    """

    def __init__(self, model_dir: Path, allow_schema_change: bool = False) -> None:
        self.model_dir = Path(model_dir)
        self.allow_schema_change = allow_schema_change
        self.current: LoadedModel | None = None
        self.reloads = 0
        self.refusals = 0
        self.last_error: str | None = None
        self._refused: str | None = None
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> bool:
        """Load the version named by ``CURRENT`` if it differs from the served one.

        Returns True when a new version was swapped in.
        """
        with self._lock:
            try:
                name = read_current(self.model_dir)
            except (ManifestError, OSError) as exc:
                return self._refuse(f"cannot read CURRENT: {exc}", None)
            if name is None:
                return False
            served = self.current.version if self.current else None
            if name == served or (name == self._refused and not force):
                return False
            try:
                model = load_version(self.model_dir / name)
            except ModelRefused as exc:
                return self._refuse(str(exc), name)
            if self.current is not None and not self.allow_schema_change:
                reason = compatible(self.current.manifest, model.manifest)
                if reason:
                    return self._refuse(f"incompatible with the served model: {reason}", name)
            self.current = model  # the atomic swap
            self.reloads += 1
            self._refused = None
            self.last_error = None
            log.info("serving model version %s (previous: %s)", name, served)
            return True

    def _refuse(self, reason: str, name: str | None) -> bool:
        self.refusals += 1
        self._refused = name
        self.last_error = f"{name}: {reason}" if name else reason
        log.error("refused model version %s: %s", name, reason)
        return False
