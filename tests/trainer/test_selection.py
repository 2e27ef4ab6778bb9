"""Checkpoint selection on validation users and the guard (trainer/selection.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer import cli
from trainer.loop import TrainConfig
from trainer.selection import SelectionError, Selector
from trainer.sim import SimConfig, UserSimulator, evaluate

SMALL = SimConfig(n_candidates=20, max_steps=8, n_items=500)


class FixedWeights:
    """A learner whose 'model' is a weight vector over the tasks (no torch needed)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, np.float64)

    def score_fn(self) -> Any:
        w = self.weights.copy()
        return lambda state, preds: (w[None, :, None] * preds).sum(axis=1)

    def snapshot(self) -> Any:
        return self.weights.copy()

    def restore(self, snapshot: Any) -> None:
        self.weights = np.asarray(snapshot)


def _selector(sessions: int = 400) -> Selector:
    return Selector(UserSimulator(SMALL), sessions, seed=20_000, eval_seed=30_000)


def test_selection_refuses_the_evaluation_users() -> None:
    with pytest.raises(SelectionError, match="evaluation"):
        Selector(UserSimulator(SMALL), 10, seed=7, eval_seed=7)
    with pytest.raises(ValueError, match="evaluation users"):
        TrainConfig(val_seed=5, eval_seed=5)


def test_a_worse_checkpoint_is_never_selected() -> None:
    learner = FixedWeights(np.ones(6))  # the plain sum
    sel = _selector()
    sel.start(learner)
    learner.weights = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # clicks only: clickbait
    row = sel.consider(10, learner)
    assert row["val_gain"] < 0 and "selected" not in row
    decision = sel.finish(learner)
    assert decision["kept_start"] and decision["selected_step"] == 0
    np.testing.assert_array_equal(learner.weights, np.ones(6))  # the start is back
    assert decision["val_requests"] > 0


def test_a_clearly_better_checkpoint_is_selected() -> None:
    learner = FixedWeights(np.array([-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))  # start: avoids clicks
    sel = _selector()
    sel.start(learner)
    better = np.ones(6)  # the plain sum shows what users click
    learner.weights = better
    row = sel.consider(10, learner)
    assert row["val_gain_lo"] > 0 and row.get("selected") == 1.0
    learner.weights = np.ones(6) * 0.5  # a later, different iterate
    decision = sel.finish(learner)
    assert not decision["kept_start"] and decision["selected_step"] == 10
    np.testing.assert_array_equal(learner.weights, better)
    with pytest.raises(ValueError, match="step > 0"):  # step 0 would read as the start
        sel.consider(0, learner)


class ValidationMemoriser(FixedWeights):
    """A checkpoint that is good only on the states it has seen (the validation users'): the
    plain sum there, and one that buries what users click anywhere else. It passes a validation
    look and is worse than its start for every other user: what a lucky look looks like."""

    def __init__(self, weights: np.ndarray, seen: set[bytes]) -> None:
        super().__init__(weights)
        self.seen = seen

    def score_fn(self) -> Any:
        good, bad = np.ones(6), np.array([-3.0, -1.0, 0.0, 0.0, 0.0, 0.0])

        def score(state: np.ndarray, preds: np.ndarray) -> np.ndarray:
            known = np.array([s.tobytes() in self.seen for s in state])
            w = np.where(known[:, None], good[None, :], bad[None, :])
            return (w[:, :, None] * preds).sum(axis=1)

        return score if self.weights.sum() < 0 else super().score_fn()


def _validation_states(sessions: int) -> set[bytes]:
    seen: set[bytes] = set()

    def record(state: np.ndarray, preds: np.ndarray) -> np.ndarray:
        seen.update(s.tobytes() for s in state)
        return preds.sum(axis=1)

    evaluate(UserSimulator(SMALL), record, sessions, 20_000)
    return seen


def test_the_confirmation_test_rejects_a_checkpoint_that_passed_by_luck() -> None:
    start = np.array([-1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    seen = _validation_states(400)
    learner = ValidationMemoriser(start, seen)
    sel = Selector(UserSimulator(SMALL), 400, 20_000, 30_000, confirm_sessions=400)
    sel.start(learner)
    learner.weights = -np.ones(6)  # the memoriser's "checkpoint"
    row = sel.consider(10, learner)
    assert row.get("selected") == 1.0  # the look is fooled
    decision = sel.finish(learner)
    assert decision["kept_start"] and decision["selected_step"] == 0
    np.testing.assert_array_equal(learner.weights, start)
    confirm = decision["validation"][-1]
    assert confirm["confirm_gain"] < 0 and "confirmed" not in confirm
    # without the test the lucky checkpoint is what finish() puts in place
    plain = Selector(UserSimulator(SMALL), 400, 20_000, 30_000)
    learner.weights = start.copy()
    plain.start(learner)
    learner.weights = -np.ones(6)
    plain.consider(10, learner)
    assert not plain.finish(learner)["kept_start"]


def test_the_confirmation_test_keeps_a_really_better_checkpoint_and_runs_once() -> None:
    learner = FixedWeights(np.array([-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    sel = Selector(UserSimulator(SMALL), 300, 20_000, 30_000, confirm_sessions=300)
    sel.start(learner)
    learner.weights = np.ones(6)
    sel.consider(10, learner)
    decision = sel.finish(learner)
    assert not decision["kept_start"] and decision["validation"][-1]["confirmed"] == 1.0
    np.testing.assert_array_equal(learner.weights, np.ones(6))
    spent = sel.requests
    sel.finish(learner)  # the study asks at every budget: the choice is confirmed once
    assert sel.requests == spent


def test_the_confirmation_users_are_never_the_evaluation_users() -> None:
    with pytest.raises(SelectionError, match="confirmation"):
        Selector(UserSimulator(SMALL), 10, 7, 8, confirm_sessions=10)  # 7 + 1 = 8
    with pytest.raises(ValueError, match="confirmation"):
        TrainConfig(val_seed=5, eval_seed=6)
    TrainConfig(val_seed=5, eval_seed=6, confirm_sessions=0)  # no test, no clash
    with pytest.raises(ValueError, match="confirm_sessions"):
        TrainConfig(confirm_sessions=-1)


def test_simulate_reports_the_selection(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = {
        "sim": {"n_candidates": 20, "max_steps": 8, "n_items": 500},
        "tsh": {"hidden": 16, "batch_size": 32, "inner_batch_size": 8, "neutral_fit_steps": 5},
        "train": {
            "n_users": 16, "total_steps": 4, "learning_starts": 32, "updates_per_step": 1,
            "replay_capacity": 512, "replay_candidates": 8, "eval_every": 0,
            "eval_sessions": 20, "select_every": 2, "val_sessions": 20,
        },
    }  # fmt: skip
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    assert cli.main(["simulate", "--config", str(path), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["selection"]) == {"selected_step", "kept_start", "val_gain"}
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    steps = [row["step"] for row in summary["selection"]["validation"]]
    assert steps == [0.0, 2.0, 4.0]
    bad = dataclasses.replace(TrainConfig(), select_every=0)
    assert bad.select_every == 0  # selection can be turned off


def test_simulate_refuses_selection_on_evaluation_users(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"train": {"val_seed": 12345, "eval_seed": 12345}}))
    assert cli.main(["simulate", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
