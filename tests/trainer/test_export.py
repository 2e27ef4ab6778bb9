"""Export of a model version (SPEC §4): files, manifest, ONNX parity, refusals, CURRENT."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from shared import manifest as manifest_mod
from shared import onnx_io
from shared.manifest import read_current, read_manifest, verify_files
from shared.tasks import TaskSpec
from trainer import export
from trainer.config import TSHConfig
from trainer.export import ExportCheckError, export_version, load_agent
from trainer.replay import ReplayBuffer
from trainer.tsh import TSHAgent

TASKS = (
    TaskSpec("click"),
    TaskSpec("watch", 1, offset=20.0, scale=15.0, low=0.0, high=120.0),
    TaskSpec("skip", -1),
)
D = 5


@pytest.fixture(scope="module")
def agent() -> TSHAgent:
    """A neutral-fit agent with a non-trivial normaliser and a couple of updates."""
    a = TSHAgent(TASKS, D, TSHConfig(hidden=32, batch_size=32, inner_batch_size=8), seed=5)
    rng = np.random.default_rng(0)
    a.observe(rng.normal(1.0, 2.0, size=(200, D)).astype(np.float32))
    buf = ReplayBuffer(64, D, len(TASKS), 10, seed=0)
    preds = rng.random((64, len(TASKS), 10)).astype(np.float32)
    preds[:, 1] *= 120.0
    buf.add(
        rng.normal(size=(64, D)),
        rng.uniform(-0.4, 1.4, (64, 3)),
        rng.uniform(0, 50, 64),
        rng.normal(size=(64, D)),
        np.zeros(64),
        preds,
    )
    for _ in range(2):
        a.update(buf.sample(32))
    return a


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _preds(n: int, rng: np.random.Generator) -> np.ndarray:
    p = rng.random((len(TASKS), n)).astype(np.float32)
    p[1] *= 120.0
    return p


def _listing(model_dir: Path) -> set[str]:
    return {p.name for p in model_dir.iterdir()}


def _decreasing_copy(agent: TSHAgent) -> TSHAgent:
    """The agent with the first cell mirrored (h(x) -> h(-x)): it decreases in its input."""
    bad = copy.deepcopy(agent)
    with torch.no_grad():
        bad.mfc.w_pred[0].mul_(-1.0)
    return bad


# ----------------------------------------------------------------------------- a published version


def test_export_writes_all_files_and_current(agent: TSHAgent, tmp_path: Path) -> None:
    result = export_version(agent, tmp_path, version="v0001")
    vdir = tmp_path / "v0001"
    assert result.version == "v0001" and result.path == vdir
    for name in (
        onnx_io.MFC_FILE,
        onnx_io.ACTOR_FILE,
        onnx_io.MANIFEST_FILE,
        onnx_io.CHECKPOINT_FILE,
    ):
        assert (vdir / name).is_file(), name
    assert (tmp_path / onnx_io.CURRENT_FILE).read_text().strip() == "v0001"
    assert read_current(tmp_path) == "v0001"
    assert _listing(tmp_path) == {"v0001", onnx_io.CURRENT_FILE}  # no temp dirs or files


def test_manifest_validates_and_describes_the_model(agent: TSHAgent, tmp_path: Path) -> None:
    export_version(agent, tmp_path, version="v0001", training={"source": "unit-test"})
    vdir = tmp_path / "v0001"
    m = read_manifest(vdir)
    verify_files(vdir, m)
    assert m.version == "v0001"
    assert m.state_dim == D
    assert m.task_names == ["click", "watch", "skip"]
    assert [t.direction for t in m.tasks] == [1, 1, -1]
    assert m.task_specs == TASKS  # offset, scale, low and high survive
    assert m.action_low == agent.config.action_low
    assert m.action_high == agent.config.action_high
    assert m.opset == onnx_io.OPSET
    assert m.mfc.inputs == ["state", "predictions"] and m.mfc.outputs == ["q_inner"]
    assert m.actor.inputs == ["state"] and m.actor.outputs == ["action"]
    for name in (onnx_io.MFC_FILE, onnx_io.ACTOR_FILE, onnx_io.CHECKPOINT_FILE):
        assert m.sha256[name] == hashlib.sha256((vdir / name).read_bytes()).hexdigest()
    checks = m.checks
    assert 0.0 <= checks.parity_max_abs_err <= checks.parity_tolerance == 1e-5
    assert checks.monotonicity_bound == 0.01
    assert 0.0 <= checks.monotonicity_violation_rate <= checks.monotonicity_bound
    assert set(checks.monotonicity_per_task) == {"click", "watch", "skip"}
    assert m.training["source"] == "unit-test"
    assert m.training["updates"] == agent.updates == 2
    assert m.training["config"]["hidden"] == 32


def test_tampered_file_fails_verification(agent: TSHAgent, tmp_path: Path) -> None:
    export_version(agent, tmp_path, version="v0001")
    vdir = tmp_path / "v0001"
    m = read_manifest(vdir)
    with (vdir / onnx_io.ACTOR_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(manifest_mod.ManifestError, match="sha256"):
        verify_files(vdir, m)


def test_onnx_parity_at_many_candidate_counts(agent: TSHAgent, tmp_path: Path) -> None:
    export_version(agent, tmp_path, version="v0001")
    vdir = tmp_path / "v0001"
    mfc, actor = _session(vdir / onnx_io.MFC_FILE), _session(vdir / onnx_io.ACTOR_FILE)
    assert [i.name for i in mfc.get_inputs()] == ["state", "predictions"]
    assert isinstance(mfc.get_inputs()[1].shape[1], str)  # the candidate axis is symbolic
    rng = np.random.default_rng(42)
    for n in (1, 2, 3, 8, 100, 1537):  # the graph was traced with N = 8
        state = rng.normal(1.0, 2.0, size=(1, D)).astype(np.float32)
        preds = _preds(n, rng)
        (got,) = mfc.run(None, {"state": state, "predictions": preds})
        want = agent.inner(state, preds[None])[0]
        assert got.shape == (len(TASKS), n)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        (got_a,) = actor.run(None, {"state": state})
        want_a, _ = agent.act(state, explore=False)
        assert got_a.shape == (1, len(TASKS))
        np.testing.assert_allclose(got_a, want_a, rtol=0, atol=1e-5)


def test_exported_mfc_includes_state_normalisation(agent: TSHAgent, tmp_path: Path) -> None:
    """The graph takes the raw state: changing the normaliser changes the exported outputs."""
    export_version(agent, tmp_path, version="v0001")
    other = copy.deepcopy(agent)
    with torch.no_grad():
        other.norm.mean.add_(3.0)
    export_version(other, tmp_path, version="v0002")
    rng = np.random.default_rng(0)
    state, preds = rng.normal(size=(1, D)).astype(np.float32), _preds(16, rng)
    (q1,) = _session(tmp_path / "v0001" / onnx_io.MFC_FILE).run(
        None, {"state": state, "predictions": preds}
    )
    (q2,) = _session(tmp_path / "v0002" / onnx_io.MFC_FILE).run(
        None, {"state": state, "predictions": preds}
    )
    assert np.abs(q1 - q2).max() > 1e-4
    np.testing.assert_allclose(q2, other.inner(state, preds[None])[0], atol=1e-5)


def test_load_agent_round_trips(agent: TSHAgent, tmp_path: Path) -> None:
    result = export_version(agent, tmp_path, version="v0001")
    loaded = load_agent(result.path)
    assert loaded.tasks == agent.tasks
    assert loaded.config == agent.config
    assert loaded.updates == agent.updates
    rng = np.random.default_rng(1)
    states = rng.normal(size=(3, D)).astype(np.float32)
    preds = np.stack([_preds(11, rng) for _ in range(3)])
    np.testing.assert_array_equal(loaded.inner(states, preds), agent.inner(states, preds))
    np.testing.assert_array_equal(
        loaded.act(states, explore=False)[0], agent.act(states, explore=False)[0]
    )
    for name, module in agent._modules().items():
        other = loaded._modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, other[key]), f"{name}.{key}"


def test_monotone_by_construction_agent_exports(tmp_path: Path) -> None:
    cfg = TSHConfig(hidden=16, monotone_by_construction=True, neutral_fit_steps=0)
    a = TSHAgent(TASKS, D, cfg, seed=0)
    with torch.no_grad():
        # random path weights (any sign: softplus makes them positive), not so large that
        # the cells become steps (the tie audit refuses those)
        for p in [a.mfc.w_pred, *a.mfc.weights]:
            p.normal_(-1.0, 1.0)
    result = export_version(a, tmp_path, version="mono")
    assert result.manifest.checks.monotonicity_violation_rate == 0.0


# ----------------------------------------------------------------------------- refusals


def _assert_nothing_published(model_dir: Path, before: set[str], current: str | None) -> None:
    assert _listing(model_dir) == before
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".tmp-")]
    assert read_current(model_dir) == current


def test_export_refuses_non_monotone_model(agent: TSHAgent, tmp_path: Path) -> None:
    export_version(agent, tmp_path, version="v0001")
    before = _listing(tmp_path)
    bad = _decreasing_copy(agent)
    # the corruption really makes the first cell decrease
    grid = np.linspace(0, 1, 50, dtype=np.float32)
    q = bad.inner(np.zeros((1, D), np.float32), np.broadcast_to(grid, (1, 3, 50)).copy())
    assert np.diff(q[0, 0]).mean() < 0
    with pytest.raises(ExportCheckError, match="monotonicity") as info:
        export_version(bad, tmp_path, version="v0002")
    figures = info.value.figures
    assert figures["monotonicity_per_task"]["click"] > 0.5
    assert figures["monotonicity_per_task"]["skip"] <= 0.01
    assert figures["monotonicity_violation_rate"] > figures["monotonicity_bound"]
    _assert_nothing_published(tmp_path, before, "v0001")
    assert not (tmp_path / "v0002").exists()


def test_export_refuses_cells_saturated_into_steps(agent: TSHAgent, tmp_path: Path) -> None:
    export_version(agent, tmp_path, version="v0001")
    assert read_manifest(tmp_path / "v0001").checks.tie_rate == 0.0  # a healthy fusion
    before = _listing(tmp_path)
    steps = copy.deepcopy(agent)
    with torch.no_grad():  # monotone still, but every cell is now a 0/1 step
        steps.mfc.biases[-1].fill_(-60.0)
    with pytest.raises(ExportCheckError, match="tie audit") as info:
        export_version(steps, tmp_path, version="v0002")
    assert info.value.figures["tie_rate"] > info.value.figures["tie_bound"]
    _assert_nothing_published(tmp_path, before, "v0001")


def test_export_refuses_decreasing_cell_for_negative_task(agent: TSHAgent, tmp_path: Path) -> None:
    """A direction -1 cell that increases is a violation too."""
    bad = copy.deepcopy(agent)
    with torch.no_grad():
        bad.mfc.w_pred[2].mul_(-1.0)
    with pytest.raises(ExportCheckError) as info:
        export_version(bad, tmp_path, version="v0002")
    assert info.value.figures["monotonicity_per_task"]["skip"] > 0.5
    _assert_nothing_published(tmp_path, set(), None)


def test_export_refuses_on_parity(agent: TSHAgent, tmp_path: Path) -> None:
    export_version(agent, tmp_path, version="v0001")
    before = _listing(tmp_path)
    with pytest.raises(ExportCheckError, match="parity") as info:
        export_version(agent, tmp_path, version="v0002", parity_tolerance=-1.0)
    assert info.value.figures["parity_max_abs_err"] >= 0.0
    _assert_nothing_published(tmp_path, before, "v0001")


def test_export_refuses_when_onnx_disagrees_with_torch(
    agent: TSHAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph that computes something else than the PyTorch model is caught by parity."""
    export_version(agent, tmp_path, version="v0001")
    before = _listing(tmp_path)
    real_export = export._export_onnx

    def skewed(module, args, path, *, mfc):  # type: ignore[no-untyped-def]
        if mfc:  # export a graph whose output is off by 1e-3
            module = _Shift(module)
        real_export(module, args, path, mfc=mfc)

    monkeypatch.setattr(export, "_export_onnx", skewed)
    with pytest.raises(ExportCheckError, match="parity"):
        export_version(agent, tmp_path, version="v0002")
    _assert_nothing_published(tmp_path, before, "v0001")


class _Shift(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, state: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
        return self.inner(state, predictions) + 1e-3


def test_export_refuses_existing_version(agent: TSHAgent, tmp_path: Path) -> None:
    export_version(agent, tmp_path, version="v0001")
    before = _listing(tmp_path)
    with pytest.raises(FileExistsError):
        export_version(agent, tmp_path, version="v0001")
    _assert_nothing_published(tmp_path, before, "v0001")


# ----------------------------------------------------------------------------- CURRENT


def test_publish_false_leaves_current(agent: TSHAgent, tmp_path: Path) -> None:
    export_version(agent, tmp_path, version="v0001")
    result = export_version(agent, tmp_path, version="v0002", publish=False)
    assert result.path.is_dir()
    read_manifest(result.path)
    assert read_current(tmp_path) == "v0001"


def test_publish_false_on_empty_dir_writes_no_current(agent: TSHAgent, tmp_path: Path) -> None:
    export_version(agent, tmp_path, version="v0001", publish=False)
    assert read_current(tmp_path) is None
    assert _listing(tmp_path) == {"v0001"}


def test_second_version_switches_current_atomically(
    agent: TSHAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_version(agent, tmp_path, version="v0001")
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst):  # type: ignore[no-untyped-def]
        replaced.append((str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(manifest_mod.os, "replace", spy)
    result = export_version(agent, tmp_path, version="v0002")
    assert read_current(tmp_path) == "v0002"
    assert result.version == "v0002"
    current = str(tmp_path / onnx_io.CURRENT_FILE)
    assert [dst for _, dst in replaced] == [current]
    assert Path(replaced[0][0]).parent == tmp_path
    assert _listing(tmp_path) == {"v0001", "v0002", onnx_io.CURRENT_FILE}
    # both versions stay intact and valid
    for v in ("v0001", "v0002"):
        verify_files(tmp_path / v, read_manifest(tmp_path / v))


def test_generated_version_names_sort_and_validate(agent: TSHAgent, tmp_path: Path) -> None:
    result = export_version(agent, tmp_path)
    assert read_current(tmp_path) == result.version
    assert result.manifest.version == result.version
