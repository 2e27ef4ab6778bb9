"""Small helpers shared by the tests (scorer in-process and out-of-process, experiments)."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from shared.experiment import Experiment
from shared.manifest import write_current


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something truthy (and return that), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def metric(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample in a ``/metrics`` text."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in metrics"
    return float(match.group(1))


def assert_error_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """An answer in the SPEC's error format (JSON ``{"error": {code, message, field}}``);
    returns the ``error`` object."""
    assert content_type.startswith("application/json"), content_type
    body = orjson.loads(raw)
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"code", "message", "field"}, err
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["field"] is None or isinstance(err["field"], str)
    return err


def publish(
    src: Path,
    model_dir: Path,
    version: str,
    prepare: Callable[[Path], object] | None = None,
    *,
    match_manifest: bool = False,
) -> Path:
    """Copy an exported version in as ``model_dir/version`` the way export does it (temp dir,
    rename), optionally altered by ``prepare``; then point ``CURRENT`` at it. With
    ``match_manifest`` the manifest's version is first renamed to ``version``."""
    tmp = model_dir / f".tmp-{version}"
    shutil.copytree(src, tmp)
    if match_manifest:
        manifest_path = tmp / "manifest.json"
        manifest = orjson.loads(manifest_path.read_bytes())
        if manifest["version"] != version:
            manifest["version"] = version
            manifest_path.write_bytes(orjson.dumps(manifest))
    if prepare:
        prepare(tmp)
    final = model_dir / version
    tmp.rename(final)
    write_current(model_dir, version)
    return final


def two_arm_experiment(name: str = "e", **fields: Any) -> Experiment:
    """A 50/50 experiment: control on version v1, treatment on v2 (``fields``: the rest)."""
    arms = [
        {"name": "control", "version": "v1", "share": 0.5},
        {"name": "treatment", "version": "v2", "share": 0.5},
    ]
    return Experiment.model_validate({"name": name, "salt": "s", "arms": arms, **fields})
