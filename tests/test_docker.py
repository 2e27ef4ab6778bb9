"""What can be checked of docker/ without a Docker engine: the compose file parses and wires the
services as documented, every COPY source exists, and the scorer image's own install command
produces a working, torch-free scorer in a clean virtual environment."""

from __future__ import annotations

import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_services_are_wired() -> None:
    services = _compose()["services"]
    assert {"redis", "init", "scorer", "trainer", "nightly"} <= services.keys()
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert services["scorer"]["build"]["dockerfile"] == "docker/scorer.Dockerfile"
    assert services["scorer"]["environment"]["XMTF_REDIS_URL"].startswith("redis://redis:")
    assert services["trainer"]["command"][0] == "consume"
    assert "--until-idle" in " ".join(services["nightly"]["entrypoint"])
    for name in ("scorer", "trainer", "nightly"):
        assert any(v.startswith("models:/models") for v in services[name]["volumes"])


def _dockerfile(name: str) -> list[tuple[str, str]]:
    lines = (DOCKER / name).read_text().splitlines()
    return [tuple(line.split(maxsplit=1)) for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("name", ["scorer.Dockerfile", "trainer.Dockerfile"])
def test_dockerfile_copy_sources_exist(name: str) -> None:
    for instr, args in _dockerfile(name):
        if instr == "COPY":
            *sources, _ = args.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY source {src} missing"


def test_images_install_the_right_extras() -> None:
    scorer = " ".join(a for i, a in _dockerfile("scorer.Dockerfile") if i == "RUN")
    trainer = " ".join(a for i, a in _dockerfile("trainer.Dockerfile") if i == "RUN")
    assert "'.[scorer]'" in scorer and "trainer" not in scorer
    assert "'.[trainer]'" in trainer


def test_scorer_image_install_command_builds_a_torch_free_scorer(tmp_path: Path) -> None:
    """Replays the scorer image's COPY and RUN lines in a fresh virtual environment."""
    app = tmp_path / "app"
    app.mkdir()
    run_lines = []
    for instr, args in _dockerfile("scorer.Dockerfile"):
        if instr == "COPY":
            *sources, dest = args.split()
            for src in sources:
                target = app / dest if dest not in ("./", ".") else app / Path(src).name
                if (ROOT / src).is_dir():
                    shutil.copytree(
                        ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(ROOT / src, app / Path(src).name)
        elif instr == "RUN":
            run_lines.append(args)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bindir = env_dir / "bin"
    for line in run_lines:
        # `pip` and `python` of the image are the venv's here
        cmd = re.sub(r"(?<![\w/])(pip|python)(?=\s)", lambda m: str(bindir / m.group(1)), line)
        done = subprocess.run(cmd, shell=True, cwd=app, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    probe = "import scorer.app, sys; assert 'torch' not in sys.modules; print('ok')"
    done = subprocess.run([str(bindir / "python"), "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
    freeze = subprocess.run([str(bindir / "pip"), "freeze"], capture_output=True, text=True).stdout
    assert "torch" not in freeze.lower()
    help_out = subprocess.run(
        [str(bindir / "xmtf-scorer"), "--help"], capture_output=True, text=True
    )
    assert help_out.returncode == 0 and "--model-dir" in help_out.stdout
