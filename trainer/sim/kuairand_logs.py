"""KuaiRand interaction logs: reading ``log_*.csv``, sessions of pages, and log statistics.

NumPy and the standard library's ``csv`` only; the parsing helpers and the missing-value rules
are :mod:`trainer.sim.kuairand`'s (SPEC §12).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.tasks import DEFAULT_TASK_NAMES
from trainer.sim.kuairand import open_table, to_float, to_int

LOG_COLUMNS: tuple[str, ...] = (
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "duration_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "is_rand",
    "tab",
)
#: Log columns that must be present on every row (integers).
_LOG_REQUIRED_INT = (
    "user_id",
    "video_id",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
)
#: Log columns kept as integers with ``-1`` for a missing value.
_LOG_OPTIONAL_INT = ("date", "hourmin", "is_profile_enter", "is_rand", "tab")
#: Log columns kept as float64 with NaN for a missing value.
_LOG_FLOAT = ("play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time")

#: The six feedbacks of a request, in the simulator's task order; ``share`` is ``is_forward``.
FEEDBACKS: tuple[str, ...] = DEFAULT_TASK_NAMES
_FEEDBACK_COLUMNS = ("is_click", "long_view", "is_like", "is_follow", "is_comment", "is_forward")
#: Row and column order of the co-occurrence matrix (as in the dataset's README).
COOCCURRENCE_ORDER: tuple[str, ...] = (
    "hate",
    "forward",
    "follow",
    "comment",
    "like",
    "long_view",
    "click",
)
_COOC_COLUMNS = (
    "is_hate",
    "is_forward",
    "is_follow",
    "is_comment",
    "is_like",
    "long_view",
    "is_click",
)
#: KuaiRand's long-view rule: play time >= min(duration, 18 s).
LONG_VIEW_MS = 18_000.0
_CHUNK_ROWS = 200_000


@dataclass(frozen=True)
class InteractionLog:
    """Interactions as columns, in file order (one array per :data:`LOG_COLUMNS` entry).

    Integer columns are int64 (``date``, ``hourmin``, ``is_profile_enter``, ``is_rand`` and
    ``tab`` hold ``-1`` when missing); ``play_time_ms``, ``duration_ms``,
    ``profile_stay_time`` and ``comment_stay_time`` are float64 with NaN when missing.
    """

    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["user_id"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __iter__(self) -> Iterator[dict[str, float | int]]:
        """One dict per interaction (slow; for inspection)."""
        for i in range(len(self)):
            yield {name: self.columns[name][i].item() for name in LOG_COLUMNS}

    def feedbacks(self) -> np.ndarray:
        """(N, 6) int8 feedbacks in the order of :data:`FEEDBACKS`."""
        return np.stack([self.columns[c] for c in _FEEDBACK_COLUMNS], axis=1).astype(np.int8)


def _read_log_file(path: Path) -> dict[str, np.ndarray]:
    rows, index = open_table(path, LOG_COLUMNS)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in LOG_COLUMNS}
    done = 0

    def flush(chunk: list[list[str]]) -> None:
        for name in LOG_COLUMNS:
            i = index[name]
            values = np.array([r[i].strip() for r in chunk], dtype=np.str_)
            if name in _LOG_FLOAT:
                parts[name].append(to_float(path, name, values, done))
            else:
                required = name in _LOG_REQUIRED_INT
                parts[name].append(to_int(path, name, values, required=required, line0=done))

    chunk: list[list[str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == _CHUNK_ROWS:
            flush(chunk)
            done += len(chunk)
            chunk = []
    if chunk or done == 0:
        flush(chunk)
    out = {}
    for name in LOG_COLUMNS:
        dtype = np.float64 if name in _LOG_FLOAT else np.int64
        out[name] = np.concatenate(parts[name]).astype(dtype)
    return out


def read_log(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> InteractionLog:
    """Read one or several KuaiRand log files (same columns) into one :class:`InteractionLog`.

    Files are concatenated in the given order; rows keep their file order.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    tables = [_read_log_file(Path(p)) for p in paths]
    if not tables:
        raise ValueError("read_log needs at least one file")
    columns = {name: np.concatenate([t[name] for t in tables]) for name in LOG_COLUMNS}
    return InteractionLog(columns)


# -------------------------------------------------------------------------------- sessions
@dataclass(frozen=True)
class Request:
    """One feed page: at most ``page_size`` consecutive items of a session."""

    video_ids: np.ndarray  # (n,) int64
    time_ms: np.ndarray  # (n,) int64
    signals: np.ndarray  # (n, 6) int8, order FEEDBACKS (share = is_forward)
    watch_time: np.ndarray  # (n,) float32 seconds (play_time_ms / 1000, 0 when missing)
    duration_s: np.ndarray  # (n,) float32 seconds (NaN when unknown)


@dataclass(frozen=True)
class Session:
    """A user's interactions with no gap longer than ``gap_minutes``, split into requests."""

    user_id: int
    requests: tuple[Request, ...]

    @property
    def start_ms(self) -> int:
        return int(self.requests[0].time_ms[0])

    @property
    def end_ms(self) -> int:
        return int(self.requests[-1].time_ms[-1])

    @property
    def n_items(self) -> int:
        return sum(len(r.video_ids) for r in self.requests)

    @property
    def watch_time(self) -> float:
        """Total watch time of the session in seconds."""
        return float(sum(float(r.watch_time.sum()) for r in self.requests))


def _session_bounds(log: InteractionLog, gap_minutes: float) -> tuple[np.ndarray, np.ndarray]:
    """The order sorting by (user, time) and the start index of every session in it."""
    user, t = log["user_id"], log["time_ms"]
    order = np.lexsort((t, user))
    u, ts = user[order], t[order]
    new = np.ones(len(order), bool)
    if len(order) > 1:
        new[1:] = (u[1:] != u[:-1]) | (np.diff(ts) > gap_minutes * 60_000.0)
    return order, np.flatnonzero(new)


def build_sessions(
    log: InteractionLog, gap_minutes: float = 30.0, page_size: int = 6
) -> list[Session]:
    """Sessions of every user, by user id then time.

    Interactions are sorted by user and ``time_ms`` (ties keep the file order); a user's
    session ends where the next interaction comes more than ``gap_minutes`` later. Each session
    is cut into requests of ``page_size`` consecutive items (the last one may be shorter).
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    if gap_minutes < 0:
        raise ValueError(f"gap_minutes must be >= 0, got {gap_minutes}")
    if len(log) == 0:
        return []
    order, starts = _session_bounds(log, gap_minutes)
    video = log["video_id"][order]
    time_ms = log["time_ms"][order]
    signals = log.feedbacks()[order]
    watch = (np.nan_to_num(log["play_time_ms"][order], nan=0.0) / 1000.0).astype(np.float32)
    duration = (log["duration_ms"][order] / 1000.0).astype(np.float32)
    users = log["user_id"][order]
    ends = np.append(starts[1:], len(order))
    sessions = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        requests = tuple(
            Request(
                video_ids=video[a : min(a + page_size, e)],
                time_ms=time_ms[a : min(a + page_size, e)],
                signals=signals[a : min(a + page_size, e)],
                watch_time=watch[a : min(a + page_size, e)],
                duration_s=duration[a : min(a + page_size, e)],
            )
            for a in range(s, e, page_size)
        )
        sessions.append(Session(user_id=int(users[s]), requests=requests))
    return sessions


# ------------------------------------------------------------------------------ statistics
def _day_ordinal(date: np.ndarray) -> np.ndarray:
    """YYYYMMDD integers -> days since 1970-01-01."""
    y, m, d = date // 10000, (date // 100) % 100, date % 100
    months = (y - 1970) * 12 + (m - 1)
    days = months.astype("datetime64[M]").astype("datetime64[D]") + (d - 1).astype("timedelta64[D]")
    return days.astype(np.int64)


def log_statistics(log: InteractionLog, gap_minutes: float = 30.0) -> dict:
    """Statistics to calibrate the simulator against (JSON-serialisable).

    ``positive_rate`` per feedback (the six of :data:`FEEDBACKS` plus ``hate``),
    ``cooccurrence`` counts in the README's order (:data:`COOCCURRENCE_ORDER`, diagonal =
    each feedback's own count), ``interactions_per_user`` (min, median, mean, max),
    ``long_view_rule_agreement`` (share of rows where ``long_view`` equals
    ``play_time >= min(duration, 18 s)``, over rows with both times known), sessions (count,
    mean items and watch time) and ``active_day_gap`` (P(k days between a user's consecutive
    active days)).
    """
    n = len(log)
    if n == 0:
        raise ValueError("log_statistics needs a non-empty log")
    fb = log.feedbacks().astype(np.float64)
    rates = {name: float(fb[:, j].mean()) for j, name in enumerate(FEEDBACKS)}
    rates["hate"] = float(log["is_hate"].mean())
    cooc_cols = np.stack([log[c] for c in _COOC_COLUMNS], axis=1).astype(np.int64)
    cooc = cooc_cols.T @ cooc_cols
    _, per_user = np.unique(log["user_id"], return_counts=True)
    play, dur = log["play_time_ms"], log["duration_ms"]
    known = ~np.isnan(play) & ~np.isnan(dur)
    rule = play >= np.minimum(dur, LONG_VIEW_MS)
    agreement = (
        float(np.mean(rule[known] == (log["long_view"][known] == 1))) if known.any() else None
    )
    order, starts = _session_bounds(log, gap_minutes)
    ends = np.append(starts[1:], n)
    watch = np.nan_to_num(play[order], nan=0.0) / 1000.0
    session_watch = np.add.reduceat(watch, starts)
    gaps: dict[str, float] = {}
    dates = log["date"]
    valid = dates > 0
    if valid.any():
        pairs = np.unique(np.stack([log["user_id"][valid], _day_ordinal(dates[valid])], 1), axis=0)
        same = pairs[1:, 0] == pairs[:-1, 0]
        diffs = (pairs[1:, 1] - pairs[:-1, 1])[same]
        if len(diffs):
            values, counts = np.unique(diffs, return_counts=True)
            gaps = {str(int(v)): float(c / len(diffs)) for v, c in zip(values, counts, strict=True)}
    return {
        "n_interactions": n,
        "n_users": len(per_user),
        "n_videos": len(np.unique(log["video_id"])),
        "positive_rate": rates,
        "cooccurrence": {"order": list(COOCCURRENCE_ORDER), "counts": cooc.tolist()},
        "interactions_per_user": {
            "min": int(per_user.min()),
            "median": float(np.median(per_user)),
            "mean": float(per_user.mean()),
            "max": int(per_user.max()),
        },
        "long_view_rule_agreement": agreement,
        "sessions": {
            "gap_minutes": gap_minutes,
            "count": len(starts),
            "items_mean": float(np.mean(ends - starts)),
            "watch_time_mean_s": float(session_watch.mean()),
        },
        "active_day_gap": gaps,
    }
