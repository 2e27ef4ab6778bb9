"""Tests of the KuaiRand loader (trainer/sim/kuairand*.py): synthetic fixture and real files."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.real_data import REAL_DIR, needs_real
from trainer.sim.kuairand import (
    ACTIVE_DEGREES,
    ONEHOT_COLUMNS,
    RANGE_LEVELS,
    USER_COLUMNS,
    VIDEO_COLUMNS,
    KuaiRandFormatError,
    find_data_dir,
    load_user_features,
    load_video_features,
)
from trainer.sim.kuairand_logs import (
    COOCCURRENCE_ORDER,
    FEEDBACKS,
    LOG_COLUMNS,
    build_sessions,
    log_statistics,
    read_log,
)

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "kuairand"
USERS = FIXTURE / "user_features_pure.csv"
VIDEOS = FIXTURE / "video_features_basic_pure.csv"
LOGS = [FIXTURE / "log_standard_pure.csv", FIXTURE / "log_random_pure.csv"]
FIXTURE_FILES = (USERS.name, VIDEOS.name, *(p.name for p in LOGS))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, header: list[str] | tuple[str, ...], rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def log_row(user: int, video: int, time_ms: int, **kw: int) -> dict[str, int]:
    row = dict.fromkeys(LOG_COLUMNS, 0)
    row.update(user_id=user, video_id=video, time_ms=time_ms, date=20220408, hourmin=1000)
    row.update(duration_ms=60_000, tab=1)
    row.update(kw)
    return row


# ---------------------------------------------------------------------------------- fixture
def test_fixture_is_small_and_regenerates_identically(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE / "make_fixture.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    total = 0
    for name in FIXTURE_FILES:
        assert (tmp_path / name).read_bytes() == (FIXTURE / name).read_bytes(), name
        total += (FIXTURE / name).stat().st_size
    assert total < 100_000


# ---------------------------------------------------------------------------- user features
def test_user_features_fixture() -> None:
    rows = read_rows(USERS)
    users = load_user_features(USERS)
    n = len(rows)
    assert len(users) == n == 36
    np.testing.assert_array_equal(users.user_id, np.arange(n))
    assert users.user_id.dtype == np.int64 and users.onehot.shape == (n, 18)
    # missing values: -124 and empty cells become NaN, UNKNOWN degree becomes -1
    streamer = np.array([r["is_live_streamer"] for r in rows])
    np.testing.assert_array_equal(np.isnan(users.is_live_streamer), streamer == "-124")
    assert np.all(users.is_live_streamer[streamer == "1"] == 1.0)
    for j, col in enumerate(ONEHOT_COLUMNS):
        empty = np.array([r[col] == "" for r in rows])
        np.testing.assert_array_equal(np.isnan(users.onehot[:, j]), empty)
    assert np.isnan(users.onehot[:, 12:]).all(axis=1).sum() == 3  # users 5, 17, 29
    assert np.isnan(users.onehot[:, 4]).sum() == 4  # users 4, 13, 22, 31
    assert users.active_degree[7] == -1
    known = np.delete(np.arange(n), 7)
    names = [ACTIVE_DEGREES[c] for c in users.active_degree[known]]
    assert names == [rows[i]["user_active_degree"] for i in known]
    # range ordinals are monotone in the counts they bin
    for count, rng in (
        ("follow_user_num", "follow_user_num_range"),
        ("fans_user_num", "fans_user_num_range"),
        ("friend_user_num", "friend_user_num_range"),
        ("register_days", "register_days_range"),
    ):
        code, value = users.ranges[rng], getattr(users, count)
        assert code.min() >= 0 and code.max() < len(RANGE_LEVELS[rng])
        order = np.argsort(value, kind="stable")
        assert np.all(np.diff(code[order]) >= 0), rng
    assert users.fans_user_num[0] == 0 and users.ranges["fans_user_num_range"][0] == 0
    matrix, columns = users.encode()
    assert matrix.shape == (n, len(columns)) and matrix.dtype == np.float32
    assert np.isfinite(matrix).all()
    degree_block = matrix[:, : len(ACTIVE_DEGREES)]
    assert degree_block[7].sum() == 0 and np.all(degree_block[known].sum(axis=1) == 1)
    assert matrix[:, columns.index("onehot_missing")].sum() == 7


# --------------------------------------------------------------------------- video features
def test_video_features_fixture() -> None:
    rows = read_rows(VIDEOS)
    videos = load_video_features(VIDEOS)
    assert len(videos) == len(rows) == 50
    # durations: milliseconds -> seconds, NaN where empty
    raw = np.array([float(r["video_duration"]) if r["video_duration"] else np.nan for r in rows])
    np.testing.assert_allclose(videos.duration_s, raw / 1000.0)
    assert np.isnan(videos.duration_s).sum() == 5  # videos 3, 13, 23, 33, 43
    assert np.nanmin(videos.duration_s) >= 5.0
    # tags: one id, several ids ("39,43"), or none
    for row, tags in zip(rows, videos.tags, strict=True):
        expected = tuple(int(t) for t in row["tag"].split(",")) if row["tag"] else ()
        assert tags == expected
    assert any(len(t) >= 2 for t in videos.tags) and any(len(t) == 0 for t in videos.tags)
    assert (39, 43) in videos.tags
    primary = videos.primary_tag
    assert np.all((primary == -1) == np.array([len(t) == 0 for t in videos.tags]))
    multi_hot, tag_ids = videos.tag_matrix()
    assert multi_hot.shape == (50, len(tag_ids))
    np.testing.assert_array_equal(multi_hot.sum(axis=1), [len(t) for t in videos.tags])
    # categories: codes into sorted names, UNKNOWN -> -1
    assert videos.video_type_names == ("AD", "NORMAL")
    assert videos.video_type[31] == -1 and videos.video_type_names[videos.video_type[0]] == "AD"
    assert "UNKNOWN" not in videos.upload_type_names
    assert all(
        (code == -1) == (row["upload_type"] == "UNKNOWN")
        for code, row in zip(videos.upload_type, rows, strict=True)
    )
    assert np.isnan(videos.music_type).sum() == 5
    assert videos.upload_dt[0].startswith("2022-04-")


# -------------------------------------------------------------------------------------- logs
def test_read_log_concatenates_files() -> None:
    log = read_log(LOGS)
    parts = [read_log(p) for p in LOGS]
    assert len(log) == sum(len(p) for p in parts) == 360
    assert set(log.columns) == set(LOG_COLUMNS)
    np.testing.assert_array_equal(log["time_ms"], np.concatenate([p["time_ms"] for p in parts]))
    assert log["user_id"].dtype == np.int64 and log["play_time_ms"].dtype == np.float64
    assert set(np.unique(log["is_rand"])) == {0, 1}
    first = next(iter(log))
    assert set(first) == set(LOG_COLUMNS)
    assert read_log(str(LOGS[0]))["user_id"].shape == (320,)


def test_long_view_semantics_in_fixture() -> None:
    log = read_log(LOGS)
    rule = log["play_time_ms"] >= np.minimum(log["duration_ms"], 18_000)
    np.testing.assert_array_equal(log["long_view"] == 1, rule)
    assert np.all(log["play_time_ms"][log["is_click"] == 0] == 0)


def test_sessions_fixture_invariants() -> None:
    log = read_log(LOGS)
    sessions = build_sessions(log, gap_minutes=30, page_size=6)
    gap_ms = 30 * 60_000
    assert sum(s.n_items for s in sessions) == len(log)
    keys = [(s.user_id, s.start_ms) for s in sessions]
    assert keys == sorted(keys)
    n_pages = 0
    for i, s in enumerate(sessions):
        times = np.concatenate([r.time_ms for r in s.requests])
        assert np.all(np.diff(times) >= 0) and np.all(np.diff(times) <= gap_ms)
        sizes = [len(r.video_ids) for r in s.requests]
        assert all(1 <= k <= 6 for k in sizes) and all(k == 6 for k in sizes[:-1])
        n_pages += len(sizes)
        for r in s.requests:
            assert r.signals.shape == (len(r.video_ids), 6) and r.signals.dtype == np.int8
            # long view: watch >= min(duration, 18 s); nothing watched without a click here
            lv = r.watch_time >= np.minimum(r.duration_s, 18.0) - 1e-3
            np.testing.assert_array_equal(r.signals[:, 1] == 1, lv)
        if i + 1 < len(sessions) and sessions[i + 1].user_id == s.user_id:
            assert sessions[i + 1].start_ms - s.end_ms > gap_ms
    assert len(sessions) > len(np.unique(log["user_id"]))  # users have several sessions
    assert n_pages > len(sessions)  # some sessions span several pages
    assert sum(s.watch_time for s in sessions) == pytest.approx(
        log["play_time_ms"].sum() / 1000, rel=1e-5
    )


def test_sessions_split_by_gap_and_page(tmp_path: Path) -> None:
    minute = 60_000
    rows = [
        # user 2 comes first in the file and its rows are out of order
        log_row(2, 7, 5 * minute, is_click=1, long_view=1, play_time_ms=40_000),
        log_row(2, 8, 0),
        # user 1: a gap of exactly 30 minutes stays in the session, 30 min + 1 ms splits
        log_row(1, 1, 0, is_click=1, long_view=1, is_follow=1, is_forward=1, play_time_ms=25_500),
        log_row(1, 2, minute, is_click=1, is_like=1, is_comment=1, play_time_ms=3_000),
        log_row(1, 3, 31 * minute),
        log_row(1, 4, 61 * minute + 1),
    ]
    rows += [log_row(3, 10 + k, 1000 * k) for k in range(13)]  # one session, 13 items
    path = write_rows(tmp_path / "log.csv", LOG_COLUMNS, rows)
    sessions = build_sessions(read_log(path), gap_minutes=30, page_size=6)
    assert [s.user_id for s in sessions] == [1, 1, 2, 3]
    first, second, user2, user3 = sessions
    assert [r.video_ids.tolist() for r in first.requests] == [[1, 2, 3]]
    assert [r.video_ids.tolist() for r in second.requests] == [[4]]
    assert [r.video_ids.tolist() for r in user2.requests] == [[8, 7]]
    assert [len(r.video_ids) for r in user3.requests] == [6, 6, 1]
    assert user3.requests[2].video_ids.tolist() == [22]
    # feedback order: click, long_view, like, follow, comment, share (= is_forward)
    assert FEEDBACKS == ("click", "long_view", "like", "follow", "comment", "share")
    np.testing.assert_array_equal(first.requests[0].signals[0], [1, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(first.requests[0].signals[1], [1, 0, 1, 0, 1, 0])
    np.testing.assert_allclose(first.requests[0].watch_time, [25.5, 3.0, 0.0])
    np.testing.assert_allclose(user2.requests[0].watch_time, [0.0, 40.0])
    assert first.start_ms == 0 and first.end_ms == 31 * minute
    # page size and gap are parameters
    one = build_sessions(read_log(path), gap_minutes=60, page_size=2)
    assert [s.n_items for s in one] == [4, 2, 13]
    assert [len(r.video_ids) for r in one[0].requests] == [2, 2]
    with pytest.raises(ValueError, match="page_size"):
        build_sessions(read_log(path), page_size=0)


def test_log_statistics_fixture() -> None:
    log = read_log(LOGS)
    stats = log_statistics(log)
    assert stats["n_interactions"] == 360 and stats["n_users"] == 30
    rates = stats["positive_rate"]
    columns = ("is_click", "long_view", "is_like", "is_follow", "is_comment", "is_forward")
    for name, col in zip(FEEDBACKS, columns, strict=True):
        assert rates[name] == pytest.approx(log[col].mean())
    assert rates["hate"] == pytest.approx(log["is_hate"].mean())
    assert 0 < rates["long_view"] < rates["click"]
    assert all(rates[t] > 0 for t in ("like", "follow", "comment", "share"))
    cooc = np.array(stats["cooccurrence"]["counts"])
    assert stats["cooccurrence"]["order"] == list(COOCCURRENCE_ORDER)
    assert cooc.shape == (7, 7) and np.array_equal(cooc, cooc.T)
    click, lv = COOCCURRENCE_ORDER.index("click"), COOCCURRENCE_ORDER.index("long_view")
    assert cooc[click, click] == log["is_click"].sum()
    assert cooc[lv, click] == np.sum((log["long_view"] == 1) & (log["is_click"] == 1))
    assert np.all(cooc <= np.diag(cooc)[None, :])
    per_user = np.unique(log["user_id"], return_counts=True)[1]
    assert stats["interactions_per_user"]["min"] == per_user.min()
    assert stats["interactions_per_user"]["max"] == per_user.max()
    assert stats["long_view_rule_agreement"] == 1.0
    assert stats["sessions"]["count"] == len(build_sessions(log))
    assert sum(stats["active_day_gap"].values()) == pytest.approx(1.0)


def test_log_statistics_active_day_gaps(tmp_path: Path) -> None:
    rows = [
        log_row(1, 1, 0, date=20220408),
        log_row(1, 2, 1, date=20220409),
        log_row(1, 3, 2, date=20220409),
        log_row(1, 4, 3, date=20220412),
        log_row(2, 5, 0, date=20220430),
        log_row(2, 6, 1, date=20220501),  # across a month end
    ]
    stats = log_statistics(read_log(write_rows(tmp_path / "log.csv", LOG_COLUMNS, rows)))
    assert stats["active_day_gap"] == {"1": pytest.approx(2 / 3), "3": pytest.approx(1 / 3)}


def test_find_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XMTF_KUAIRAND_DIR", raising=False)
    assert find_data_dir(tmp_path, FIXTURE) == FIXTURE
    assert find_data_dir(tmp_path, None) is None
    monkeypatch.setenv("XMTF_KUAIRAND_DIR", str(FIXTURE))
    assert find_data_dir(tmp_path) == FIXTURE


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("source", "columns", "loader", "dropped"),
    [
        (USERS, USER_COLUMNS, load_user_features, "register_days"),
        (VIDEOS, VIDEO_COLUMNS, load_video_features, "video_duration"),
        (LOGS[0], LOG_COLUMNS, read_log, "play_time_ms"),
    ],
)
def test_missing_column_names_file_and_column(
    tmp_path: Path, source: Path, columns: tuple[str, ...], loader, dropped: str
) -> None:
    rows = read_rows(source)
    header = [c for c in columns if c != dropped]
    path = write_rows(tmp_path / f"no_{dropped}.csv", header, rows)
    with pytest.raises(KuaiRandFormatError, match=rf"no_{dropped}\.csv.*'{dropped}'"):
        loader(path)


def test_unparsable_values_name_file_column_and_line(tmp_path: Path) -> None:
    rows = read_rows(USERS)
    rows[3]["follow_user_num"] = "many"
    path = write_rows(tmp_path / "users.csv", USER_COLUMNS, rows)
    with pytest.raises(KuaiRandFormatError, match=r"users\.csv.*'follow_user_num', line 5.*many"):
        load_user_features(path)
    rows = read_rows(USERS)
    rows[0]["fans_user_num_range"] = "[7,8)"
    path = write_rows(tmp_path / "users2.csv", USER_COLUMNS, rows)
    with pytest.raises(KuaiRandFormatError, match=r"'fans_user_num_range', line 2.*\[7,8\)"):
        load_user_features(path)
    videos = read_rows(VIDEOS)
    videos[1]["tag"] = "39;43"
    path = write_rows(tmp_path / "videos.csv", VIDEO_COLUMNS, videos)
    with pytest.raises(KuaiRandFormatError, match=r"videos\.csv.*'tag', line 3"):
        load_video_features(path)
    log = [log_row(1, 1, 0), log_row(1, 2, 5)]
    log[1]["is_click"] = ""
    path = write_rows(tmp_path / "log.csv", LOG_COLUMNS, log)
    with pytest.raises(KuaiRandFormatError, match=r"log\.csv.*'is_click', line 3.*missing"):
        read_log(path)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_log(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------- real features
@needs_real
def test_real_user_features() -> None:
    assert REAL_DIR is not None
    users = load_user_features(REAL_DIR / "user_features_pure.csv")
    assert len(users) == 27_285
    assert len(np.unique(users.user_id)) == 27_285
    assert np.isnan(users.onehot[:, 12:]).all(axis=1).sum() == 714
    assert np.isnan(users.is_live_streamer).sum() > 0
    assert np.all(users.active_degree >= -1)
    assert ACTIVE_DEGREES[int(np.bincount(users.active_degree + 1).argmax()) - 1] == "full_active"
    for name in RANGE_LEVELS:
        assert users.ranges[name].min() >= 0, name
    matrix, columns = users.encode()
    assert matrix.shape == (27_285, len(columns)) and np.isfinite(matrix).all()


@needs_real
def test_real_video_features() -> None:
    assert REAL_DIR is not None
    videos = load_video_features(REAL_DIR / "video_features_basic_pure.csv")
    assert len(videos) == 7_583
    known = videos.duration_s[~np.isnan(videos.duration_s)]
    assert len(known) == 7_344
    q10, q50, q90 = np.percentile(known, [10, 50, 90])
    assert q50 == pytest.approx(81.2, abs=0.5)
    assert q10 == pytest.approx(14.6, abs=0.5)
    assert q90 == pytest.approx(237.9, abs=1.0)
    assert any(len(t) > 1 for t in videos.tags)
    assert "NORMAL" in videos.video_type_names and "AD" in videos.video_type_names
