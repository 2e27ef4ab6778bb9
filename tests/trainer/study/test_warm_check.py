"""``python -m trainer.study.warm_check``: the warm-started learner's result split into parts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from trainer.study.config import PaperConfig
from trainer.study.registry import METHOD_BY_KEY
from trainer.study.run import run_paper, study_config
from trainer.study.runner import Runner
from trainer.study.warm_check import main, warm_check


def _study(out: Path, budgets: tuple[int, ...]) -> dict:
    base = PaperConfig.quick_config(trials=1)
    es = dataclasses.replace(base.es, val_sessions=8, distill_steps=5)
    config = dataclasses.replace(
        base, es=es, budgets=budgets, methods=("xmtf_init", "cem1_cal", "xmtf_es_warm")
    )
    return run_paper(config, out, progress=False, echo=lambda s: None)


def test_study_config_rebuilds_the_recorded_config(tmp_path: Path) -> None:
    report = _study(tmp_path / "s", (2000, 8000))
    rebuilt = study_config(report)
    assert rebuilt.as_dict() == report["config"]


def test_warm_check_evaluates_each_global_solution_as_the_formula(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    report = _study(folder, (2000, 8000))
    assert main([str(folder)]) == 0
    check = warm_check(folder)
    trial = report["methods"]["xmtf_es_warm"]["trials"][0]
    runner = Runner(study_config(report))
    u = np.array([trial["warm_solution"][t.name] for t in runner.tasks])
    want = runner.evaluate(runner.formula_fn(METHOD_BY_KEY["cem1_cal"], u))["return_mean"]
    row = check["seeds"][0]
    assert row["global_mean"] == pytest.approx(want)
    assert row["final_mean"] == trial["budgets"][-1]["return_mean"]
    final_minus_global = check["contrasts"]["final - global"]["mean"]
    assert final_minus_global == pytest.approx(row["final_mean"] - row["global_mean"], abs=0.05)
    md = (folder / "warm-check.md").read_text()
    assert "| 0 |" in md and "| final - cem1_cal |" in md


def test_warm_check_refuses_a_study_without_a_warm_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "none")]) == 2
    assert "no paper.json" in capsys.readouterr().err
    folder = tmp_path / "tiny"
    _study(folder, (50, 100))  # no room for the warm start
    assert main([str(folder)]) == 2
    assert "no xmtf_es_warm trial ran a warm start" in capsys.readouterr().err
    report = json.loads((folder / "paper.json").read_text())
    del report["methods"]["cem1_cal"]
    (folder / "paper.json").write_text(json.dumps(report))
    assert main([str(folder)]) == 2
    assert "the study has no cem1_cal" in capsys.readouterr().err
