"""``python -m trainer.rounds``: the production loop over rounds, end to end in miniature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer import rounds


def test_rounds_smoke(
    redis_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("XMTF_REDIS_URL", redis_server.url)
    out = tmp_path / "out"
    argv = ["--rounds", "2", "--sessions", "24", "--eval-sessions", "6", "--max-steps", "8",
            "--workdir", str(tmp_path / "run"), "--out", str(out)]  # fmt: skip
    assert rounds.main(argv) == 0
    result = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [0, 1]
    assert result["start"]["sessions"] == result["end"]["sessions"] == 6
    assert result["start"]["versions"] == [result["initial_version"]]
    assert result["end"]["versions"] == [result["final_version"]]  # the end is the last version
    assert sum(r["transitions"] for r in result["rounds"]) > 0
    lo, hi = result["end_minus_start"]["ci95"]
    assert lo <= result["end_minus_start"]["mean"] <= hi
    assert "End − start on the same evaluation users" in capsys.readouterr().out


def test_rounds_canary_goes_through_the_guard(
    redis_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``--publish canary:0.5`` a new version meets half of the next round's users as a
    canary arm; the guard looks at it (too few sessions to decide here), CURRENT stays, and the
    final evaluation is served by CURRENT, the experiment stopped."""
    monkeypatch.setenv("XMTF_REDIS_URL", redis_server.url)
    out = tmp_path / "out"
    argv = ["--rounds", "2", "--sessions", "48", "--eval-sessions", "6", "--max-steps", "8",
            "--publish", "canary:0.5", "--workdir", str(tmp_path / "run"),
            "--out", str(out)]  # fmt: skip
    assert rounds.main(argv) == 0
    result = json.loads((out / "rounds.json").read_text())
    first, second = result["rounds"]
    assert first["guard"] is None  # no canary before the first export
    assert first["exports"] and first["current_after"] == result["initial_version"]
    assert second["guard"]["decision"] == "none"
    assert second["guard"]["arms"]["canary"]["decision"] == "wait"  # 500 sessions per arm
    assert set(second["versions"]) == {result["initial_version"], first["exports"][-1]}
    assert result["final_version"] == result["initial_version"]
    assert result["end"]["versions"] == [result["initial_version"]]
    experiment = json.loads((tmp_path / "run" / "models" / "EXPERIMENT.json").read_text())
    assert experiment["status"] == "stopped"
    assert "| wait" not in (out / "rounds.md").read_text()  # the table speaks of the decision
    assert "none" in (out / "rounds.md").read_text()


def test_rounds_rejects_bad_arguments(capsys) -> None:
    with pytest.raises(SystemExit):
        rounds.main(["--rounds", "0"])
    assert "--rounds" in capsys.readouterr().err
    for bad in ("canary", "canary:1.5", "blue"):
        with pytest.raises(SystemExit):
            rounds.main(["--publish", bad])
        assert "--publish" in capsys.readouterr().err
