"""Task specs: validation and the per-task input calibration."""

from __future__ import annotations

import numpy as np
import pytest

from shared.tasks import calibrate_tasks, make_tasks


def test_calibration_gives_every_task_unit_spread_and_its_own_range() -> None:
    rng = np.random.default_rng(0)
    preds = np.stack([rng.uniform(0.0, 0.8, 5000), rng.exponential(0.001, 5000)], axis=1)
    click, share = calibrate_tasks(make_tasks(["click", "share"], [1, -1]), preds)
    assert click.offset == pytest.approx(0.4, abs=0.02) and click.scale == pytest.approx(
        0.23, abs=0.01
    )
    assert share.scale == pytest.approx(0.001, rel=0.1) and share.high < 0.01 < click.high
    assert share.direction == -1 and share.name == "share"  # only the ranges change
    for task, column in zip((click, share), preds.T, strict=True):
        inside = (column >= task.low) & (column <= task.high)
        assert inside.mean() == pytest.approx(0.998, abs=0.001)
        normalised = (column - task.offset) / task.scale
        assert normalised.std() == pytest.approx(1.0, rel=1e-6)


def test_calibration_of_a_constant_prediction_stays_valid() -> None:
    (task,) = calibrate_tasks(make_tasks(["like"]), np.full((10, 1), 0.3))
    assert task.scale > 0 and task.high > task.low


def test_calibration_rejects_a_sample_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"predictions must be \(n, 2\)"):
        calibrate_tasks(make_tasks(["a", "b"]), np.zeros((4, 3)))
