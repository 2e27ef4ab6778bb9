"""`python -m loadtest.simbench`: a tiny run prints its table (speed is measured, not asserted)."""

from __future__ import annotations

import pytest

from loadtest import simbench
from trainer.sim import SimConfig


def test_measure_counts_user_requests() -> None:
    row = simbench.measure(SimConfig(data_dir="", n_items=300), n_users=16, steps=2, warmup=1)
    assert row.population == "synthetic" and row.n_users * row.steps == 32
    assert row.seconds > 0 and row.rate == pytest.approx(32 / row.seconds)


def test_cli_prints_one_row_per_population_and_size(capsys, monkeypatch) -> None:
    monkeypatch.delenv("XMTF_KUAIRAND_DIR", raising=False)
    assert simbench.main(["--users", "8,16", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| synthetic")]
    assert len(rows) == 2 and "user-requests/s" in out


def test_cli_rejects_bad_sizes() -> None:
    with pytest.raises(SystemExit) as exc:
        simbench.main(["--users", "0"])
    assert exc.value.code == 2
