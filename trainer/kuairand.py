"""KuaiRand loader: user and video features, interaction logs, sessions and log statistics.

NumPy and the standard library's ``csv`` only (no pandas, no torch), so that the user
simulator can read real user profiles and video durations, and a user with the full dataset
can turn its logs into sessions and calibrate the simulator (SPEC §12).

Formats (KuaiRand, Gao et al. CIKM 2022; see the dataset's README):

* ``user_features_pure.csv``: ``user_id, user_active_degree, is_lowactive_period,
  is_live_streamer, is_video_author, follow_user_num, follow_user_num_range, fans_user_num,
  fans_user_num_range, friend_user_num, friend_user_num_range, register_days,
  register_days_range, onehot_feat0..onehot_feat17``;
* ``video_features_basic_pure.csv``: ``video_id, author_id, video_type, upload_dt, upload_type,
  visible_status, video_duration (ms), server_width, server_height, music_id, music_type, tag``
  (``tag`` may hold several ids, e.g. ``"39,43"``);
* logs (``log_standard_*.csv``, ``log_random_*.csv``): the columns of :data:`LOG_COLUMNS`.

Missing values are coded ``-124`` or left empty (also ``UNKNOWN`` for categorical strings);
they become NaN in float arrays and ``-1`` in integer codes. A missing column or a value that
cannot be parsed raises :class:`KuaiRandFormatError`, naming the file, the column and the line.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Environment variable naming a KuaiRand-Pure folder (the simulator's fallback).
ENV_DIR = "XMTF_KUAIRAND_DIR"
USER_FEATURES_FILE = "user_features_pure.csv"
VIDEO_FEATURES_FILE = "video_features_basic_pure.csv"

#: The two strings that code a missing value (besides ``UNKNOWN`` in categorical columns).
MISSING = ("", "-124")

#: ``user_active_degree`` levels from the least to the most active (``UNKNOWN`` is missing).
ACTIVE_DEGREES: tuple[str, ...] = (
    "day_new",
    "2_14_day_new",
    "30day_retention",
    "single_low_active",
    "low_active",
    "middle_active",
    "high_active",
    "full_active",
)

#: Ordered levels of the ``*_range`` columns (ordinal code = index).
RANGE_LEVELS: dict[str, tuple[str, ...]] = {
    "follow_user_num_range": (
        "0",
        "(0,10]",
        "(10,50]",
        "(50,100]",
        "(100,150]",
        "(150,250]",
        "(250,500]",
        "500+",
    ),
    "fans_user_num_range": (
        "0",
        "[1,10)",
        "[10,100)",
        "[100,1k)",
        "[1k,5k)",
        "[5k,1w)",
        "[1w,10w)",
        "[10w,100w)",
        "[100w,1000w)",
        "1000w+",
    ),
    "friend_user_num_range": (
        "0",
        "[1,5)",
        "[5,30)",
        "[30,60)",
        "[60,120)",
        "[120,250)",
        "250+",
    ),
    "register_days_range": (
        "0-7",
        "8-14",
        "15-30",
        "31-60",
        "61-90",
        "91-180",
        "181-365",
        "366-730",
        "730+",
    ),
}

N_ONEHOT = 18
ONEHOT_COLUMNS: tuple[str, ...] = tuple(f"onehot_feat{i}" for i in range(N_ONEHOT))
USER_COLUMNS: tuple[str, ...] = (
    "user_id",
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num",
    "follow_user_num_range",
    "fans_user_num",
    "fans_user_num_range",
    "friend_user_num",
    "friend_user_num_range",
    "register_days",
    "register_days_range",
    *ONEHOT_COLUMNS,
)
VIDEO_COLUMNS: tuple[str, ...] = (
    "video_id",
    "author_id",
    "video_type",
    "upload_dt",
    "upload_type",
    "visible_status",
    "video_duration",
    "server_width",
    "server_height",
    "music_id",
    "music_type",
    "tag",
)
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
FEEDBACKS: tuple[str, ...] = ("click", "long_view", "like", "follow", "comment", "share")
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


class KuaiRandFormatError(ValueError):
    """A KuaiRand file lacks a column or holds a value that cannot be parsed."""


# ---------------------------------------------------------------------------------- reading
def _open_table(path: Path, required: Sequence[str]) -> tuple[Iterator[list[str]], dict[str, int]]:
    """A csv reader past the header, and the column index of every required column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    handle = path.open(newline="", encoding="utf-8")
    reader = csv.reader(handle)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        handle.close()
        raise KuaiRandFormatError(f"{path}: empty file (no header)") from None
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    index = {name: i for i, name in enumerate(header)}
    missing = [c for c in required if c not in index]
    if missing:
        handle.close()
        raise KuaiRandFormatError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(header has {len(header)} columns: {', '.join(header)})"
        )

    def rows() -> Iterator[list[str]]:
        with handle:
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise KuaiRandFormatError(
                        f"{path}: line {line} has {len(row)} fields, expected {len(header)}"
                    )
                yield row

    return rows(), index


def _read_columns(path: Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Every row of ``columns`` as stripped string arrays (small files only)."""
    rows, index = _open_table(path, columns)
    data = list(rows)
    out = {}
    for name in columns:
        i = index[name]
        out[name] = np.array([r[i].strip() for r in data], dtype=np.str_)
    return out


def _bad_value(
    path: Path, column: str, values: np.ndarray, ok: np.ndarray, what: str, line0: int
) -> None:
    bad = int(np.flatnonzero(~ok)[0])
    raise KuaiRandFormatError(
        f"{path}: column {column!r}, line {line0 + bad + 2}: cannot parse "
        f"{str(values[bad])!r} as {what}"
    )


def _is_missing(values: np.ndarray) -> np.ndarray:
    return (values == "") | (values == "-124")


def _parses(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _to_float(path: Path, column: str, values: np.ndarray, line0: int = 0) -> np.ndarray:
    """Floats with NaN for a missing value; an unparsable value (or a literal NaN) raises.

    ``line0`` is the number of data rows before ``values`` in the file (for error lines).
    """
    values = np.asarray(values, dtype=np.str_)
    missing = _is_missing(values)
    filled = np.where(missing, "nan", values)
    try:
        out = filled.astype(np.float64)
    except ValueError:
        ok = np.array([_parses(v) for v in filled.tolist()], bool)
        _bad_value(path, column, values, ok, "a number", line0)
        raise  # pragma: no cover (_bad_value raises)
    literal_nan = np.isnan(out) & ~missing
    if literal_nan.any():
        _bad_value(path, column, values, ~literal_nan, "a number", line0)
    return out


def _to_int(
    path: Path, column: str, values: np.ndarray, *, required: bool, line0: int = 0
) -> np.ndarray:
    """Integers (``-1`` for a missing value, or an error when ``required``)."""
    f = _to_float(path, column, values, line0)
    nan = np.isnan(f)
    if required and nan.any():
        bad = int(np.flatnonzero(nan)[0])
        raise KuaiRandFormatError(
            f"{path}: column {column!r}, line {line0 + bad + 2}: missing value "
            f"{str(values[bad])!r} in a required column"
        )
    whole = nan | (np.floor(f) == f)
    if not whole.all():
        bad = int(np.flatnonzero(~whole)[0])
        raise KuaiRandFormatError(
            f"{path}: column {column!r}, line {line0 + bad + 2}: "
            f"{str(values[bad])!r} is not an integer"
        )
    return np.where(nan, -1, f).astype(np.int64)


def _to_levels(path: Path, column: str, values: np.ndarray, levels: Sequence[str]) -> np.ndarray:
    """Ordinal codes into ``levels`` (``-1`` for missing / ``UNKNOWN``); other strings raise."""
    code = {level: i for i, level in enumerate(levels)}
    out = np.full(len(values), -1, np.int64)
    for i, v in enumerate(values.tolist()):
        if v in MISSING or v == "UNKNOWN":
            continue
        c = code.get(v)
        if c is None:
            raise KuaiRandFormatError(
                f"{path}: column {column!r}, line {i + 2}: unknown level {v!r} "
                f"(known: {', '.join(levels)})"
            )
        out[i] = c
    return out


def _to_categories(values: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes into the sorted distinct names (``-1`` for missing / ``UNKNOWN``)."""
    missing = _is_missing(values) | (values == "UNKNOWN")
    names = tuple(sorted(set(values[~missing].tolist())))
    lookup = {n: i for i, n in enumerate(names)}
    codes = np.array(
        [-1 if m else lookup[v] for v, m in zip(values.tolist(), missing, strict=True)]
    )
    return codes.astype(np.int64), names


def _parse_tags(path: Path, values: np.ndarray) -> tuple[tuple[int, ...], ...]:
    out = []
    for i, v in enumerate(values.tolist()):
        v = v.strip().strip('"')
        if v in MISSING:
            out.append(())
            continue
        try:
            ids = tuple(int(t) for t in v.split(",") if t.strip() not in MISSING)
        except ValueError:
            raise KuaiRandFormatError(
                f"{path}: column 'tag', line {i + 2}: cannot parse {v!r} as comma-separated tag ids"
            ) from None
        out.append(ids)
    return tuple(out)


# ---------------------------------------------------------------------------- user features
@dataclass(frozen=True)
class UserFeatures:
    """The user table as arrays over users (missing: NaN for floats, ``-1`` for codes)."""

    path: Path
    user_id: np.ndarray  # (N,) int64
    active_degree: np.ndarray  # (N,) int64 index into ACTIVE_DEGREES, -1 unknown
    is_lowactive_period: np.ndarray  # (N,) float64 0/1/NaN
    is_live_streamer: np.ndarray  # (N,) float64 0/1/NaN
    is_video_author: np.ndarray  # (N,) float64 0/1/NaN
    follow_user_num: np.ndarray  # (N,) float64
    fans_user_num: np.ndarray  # (N,) float64
    friend_user_num: np.ndarray  # (N,) float64
    register_days: np.ndarray  # (N,) float64
    ranges: dict[str, np.ndarray]  # *_range column -> (N,) int64 ordinal code, -1 missing
    onehot: np.ndarray  # (N, 18) float64 category ids of onehot_feat0..17, NaN missing

    def __len__(self) -> int:
        return len(self.user_id)

    def encode(self) -> tuple[np.ndarray, tuple[str, ...]]:
        """A dense float32 design matrix ``(N, F)`` and its column names.

        One-hot ``user_active_degree`` (all zero when unknown), the three flags (missing -> 0),
        ``log1p`` of the counts and of ``register_days``, the ``*_range`` ordinals scaled to
        [0, 1] (missing -> 0), the ``onehot_feat*`` ids (missing -> -1) and a flag for users
        lacking them.
        """
        n = len(self)
        cols: list[np.ndarray] = []
        names: list[str] = []
        degree = np.zeros((n, len(ACTIVE_DEGREES)), np.float32)
        known = self.active_degree >= 0
        degree[np.flatnonzero(known), self.active_degree[known]] = 1.0
        cols.append(degree)
        names += [f"active_degree={d}" for d in ACTIVE_DEGREES]
        for name in ("is_lowactive_period", "is_live_streamer", "is_video_author"):
            cols.append(np.nan_to_num(getattr(self, name), nan=0.0)[:, None])
            names.append(name)
        for name in ("follow_user_num", "fans_user_num", "friend_user_num", "register_days"):
            v = np.nan_to_num(getattr(self, name), nan=0.0)
            cols.append(np.log1p(np.maximum(v, 0.0))[:, None])
            names.append(f"log1p_{name}")
        for name, levels in RANGE_LEVELS.items():
            code = self.ranges[name]
            cols.append(np.where(code >= 0, code / (len(levels) - 1), 0.0)[:, None])
            names.append(name)
        cols.append(np.nan_to_num(self.onehot, nan=-1.0))
        names += list(ONEHOT_COLUMNS)
        cols.append(np.isnan(self.onehot).any(axis=1)[:, None])
        names.append("onehot_missing")
        matrix = np.concatenate([c.astype(np.float32) for c in cols], axis=1)
        return matrix, tuple(names)


def load_user_features(path: str | os.PathLike[str]) -> UserFeatures:
    """Read ``user_features_pure.csv`` (or a file of the same columns)."""
    path = Path(path)
    raw = _read_columns(path, USER_COLUMNS)
    user_id = _to_int(path, "user_id", raw["user_id"], required=True)
    floats = {
        name: _to_float(path, name, raw[name])
        for name in (
            "is_lowactive_period",
            "is_live_streamer",
            "is_video_author",
            "follow_user_num",
            "fans_user_num",
            "friend_user_num",
            "register_days",
        )
    }
    ranges = {name: _to_levels(path, name, raw[name], lv) for name, lv in RANGE_LEVELS.items()}
    degree = _to_levels(path, "user_active_degree", raw["user_active_degree"], ACTIVE_DEGREES)
    onehot = np.stack([_to_float(path, c, raw[c]) for c in ONEHOT_COLUMNS], axis=1)
    return UserFeatures(
        path=path,
        user_id=user_id,
        active_degree=degree,
        ranges=ranges,
        onehot=onehot,
        **floats,
    )


# --------------------------------------------------------------------------- video features
@dataclass(frozen=True)
class VideoFeatures:
    """The video table as arrays over videos (missing: NaN for floats, ``-1`` for codes)."""

    path: Path
    video_id: np.ndarray  # (V,) int64
    author_id: np.ndarray  # (V,) int64
    video_type: np.ndarray  # (V,) int64 index into video_type_names, -1 unknown
    video_type_names: tuple[str, ...]
    upload_type: np.ndarray  # (V,) int64 index into upload_type_names, -1 unknown
    upload_type_names: tuple[str, ...]
    upload_dt: np.ndarray  # (V,) str, "" when missing
    visible_status: np.ndarray  # (V,) float64
    duration_s: np.ndarray  # (V,) float64 seconds, NaN when unknown
    server_width: np.ndarray  # (V,) float64
    server_height: np.ndarray  # (V,) float64
    music_id: np.ndarray  # (V,) int64, -1 missing
    music_type: np.ndarray  # (V,) float64
    tags: tuple[tuple[int, ...], ...]  # tag ids per video (empty when missing)

    def __len__(self) -> int:
        return len(self.video_id)

    @property
    def primary_tag(self) -> np.ndarray:
        """(V,) int64 first tag id of each video, ``-1`` when it has none."""
        return np.array([t[0] if t else -1 for t in self.tags], np.int64)

    def tag_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Multi-hot ``(V, T)`` float32 over the sorted distinct tag ids, and those ids."""
        ids = np.array(sorted({t for tags in self.tags for t in tags}), np.int64)
        col = {int(t): j for j, t in enumerate(ids)}
        out = np.zeros((len(self), len(ids)), np.float32)
        for i, tags in enumerate(self.tags):
            for t in tags:
                out[i, col[t]] = 1.0
        return out, ids


def load_video_features(path: str | os.PathLike[str]) -> VideoFeatures:
    """Read ``video_features_basic_pure.csv`` (or a file of the same columns)."""
    path = Path(path)
    raw = _read_columns(path, VIDEO_COLUMNS)
    video_type, video_type_names = _to_categories(raw["video_type"])
    upload_type, upload_type_names = _to_categories(raw["upload_type"])
    upload_dt = np.where(_is_missing(raw["upload_dt"]), "", raw["upload_dt"])
    return VideoFeatures(
        path=path,
        video_id=_to_int(path, "video_id", raw["video_id"], required=True),
        author_id=_to_int(path, "author_id", raw["author_id"], required=False),
        video_type=video_type,
        video_type_names=video_type_names,
        upload_type=upload_type,
        upload_type_names=upload_type_names,
        upload_dt=upload_dt,
        visible_status=_to_float(path, "visible_status", raw["visible_status"]),
        duration_s=_to_float(path, "video_duration", raw["video_duration"]) / 1000.0,
        server_width=_to_float(path, "server_width", raw["server_width"]),
        server_height=_to_float(path, "server_height", raw["server_height"]),
        music_id=_to_int(path, "music_id", raw["music_id"], required=False),
        music_type=_to_float(path, "music_type", raw["music_type"]),
        tags=_parse_tags(path, raw["tag"]),
    )


def find_data_dir(*candidates: str | os.PathLike[str] | None) -> Path | None:
    """The first of ``candidates``, then ``$XMTF_KUAIRAND_DIR``, holding both feature files."""
    env = os.environ.get(ENV_DIR)
    for c in (*candidates, env):
        if c is None or str(c) == "":
            continue
        p = Path(c).expanduser()
        if (p / USER_FEATURES_FILE).is_file() and (p / VIDEO_FEATURES_FILE).is_file():
            return p
    return None


# ------------------------------------------------------------------------------------ logs
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
    rows, index = _open_table(path, LOG_COLUMNS)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in LOG_COLUMNS}
    done = 0

    def flush(chunk: list[list[str]]) -> None:
        for name in LOG_COLUMNS:
            i = index[name]
            values = np.array([r[i].strip() for r in chunk], dtype=np.str_)
            if name in _LOG_FLOAT:
                parts[name].append(_to_float(path, name, values, done))
            else:
                required = name in _LOG_REQUIRED_INT
                parts[name].append(_to_int(path, name, values, required=required, line0=done))

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
