"""`xmtf-train paper --quick`: every method end to end, tables that match the JSON."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer import cli, stats
from trainer.loop import TSHLearner
from trainer.study.config import PaperConfig
from trainer.study.registry import DEFAULT_METHODS, METHODS
from trainer.study.report import paired, verdict
from trainer.study.runner import Runner, mfc_violation_rate
from trainer.tsh import TSHAgent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("paper")
    rc = cli.main(["paper", "--quick", "--trials", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out, json.loads((out / "paper.json").read_text())


def test_quick_run_covers_every_default_method_with_finite_results(quick_run) -> None:
    out, report = quick_run
    budgets = report["config"]["budgets"]
    n_users = report["meta"]["eval_sessions"]
    assert set(report["methods"]) == set(DEFAULT_METHODS)
    for key, entry in report["methods"].items():
        assert len(entry["trials"]) == 2, key
        for trial in entry["trials"]:
            rows = trial["budgets"]
            assert [r["budget"] for r in rows] == budgets, key
            for row in rows:
                assert len(row["returns"]) == n_users and all(map(math.isfinite, row["returns"]))
                if entry["kind"] == "control" or key == "xmtf_init":
                    assert row["requests"] == 0, key
                else:  # the budget counter: every method spends at least its budget
                    assert row["requests"] >= row["budget"], (key, row)
        s = entry["summary"]
        lo, hi = s["return_ci95"]
        assert lo <= s["budgets"][-1]["return"]["mean"] <= hi, key
        if entry["kind"] != "control":
            assert entry["checkpoint"] and (out / entry["checkpoint"]).is_file(), key
        if entry["kind"] in ("tsh", "init"):
            assert 0.0 <= s["mono_violation_mean"] <= 1.0, key
    assert report["plain_sum"]["n_sessions"] == n_users
    assert report["meta"]["projected_seconds"] > 0


def test_cem_spends_its_budget_through_the_same_counter() -> None:
    """CEM's candidate sessions are its training: it stops once the budget is spent, having
    spent at most one more iteration than needed."""
    config = dataclasses.replace(PaperConfig.quick_config(1), budgets=(400, 1200))
    runner = Runner(config)
    cem = next(m for m in METHODS if m.key == "cem1")
    trial = runner.run(cem, seed=0)
    used = [row["requests"] for row in trial.budgets]
    assert used[0] >= 400 and used[1] >= 1200
    per_iteration = trial.curve[0]["iteration"] and used[1] / len(trial.curve)
    assert used[1] < 1200 + 2 * per_iteration


def test_markdown_tables_match_the_json(quick_run) -> None:
    out, report = quick_run
    md = (out / "paper.md").read_text()
    assert "Table 3" in md and "Budget curves" in md and "Quick mode" in md
    rows: dict[str, str] = {}
    for line in md.splitlines():  # Table 3 comes first; the budget curves repeat the labels
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)
    init_trials = report["methods"]["xmtf_init"]["trials"]
    init = np.array([t["budgets"][-1]["returns"] for t in init_trials])
    for key, entry in report["methods"].items():
        cells = [c.strip() for c in rows[entry["label"]].split("|")[1:-1]]
        returns = np.array([t["budgets"][-1]["returns"] for t in entry["trials"]])
        est = stats.estimate(returns)
        assert cells[1] == f"{returns.mean():.1f}", key
        assert cells[2] == f"[{est.lo:.1f}, {est.hi:.1f}]", key
        if key != "xmtf_init":
            init = np.array(
                [t["budgets"][-1]["returns"] for t in report["methods"]["xmtf_init"]["trials"]]
            )
            assert cells[3] == f"{(returns - init).mean():+.1f}", key
    verdict = report["verdict"]
    assert verdict["text"] in md
    assert set(verdict) >= {"vs_best_non_personalised", "vs_init", "vs_best_formula", "ranking"}
    d = verdict["vs_init"]
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert re.search(r"projected\s+[0-9.]+ min", md)


def test_every_method_runs(tmp_path: Path) -> None:
    """The methods outside the default set (BatchRL, the ablations, λ, Table 5) run too."""
    others = [m.key for m in METHODS if m.key not in DEFAULT_METHODS]
    argv = ["paper", "--quick", "--trials", "1", "--methods", ",".join(["xmtf_init", *others])]
    assert cli.main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "paper.json").read_text())
    assert set(report["methods"]) == {"xmtf_init", *others}


def test_same_evaluation_users_for_every_method() -> None:
    """A deterministic policy evaluated twice gives the same sessions (fixed eval seed)."""
    runner = Runner(PaperConfig.quick_config(1))
    fn = lambda s, p: p.sum(axis=1)  # noqa: E731
    assert runner.evaluate(fn) == runner.evaluate(fn)
    assert runner.config.train.eval_seed != runner.config.train.val_seed


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


def test_merge_accepts_a_study_run_before_an_option_existed(tmp_path: Path, capsys) -> None:
    """A config field the prior study lacks merges when this run keeps its default (the old
    behaviour), and is a different study when this run changes it."""
    out = tmp_path / "study"
    base = ["paper", "--quick", "--trials", "1", "--out", str(out), "--no-progress"]
    assert cli.main([*base, "--methods", "xmtf_init"]) == 0
    prior = json.loads((out / "paper.json").read_text())
    del prior["config"]["tsh"]["transfer_anchor"]  # as written before the option existed
    (out / "paper.json").write_text(json.dumps(prior))
    assert cli.main([*base, "--methods", "cem1", "--merge"]) == 0
    (tmp_path / "c.json").write_text(json.dumps({"tsh": {"transfer_anchor": "version"}}))
    changed = [*base, "--methods", "td3_1", "--merge", "--config", str(tmp_path / "c.json")]
    assert cli.main(changed) == 2
    assert "differs in tsh" in capsys.readouterr().err


def test_a_method_merged_in_can_be_grown_with_what_it_read(tmp_path: Path) -> None:
    """A study whose methods never read ``td3.offline_updates`` stored no value for it; once
    BatchRL-MTF is merged in, the study records the value it ran with, so growing its seeds
    merges again (it used to fail: "configuration differs in td3")."""
    out = tmp_path / "study"
    base = ["paper", "--quick", "--out", str(out), "--no-progress"]
    assert cli.main([*base, "--trials", "1", "--methods", "xmtf_init"]) == 0
    prior = json.loads((out / "paper.json").read_text())
    del prior["config"]["td3"]["offline_updates"]  # as a study without BatchRL wrote it
    (out / "paper.json").write_text(json.dumps(prior))
    grow = [*base, "--methods", "batchrl1", "--merge", "--add-seeds"]
    assert cli.main([*grow, "--trials", "1"]) == 0
    merged = json.loads((out / "paper.json").read_text())
    assert merged["config"]["td3"]["offline_updates"] == 20  # the quick config's
    assert cli.main([*grow, "--trials", "2"]) == 0
    grown = json.loads((out / "paper.json").read_text())
    assert [t["seed"] for t in grown["methods"]["batchrl1"]["trials"]] == [0, 1]
    # a value the prior's methods never read is recorded as this run's, not the prior's
    grown["config"]["td3"]["offline_updates"] = 7
    for key in ("batchrl1", "batchrl2"):
        grown["methods"].pop(key, None)
    (out / "paper.json").write_text(json.dumps(grown))
    assert cli.main([*base, "--trials", "2", "--methods", "batchrl2", "--merge"]) == 0
    again = json.loads((out / "paper.json").read_text())
    assert again["config"]["td3"]["offline_updates"] == 20


def test_add_seeds_grows_a_study_in_resumable_parts(tmp_path: Path, capsys) -> None:
    """``--merge --add-seeds --trials 2`` runs only seed 1 of the named methods and appends it:
    the grown study equals one run with 2 seeds from the start, seed for seed."""
    out, fresh = tmp_path / "grown", tmp_path / "fresh"
    base = ["paper", "--quick", "--no-progress", "--methods"]
    assert cli.main([*base, "cem1,xmtf_init", "--trials", "1", "--out", str(out)]) == 0
    first = json.loads((out / "paper.json").read_text())
    grow = [*base, "cem1", "--trials", "2", "--out", str(out), "--merge", "--add-seeds"]
    assert cli.main(grow) == 0
    assert "1 runs of 1 methods (seeds up to 2)" in capsys.readouterr().err
    grown = json.loads((out / "paper.json").read_text())
    assert cli.main([*base, "cem1", "--trials", "2", "--out", str(fresh)]) == 0
    fresh_cem = json.loads((fresh / "paper.json").read_text())["methods"]["cem1"]["trials"]
    cem = grown["methods"]["cem1"]["trials"]
    assert [t["seed"] for t in cem] == [0, 1]
    assert cem[0] == first["methods"]["cem1"]["trials"][0]  # kept, not re-run
    for got, want in zip(cem, fresh_cem, strict=True):
        assert got["budgets"][-1]["returns"] == want["budgets"][-1]["returns"]
    assert grown["methods"]["xmtf_init"] == first["methods"]["xmtf_init"]  # not named: kept
    assert grown["config"]["trials"] == 2
    md = (out / "paper.md").read_text()
    assert "1–2 training seed(s)" in md
    assert re.search(r"\| CEM-1 \|.*\| 2 \|$", md, re.M)
    # a paired difference uses the seeds both methods have (here seed 0)
    diff = paired(grown, "cem1", "xmtf_init")
    x = np.array(cem[0]["budgets"][-1]["returns"])
    y = np.array(grown["methods"]["xmtf_init"]["trials"][0]["budgets"][-1]["returns"])
    assert diff.mean == pytest.approx(float((x - y).mean()))
    assert cli.main([*base, "cem1", "--trials", "2", "--out", str(out), "--add-seeds"]) == 2
    assert "needs --merge" in capsys.readouterr().err


def test_family_puts_the_contrast_next_to_the_headroom(
    tmp_path: Path, quick_run, capsys: pytest.CaptureFixture[str]
) -> None:
    src, report = quick_run
    head = tmp_path / "headroom"
    assert cli.main(["headroom", "--quick", "--doses", "0", "--out", str(head)]) == 0
    other = tmp_path / "headroom-w102"  # another world's headroom: the study's rows ignore it
    argv = ["headroom", "--quick", "--doses", "0", "--world-seed", "102", "--out", str(other)]
    assert cli.main(argv) == 0
    out = tmp_path / "family"
    files = f"{other / 'headroom.json'},{head / 'headroom.json'}"
    argv = ["family", "--papers", str(src), "--headroom", files]
    assert cli.main([*argv, "--out", str(out)]) == 0
    rows = json.loads((out / "dose-response.json").read_text())
    by_learner = {r["learner"]: r for r in rows}
    assert set(by_learner) == {"xmtf", "xmtf_es", "xmtf_es_warm"}  # one row per xMTF learner
    measured = json.loads((head / "headroom.json").read_text())["doses"][0]["headroom"]
    for row in rows:
        assert row["dose"] == 0.0 and row["headroom"] == measured  # world 101's, not 102's
    assert by_learner["xmtf_es_warm"]["vs_no_state"]["other"] == "xmtf_es_warm_no_state"
    verdict = report["verdict"]
    assert by_learner["xmtf"]["vs_best_non_personalised"] == verdict["vs_best_non_personalised"]
    es = by_learner["xmtf_es"]
    assert es["vs_best_non_personalised"] == verdict["xmtf_es"]["vs_best_non_personalised"]
    assert es["vs_no_state"]["other"] == "xmtf_es_no_state"
    md = (out / "dose-response.md").read_text()
    assert "| synthetic | 101 | 0 |" in md and "xMTF (ES outer stage)" in md
    for name in ("dose_response.png", f"budget_curves_{src.name}.png"):
        assert (out / "figures" / name).stat().st_size > 1000  # a rendered PNG
        assert f"figures/{name}" in (out / "paper.md").read_text()
    assert cli.main(["family", "--papers", str(tmp_path / "none"), "--out", str(out)]) == 2
    twice = f"{head / 'headroom.json'},{head / 'headroom.json'}"  # one world measured twice
    assert cli.main(["family", "--papers", str(src), "--headroom", twice, "--out", str(out)]) == 2
    assert "already in another file" in capsys.readouterr().err
    absent = str(tmp_path / "nope.json")
    assert cli.main(["family", "--papers", str(src), "--headroom", absent, "--out", str(out)]) == 2
    assert "--headroom: no such file" in capsys.readouterr().err


def test_the_block_wise_learner_gets_a_verdict_without_a_state_contrast(quick_run) -> None:
    """``xmtf_es_blocks`` has contrasts of its own; it has no state ablation, so no "vs no
    state" contrast (the ES one would compare it with another learner)."""
    _, report = quick_run
    grown = copy.deepcopy(report)
    grown["methods"]["xmtf_es_blocks"] = copy.deepcopy(report["methods"]["xmtf_es"])
    found = verdict(grown)["xmtf_es_blocks"]
    assert found["vs_init"] == verdict(report)["xmtf_es"]["vs_init"]  # the same trials
    assert "vs_best_non_personalised" in found and "vs_no_state" not in found


def test_headroom_files_are_keyed_by_population_world_and_dose(tmp_path: Path) -> None:
    """A KuaiRand population's headroom and a synthetic world's with the same seed and dose are
    different worlds; one world in two files is refused."""
    from trainer.study.family import headroom_by_world

    def write(name: str, data_dir: str | None, doses: list[float]) -> Path:
        sim = {"seed": 101, "data_dir": data_dir}
        rows = [{"dose": d, "headroom": {"mean": float(d), "ci95": [0.0, 1.0]}} for d in doses]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"config": {"sim": sim}, "doses": rows}))
        return path

    synthetic = write("synthetic", None, [0.0, 1.0])
    kuairand = write("kuairand", "/data/kuairand-pure", [1.0])
    room = headroom_by_world([synthetic, kuairand])
    assert set(room) == {("synthetic", 101, 0.0), ("synthetic", 101, 1.0), ("kuairand", 101, 1.0)}
    assert room[("kuairand", 101, 1.0)]["headroom"]["mean"] == 1.0
    with pytest.raises(ValueError, match="already in another file"):
        headroom_by_world([synthetic, write("again", None, [1.0])])


def test_dose_rows_refuse_a_missing_headroom_file(tmp_path: Path) -> None:
    """A headroom file that is not there is an error, not a study without headroom."""
    from trainer.study.family import dose_rows

    with pytest.raises(FileNotFoundError):
        dose_rows({}, [tmp_path / "absent.json"])
