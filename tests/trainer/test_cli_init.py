"""`xmtf-train init --predictions-sample`: tasks calibrated from logged predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer import cli


def _init(tmp_path: Path, *extra: str) -> int:
    argv = ["init", "--model-dir", str(tmp_path / "models"), "--state-dim", "4"]
    return cli.main([*argv, "--tasks", "click,share", *extra])


def test_init_fits_each_task_input_range_from_a_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sample = np.stack([rng.uniform(0, 0.8, 4000), rng.exponential(0.001, 4000)], axis=1)
    np.save(tmp_path / "preds.npy", sample.astype(np.float32))
    assert _init(tmp_path, "--predictions-sample", str(tmp_path / "preds.npy")) == 0
    version = (tmp_path / "models" / "CURRENT").read_text().strip()
    manifest = json.loads((tmp_path / "models" / version / "manifest.json").read_text())
    click, share = manifest["tasks"]
    assert share["high"] < 0.02 < click["high"]
    assert share["scale"] == pytest.approx(sample[:, 1].std(), rel=1e-3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros((10, 3)), "predictions must be (n, 2)"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), "NaN or infinite"),
        (np.array(["a", "b"]), "need a numeric"),
        (None, "cannot read"),
    ],
)
def test_init_rejects_a_bad_sample_by_name(tmp_path: Path, capsys, content, message) -> None:
    path = tmp_path / "preds.npy"
    if content is None:
        path.write_bytes(b"not numpy")
    else:
        np.save(path, content)
    assert _init(tmp_path, "--predictions-sample", str(path)) == 2
    err = capsys.readouterr().err
    assert "--predictions-sample" in err and message in err
    assert not (tmp_path / "models" / "CURRENT").exists()


def test_init_config_sets_the_learner_that_consume_continues(tmp_path: Path) -> None:
    from trainer.export import load_agent

    assert _init(tmp_path) == 0  # the product's default learner anchors its transfer
    version = (tmp_path / "models" / "CURRENT").read_text().strip()
    agent = load_agent(tmp_path / "models" / version)  # what consume starts from
    assert agent.config.transfer_anchor == "version" and agent.mfc_anchor is not None
    (tmp_path / "c.json").write_text(json.dumps({"tsh": {"transfer_anchor": "none"}}))
    assert _init(tmp_path, "--config", str(tmp_path / "c.json")) == 0
    version = (tmp_path / "models" / "CURRENT").read_text().strip()
    agent = load_agent(tmp_path / "models" / version)
    assert agent.config.transfer_anchor == "none" and agent.mfc_anchor is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"tsh": {"transfer_anchr": "version"}}, "transfer_anchr"),
        ({"tsh": {"transfer_anchor": "served"}}, "transfer_anchor must be one of"),
        ({"train": {}}, "only a tsh section"),
    ],
)
def test_init_config_rejects_bad_keys_by_name(tmp_path: Path, capsys, content, message) -> None:
    (tmp_path / "c.json").write_text(json.dumps(content))
    assert _init(tmp_path, "--config", str(tmp_path / "c.json")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "models" / "CURRENT").exists()
