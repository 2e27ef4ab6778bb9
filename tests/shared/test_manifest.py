"""Manifest schema, sha256 verification and atomic CURRENT."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import manifest as mf
from shared.tasks import DEFAULT_TASK_NAMES, make_tasks


def _manifest(**kw: object) -> mf.Manifest:
    base: dict[str, object] = dict(
        version="v1",
        created_at="2026-11-24T00:00:00+00:00",
        tasks=[mf.TaskEntry.from_spec(t) for t in make_tasks(["click", "skip"], [1, -1])],
        state_dim=4,
        action_low=-0.45,
        action_high=1.5,
        sha256={"mfc.onnx": "0" * 64, "actor.onnx": "0" * 64},
        checks=mf.ExportChecks(
            parity_max_abs_err=0.0,
            parity_tolerance=1e-5,
            monotonicity_violation_rate=0.0,
            monotonicity_bound=0.01,
        ),
    )
    return mf.Manifest(**{**base, **kw})  # type: ignore[arg-type]


def test_manifest_round_trip(tmp_path: Path) -> None:
    m = _manifest()
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "manifest.json").write_text(m.model_dump_json())
    back = mf.read_manifest(tmp_path / "v1")
    assert back == m and back.task_names == ["click", "skip"]
    assert [t.direction for t in back.task_specs] == [1, -1]


@pytest.mark.parametrize(
    "kw",
    [
        {"action_low": -0.5},  # q(1 + a q) would not stay increasing
        {"action_low": 1.0, "action_high": 0.5},
        {"state_dim": 0},
        {"version": "../evil"},
        {"tasks": []},
    ],
)
def test_invalid_manifests_are_rejected(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _manifest(**kw)


def test_verify_files_checks_sha256_and_paths(tmp_path: Path) -> None:
    (tmp_path / "mfc.onnx").write_bytes(b"mfc")
    (tmp_path / "actor.onnx").write_bytes(b"actor")
    good = {n: mf.sha256_file(tmp_path / n) for n in ("mfc.onnx", "actor.onnx")}
    mf.verify_files(tmp_path, _manifest(sha256=good))
    with pytest.raises(mf.ManifestError, match="sha256 mismatch"):
        mf.verify_files(tmp_path, _manifest(sha256={**good, "mfc.onnx": "1" * 64}))
    with pytest.raises(mf.ManifestError, match="outside"):
        mf.verify_files(tmp_path, _manifest(sha256={**good, "../x": "1" * 64}))
    with pytest.raises(mf.ManifestError, match="no sha256"):
        mf.verify_files(tmp_path, _manifest(sha256={"mfc.onnx": good["mfc.onnx"]}))


def test_current_is_replaced_atomically(tmp_path: Path) -> None:
    assert mf.read_current(tmp_path) is None
    mf.write_current(tmp_path, "v1")
    mf.write_current(tmp_path, "v2")
    assert mf.read_current(tmp_path) == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT"]  # no temp files left
    (tmp_path / "CURRENT").write_text("../../etc\n")
    with pytest.raises(mf.ManifestError):
        mf.read_current(tmp_path)


def test_tasks_validation() -> None:
    assert [t.name for t in make_tasks(DEFAULT_TASK_NAMES)] == list(DEFAULT_TASK_NAMES)
    for names, directions in (
        (["a", "a"], None),
        (["a"], [0]),
        (["a", "b"], [1]),
        ([], None),
        (["bad name"], None),
    ):
        with pytest.raises(ValueError):
            make_tasks(names, directions)
