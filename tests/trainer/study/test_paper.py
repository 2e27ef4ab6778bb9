"""`xmtf-train paper --quick`: every method end to end, tables that match the JSON."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer import cli
from trainer.loop import TSHLearner
from trainer.study.config import PaperConfig
from trainer.study.registry import METHODS
from trainer.study.runner import Runner, mfc_violation_rate
from trainer.tsh import TSHAgent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("paper")
    rc = cli.main(["paper", "--quick", "--trials", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, json.loads((out / "paper.json").read_text())


def test_quick_run_covers_every_method_with_finite_results(quick_run) -> None:
    out, report = quick_run
    assert set(report["methods"]) == {m.key for m in METHODS if m.table != 5}
    for key, entry in report["methods"].items():
        assert len(entry["trials"]) == 2, key
        s = entry["summary"]
        for name in ("return_mean", "return_std", "length_mean", "length_std"):
            assert math.isfinite(s[name]), (key, name)
        assert s["return_mean"] > 0 and s["length_mean"] >= 1, key
        assert entry["checkpoint"] and (out / entry["checkpoint"]).is_file(), key
        if entry["kind"] in ("tsh", "myopic", "init") and key != "xmtf_no_inner":
            assert 0.0 <= s["mono_violation_mean"] <= 1.0, key
        else:  # no MFCs: nothing to audit
            assert "mono_violation_mean" not in s, key
    assert report["plain_sum"]["n_sessions"] == report["meta"]["eval_sessions"]
    assert report["meta"]["projected_seconds"] > 0


def test_markdown_tables_match_the_json(quick_run) -> None:
    out, report = quick_run
    md = (out / "paper.md").read_text()
    assert "Table 3" in md and "Table 4" in md and "Quick mode" in md
    rows = {
        line.split("|")[1].strip(): line
        for line in md.splitlines()
        if line.startswith("| ") and "±" in line
    }
    plain = report["plain_sum"]
    assert f"{plain['return_mean']:.1f} ± 0.0" in rows["plain sum (no training)"]
    for m in METHODS:
        if m.table == 5:  # the deviations table is not in the default run
            assert m.key not in report["methods"] and "Table 5" not in md
            continue
        s = report["methods"][m.key]["summary"]
        label = m.label if m.table == 3 else f"λ = {m.tsh[0][1]:g}"
        cells = [c.strip() for c in rows[label].split("|")[1:-1]]
        assert cells[1] == f"{s['return_mean']:.1f} ± {s['return_std']:.1f}", m.key
        assert cells[2] == f"{s['length_mean']:.2f} ± {s['length_std']:.2f}", m.key
        seeds = [t["return_mean"] for t in report["methods"][m.key]["trials"]]
        assert s["return_mean"] == pytest.approx(np.mean(seeds))
        assert s["return_std"] == pytest.approx(np.std(seeds, ddof=1))
    lam04 = [c.strip() for c in rows["λ = 0.4"].split("|")[1:-1]]
    xs = report["methods"]["xmtf"]["summary"]
    assert lam04[1] == f"{xs['return_mean']:.1f} ± {xs['return_std']:.1f}"
    # the verdict is stated either way, and names the best formula baseline
    verdict = report["verdict"]
    assert verdict["text"] in md
    best = report["methods"][verdict["best_formula_baseline"]]["label"]
    assert best in verdict["text"]
    assert ("does NOT beat" in verdict["text"]) != verdict["xmtf_beats_best_formula"]
    assert re.search(r"projected\s+[0-9.]+ min", md)


def test_same_evaluation_users_for_every_method() -> None:
    """A deterministic policy evaluated twice gives the same sessions (fixed eval seed)."""
    runner = Runner(PaperConfig.quick_config(1))
    fn = lambda s, p: p.sum(axis=1)  # noqa: E731
    assert runner.evaluate(fn) == runner.evaluate(fn)


def test_without_inner_stage_the_fusion_is_the_outer_formula() -> None:
    runner = Runner(PaperConfig.quick_config(1))
    method = next(m for m in METHODS if m.key == "xmtf_no_inner")
    learner = runner.make_learner(method, seed=0)
    assert isinstance(learner, TSHLearner)
    agent: TSHAgent = learner.agent
    rng = np.random.default_rng(0)
    states = rng.normal(size=(4, runner.state_dim)).astype(np.float32)
    preds = rng.random((4, len(runner.tasks), 9)).astype(np.float32)
    action = rng.uniform(-0.4, 1.4, (4, len(runner.tasks))).astype(np.float32)
    want = (preds * (1 + action[..., None] * preds)).sum(axis=1)
    np.testing.assert_allclose(agent.scores(states, preds, action), want, rtol=1e-5)
    assert mfc_violation_rate(agent, states) == 0.0


def test_unknown_method_is_a_one_line_cli_error(tmp_path: Path, capsys) -> None:
    rc = cli.main(["paper", "--quick", "--methods", "xmtf,nope", "--out", str(tmp_path)])
    assert rc == 2
    assert "unknown method(s) nope" in capsys.readouterr().err


def test_parallel_jobs_give_the_serial_results(tmp_path: Path, quick_run) -> None:
    """`--jobs 2` spreads the runs over two worker processes; every run reseeds everything it
    uses, so each (method, seed) comes out exactly as in the serial run."""
    _, serial = quick_run
    methods = "cem1,td3_1,xmtf"
    out = tmp_path / "parallel"
    argv = ["paper", "--quick", "--trials", "2", "--methods", methods, "--jobs", "2"]
    assert cli.main([*argv, "--out", str(out), "--no-progress"]) == 0
    parallel = json.loads((out / "paper.json").read_text())
    assert parallel["meta"]["jobs"] == 2
    for key in methods.split(","):
        got = [
            (t["seed"], t["return_mean"], t["length_mean"])
            for t in parallel["methods"][key]["trials"]
        ]
        want = [
            (t["seed"], t["return_mean"], t["length_mean"])
            for t in serial["methods"][key]["trials"]
        ]
        assert got == want, key
        assert (out / parallel["methods"][key]["checkpoint"]).is_file()


def test_deviation_methods_render_their_own_table_and_the_notes(tmp_path: Path) -> None:
    out = tmp_path / "deviations"
    out.mkdir()
    (out / "paper-notes.md").write_text("## Investigation\n\nwhat was found")
    keys = [m.key for m in METHODS if m.table == 5]
    argv = ["paper", "--quick", "--trials", "1", "--methods", ",".join(keys)]
    assert cli.main([*argv, "--out", str(out), "--no-progress"]) == 0
    md = (out / "paper.md").read_text()
    assert "Table 5" in md and md.rstrip().endswith("what was found")
    for m in METHODS:
        if m.table == 5:
            assert f"| {m.label} |" in md


def test_render_only_appends_new_notes_without_training(tmp_path: Path, quick_run) -> None:
    src, _ = quick_run
    out = tmp_path / "copy"
    out.mkdir()
    (out / "paper.json").write_text((src / "paper.json").read_text())
    (out / "paper-notes.md").write_text("## Investigation\n\nfound it")
    assert cli.main(["paper", "--render-only", "--out", str(out)]) == 0
    md = (out / "paper.md").read_text()
    assert md.rstrip().endswith("found it") and "Table 3" in md
    assert cli.main(["paper", "--render-only", "--out", str(tmp_path / "none")]) == 2


def test_merge_adds_methods_to_an_existing_study(tmp_path: Path, capsys) -> None:
    out = tmp_path / "study"
    base = ["paper", "--quick", "--trials", "1", "--out", str(out), "--no-progress"]
    assert cli.main([*base, "--methods", "cem1,xmtf_init"]) == 0
    first = json.loads((out / "paper.json").read_text())
    assert cli.main([*base, "--methods", "xmtf_no_inner", "--merge"]) == 0
    merged = json.loads((out / "paper.json").read_text())
    assert list(merged["methods"]) == ["cem1", "xmtf_init", "xmtf_no_inner"]
    assert merged["methods"]["cem1"] == first["methods"]["cem1"]
    assert merged["meta"]["merged"][0]["methods"] == ["xmtf_no_inner"]
    md = (out / "paper.md").read_text()
    assert "| xMTF w/o inner stage |" in md and "xmtf_no_inner added on" in md
    # another configuration (here: more seeds) is not the same study
    assert cli.main([*base[:3], "2", *base[4:], "--methods", "td3_1", "--merge"]) == 2
    assert "differs in trials" in capsys.readouterr().err
    assert cli.main([*base[:-3], "--out", str(tmp_path / "none"), "--merge"]) == 2
