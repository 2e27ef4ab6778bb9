"""`xmtf-train plot`: PNG figures from a quick paper run and from one checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from trainer import cli
from trainer.study.config import PaperConfig
from trainer.study.run import run_paper

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    config = dataclasses.replace(
        PaperConfig.quick_config(1), methods=("xmtf", "xmtf_lam0", "td3_1", "cem1")
    )
    run_paper(config, out, progress=False, echo=lambda s: None)
    return out


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 1000


def test_plot_run_writes_every_figure(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["plot", "--run", str(run_dir), "--out", str(tmp_path / "fig")]) == 0
    files = [Path(f) for f in json.loads(capsys.readouterr().out)["files"]]
    names = {f.name for f in files}
    assert names == {"fig5_users.png", "fig6_tasks.png", "fig7_lambda.png", "curves.png"}
    assert all(_is_png(f) for f in files)


def test_plot_one_checkpoint(run_dir: Path, tmp_path: Path, capsys) -> None:
    ckpt = run_dir / "checkpoints" / "xmtf.safetensors"
    assert cli.main(["plot", "--checkpoint", str(ckpt), "--out", str(tmp_path)]) == 0
    files = [Path(f) for f in json.loads(capsys.readouterr().out)["files"]]
    assert {f.name for f in files} == {"fig5_users.png", "fig6_tasks.png"}
    assert all(_is_png(f) for f in files)


def test_plot_without_a_run_is_a_cli_error(tmp_path: Path, capsys) -> None:
    assert cli.main(["plot", "--run", str(tmp_path)]) == 2
    assert "no paper.json" in capsys.readouterr().err
