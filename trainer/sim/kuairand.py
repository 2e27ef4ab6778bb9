"""KuaiRand loader: the user and video feature tables (logs: :mod:`trainer.sim.kuairand_logs`).

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
from collections.abc import Iterator, Sequence
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


class KuaiRandFormatError(ValueError):
    """A KuaiRand file lacks a column or holds a value that cannot be parsed."""


# ---------------------------------------------------------------------------------- reading
def open_table(path: Path, required: Sequence[str]) -> tuple[Iterator[list[str]], dict[str, int]]:
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
    rows, index = open_table(path, columns)
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


def to_float(path: Path, column: str, values: np.ndarray, line0: int = 0) -> np.ndarray:
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


def to_int(
    path: Path, column: str, values: np.ndarray, *, required: bool, line0: int = 0
) -> np.ndarray:
    """Integers (``-1`` for a missing value, or an error when ``required``)."""
    f = to_float(path, column, values, line0)
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
    out: list[tuple[int, ...]] = []
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
    user_id = to_int(path, "user_id", raw["user_id"], required=True)
    floats = {
        name: to_float(path, name, raw[name])
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
    onehot = np.stack([to_float(path, c, raw[c]) for c in ONEHOT_COLUMNS], axis=1)
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
        video_id=to_int(path, "video_id", raw["video_id"], required=True),
        author_id=to_int(path, "author_id", raw["author_id"], required=False),
        video_type=video_type,
        video_type_names=video_type_names,
        upload_type=upload_type,
        upload_type_names=upload_type_names,
        upload_dt=upload_dt,
        visible_status=to_float(path, "visible_status", raw["visible_status"]),
        duration_s=to_float(path, "video_duration", raw["video_duration"]) / 1000.0,
        server_width=to_float(path, "server_width", raw["server_width"]),
        server_height=to_float(path, "server_height", raw["server_height"]),
        music_id=to_int(path, "music_id", raw["music_id"], required=False),
        music_type=to_float(path, "music_type", raw["music_type"]),
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
