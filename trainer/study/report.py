"""paper.md: the study's tables (mean and 95 % CI per method, paired differences), the budget
curves, a verdict computed from the numbers, and the hand-written notes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trainer import stats
from trainer.study.registry import FORMULA_BASELINES, METHODS, MFC_KINDS, NON_PERSONALISED

#: Hand-written findings kept next to paper.json; appended to paper.md on every run.
NOTES_FILE = "paper-notes.md"


def _returns(report: dict[str, Any], key: str, budget_index: int = -1) -> np.ndarray:
    """(seeds, users) evaluation returns of a method at one budget."""
    trials = report["methods"][key]["trials"]
    return np.array([t["budgets"][budget_index]["returns"] for t in trials], np.float64)


def paired(report: dict[str, Any], a: str, b: str, budget_index: int = -1) -> stats.Estimate:
    """``a - b`` at one budget, paired by seed and evaluation user (seeds both have)."""
    x, y = _returns(report, a, budget_index), _returns(report, b, budget_index)
    n = min(len(x), len(y))
    return stats.paired_difference(x[:n], y[:n])


def _mean(report: dict[str, Any], key: str) -> float:
    return float(report["methods"][key]["summary"]["budgets"][-1]["return"]["mean"])


#: The calibrated CEM-1 search selected and guarded as the learners are: a learner's contrast
#: with it shows what is left of its gap to the best formula once both pay for the guard.
GUARDED_FORMULA = "cem1_cal_guarded"
#: The xMTF learners a verdict is computed for, each with its own state ablation: the
#: actor-critic outer stage (the paper's), the policy-search one (trainer/policy_search.py),
#: its block-wise form (no ablation of its own: its "vs no state" contrast is left out) and its
#: globally warm-started form.
LEARNERS = {
    "xmtf": "xmtf_no_state",
    "xmtf_es": "xmtf_es_no_state",
    "xmtf_es_blocks": "",
    "xmtf_es_warm": "xmtf_es_warm_no_state",
}


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The study's contrasts at the last budget, each a paired difference with its 95 % CI:
    for ``xmtf`` at the top level, for ``xmtf_es`` (when run) under its key."""
    methods = report["methods"]
    out: dict[str, Any] = {}
    texts = []
    for key, no_state in LEARNERS.items():
        if key not in methods:
            continue
        found, lines = _contrasts(report, key, no_state)
        if key == "xmtf":
            out.update(found)
        else:
            out[key] = found
        texts.append(" ".join(lines))
    if not texts:
        out["text"] = "xMTF is not in this run: no comparison."
        return out
    budget = methods[next(k for k in LEARNERS if k in methods)]["summary"]["budgets"][-1]
    out["ranking"] = sorted(methods, key=lambda k: -_mean(report, k))
    out["budget"] = budget["budget"]
    out["text"] = f"At {budget['budget']:,} simulated requests per method: " + " ".join(texts)
    return out


def _contrasts(report: dict[str, Any], key: str, no_state: str) -> tuple[dict[str, Any], list[str]]:
    """One learner's contrasts (paired differences) and their sentences."""
    methods = report["methods"]
    name = methods[key]["label"]
    out: dict[str, Any] = {}
    lines: list[str] = []

    def contrast(field: str, other: str, label: str) -> None:
        d = paired(report, key, other)
        out[field] = {"other": other, **d.as_dict(), "significant": d.excludes_zero}
        sign = "above" if d.lo > 0 else "below" if d.hi < 0 else "within noise of"
        lines.append(
            f"{name} vs {label}: {d.mean:+.1f} s per session, 95 % CI [{d.lo:.1f}, {d.hi:.1f}] "
            f"({sign} it)."
        )

    non_personal = [k for k in NON_PERSONALISED if k in methods and k != key]
    if non_personal:
        best = max(non_personal, key=lambda k: _mean(report, k))
        label = f"the best non-personalised method ({methods[best]['label']})"
        contrast("vs_best_non_personalised", best, label)
    if "xmtf_init" in methods:
        contrast("vs_init", "xmtf_init", "its own start (xMTF as initialised)")
    formulas = [k for k in FORMULA_BASELINES if k in methods]
    if formulas:
        best = max(formulas, key=lambda k: _mean(report, k))
        label = f"the best formula-based method ({methods[best]['label']})"
        contrast("vs_best_formula", best, label)
    if GUARDED_FORMULA in methods:
        label = f"the same guard on a formula search ({methods[GUARDED_FORMULA]['label']})"
        contrast("vs_guarded_formula", GUARDED_FORMULA, label)
    if no_state and no_state in methods:
        contrast("vs_no_state", no_state, f"{methods[no_state]['label']} (no personalisation)")
    if "plain_sum" in methods:
        contrast("vs_plain_sum", "plain_sum", "the plain sum")
    return out, lines


def _ci(e: dict[str, Any]) -> str:
    lo, hi = e["ci95"]
    return f"[{lo:.1f}, {hi:.1f}]"


_HEADER = (
    "| {first} | mean | 95 % CI | Δ vs xMTF as initialised | 95 % CI | session length "
    "| sessions at the cap | requests used | MFC violations (%) | actions at a bound (%) "
    "| train s / seed | seeds |\n|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
)


def seed_counts(report: dict[str, Any]) -> str:
    """Training seeds per method: one number, or the range when ``--add-seeds`` grew some."""
    counts = sorted({len(m["trials"]) for m in report["methods"].values()})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def _row(report: dict[str, Any], key: str, label: str) -> str:
    entry = report["methods"][key]
    s = entry["summary"]
    last = s["budgets"][-1]
    delta = "–", "–"
    if "xmtf_init" in report["methods"] and key != "xmtf_init":
        d = paired(report, key, "xmtf_init")
        delta = f"{d.mean:+.1f}", f"[{d.lo:.1f}, {d.hi:.1f}]"
    mono = (
        f"{100 * s['mono_violation_mean']:.2f}"
        if entry["kind"] in MFC_KINDS and "mono_violation_mean" in s
        else "–"
    )
    bound = f"{100 * s['action_at_bound_mean']:.0f}" if "action_at_bound_mean" in s else "–"
    cells = [
        label,
        f"{last['return']['mean']:.1f}",
        _ci(last["return"]),
        *delta,
        f"{last['length_mean']:.2f}",
        f"{100 * last['cap_share']:.1f} %",
        f"{last['requests']:,.0f}",
        mono,
        bound,
        f"{s['seconds_mean']:.0f}" if "seconds_mean" in s else "–",
        str(len(entry["trials"])),
    ]
    return "| " + " | ".join(cells) + " |"


def _lam_of(entry: dict[str, Any], report: dict[str, Any]) -> float:
    return float(entry["tsh_overrides"].get("lam", report["config"]["tsh"]["lam"]))


def render_tables(report: dict[str, Any]) -> str:
    methods = report["methods"]
    budget = report["config"]["budgets"][-1]
    lines = [
        f"### Table 3: every method at {budget:,} simulated requests",
        "",
        _HEADER.format(first="method"),
    ]
    for m in METHODS:
        if m.table == 3 and m.key in methods:
            lines.append(_row(report, m.key, m.label))
    lam_rows = [(_lam_of(methods[k], report), k) for k in methods if methods[k]["table"] == 4]
    if lam_rows and "xmtf" in methods:
        lam_rows.append((_lam_of(methods["xmtf"], report), "xmtf"))
    if lam_rows:
        lines += ["", "### Table 4: xMTF under different λ (eq. 18)", ""]
        lines.append(_HEADER.format(first="λ"))
        for lam, k in sorted(lam_rows):
            lines.append(_row(report, k, f"λ = {lam:g}"))
    deviations = [m for m in METHODS if m.table == 5 and m.key in methods]
    if deviations:
        lines += ["", "### Table 5: this implementation's deviations from the paper, undone", ""]
        lines.append(_HEADER.format(first="method"))
        for m in deviations:
            lines.append(_row(report, m.key, m.label))
    lines += ["", "### Budget curves: mean watch time per session [95 % CI] at each budget", ""]
    budgets = report["config"]["budgets"]
    lines.append("| method | " + " | ".join(f"{b:,} requests" for b in budgets) + " |")
    lines.append("|---|" + "---:|" * len(budgets))
    for m in METHODS:
        if m.key in methods:
            cells = [
                f"{r['return']['mean']:.1f} {_ci(r['return'])}"
                for r in methods[m.key]["summary"]["budgets"]
            ]
            lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


METHOD_NOTES = """\
* Formula 1: `z = Σ a_k o_k`; formula 2: `z = Σ a_k log(o_k + β)`, β = {beta:g}. Formula methods
  search log-weights `u_k`, `a_k = exp(u_k)`, `u_k ∈ [{low:g}, {high:g}]`: monotone by
  construction; `u = 0` is the plain sum (formula 1) or the neutral log formula (formula 2).
  "on calibrated predictions": each task standardised with the world's statistics first (what
  xMTF's cells see).
* CEM: the cross-entropy method over the 6 non-personalised log-weights, each candidate scored by
  the mean watch time of simulated training sessions; it runs until its budget is spent.
* Constant-action CEM on xMTF's parametrisation: the untrained xMTF of the same seed with one
  action `a` for every user found by CEM: what xMTF's form can do without personalisation.
* TD3-1: TD3 (twin critics, target smoothing, delayed updates) whose action is the per-request
  log-weights of formula 1, with the same action penalty as xMTF's actor.
* xMTF: TSH (critic, actor, inner stage with `λ Σ L_mono + (1-λ) L_transfer`, soft transfer
  label), checkpoint selected on validation users (kept at its start unless a checkpoint beats
  it with 95 % confidence); "w/o state": cells, actor and critic see a constant state.
* Every learner's budget counts its training requests and its validation requests."""


def write_markdown(report: dict[str, Any], out: Path) -> Path:
    """Write ``out/paper.md``: the report's tables plus the findings in ``out/NOTES_FILE``."""
    notes = out / NOTES_FILE
    path = out / "paper.md"
    path.write_text(render_markdown(report, notes.read_text() if notes.is_file() else None))
    return path


def render_run(out: Path) -> Path:
    """Re-render ``out/paper.md`` from ``out/paper.json`` and the notes file (no training)."""
    return write_markdown(json.loads((out / "paper.json").read_text()), out)


def render_markdown(report: dict[str, Any], findings: str | None = None) -> str:
    meta, cfg = report["meta"], report["config"]
    tc = cfg["train"]
    quick = (
        "\n> **Quick mode**: tiny budgets for a smoke test; these numbers say nothing about "
        "the methods.\n"
        if cfg["quick"]
        else ""
    )
    n = seed_counts(report)
    jobs = int(meta.get("jobs", 1))
    merged = "".join(
        f"; {', '.join(m['methods'])} added on {m['created']} in {m['seconds'] / 60:.1f} min"
        for m in meta.get("merged", [])
    )
    population = {
        "kuairand": "real KuaiRand-Pure user profiles and videos, disjoint user folds for "
        "training, validation and evaluation",
        "synthetic": "synthetic users and videos with KuaiRand's columns",
    }.get(meta.get("population", ""), "not recorded")
    head = f"""# xMTF offline study on the simulator
{quick}
Generated by `xmtf-train paper` on {meta["created"]} in {meta["seconds"] / 60:.1f} min with
{jobs} parallel job(s) of {meta["torch_threads"]} torch thread(s) (projected
{meta["projected_seconds"] / 60 / jobs:.1f} min){merged}.

* World: seed {meta["world_seed"]}, heterogeneity d = {cfg.get("dose", 0):g}, `max_steps`
  {cfg["sim"]["max_steps"]} (the family of `results/worlds.md`); population: {population}.
* Budget: every method spends the same simulated requests ({
        ", ".join(f"{b:,}" for b in cfg["budgets"])
    }; CEM's candidate sessions and the learners' validation sessions included)
  and is evaluated at each; the tables are at the last.
* Metric: total watch time per session (s) of {meta["eval_sessions"]} held-out evaluation
  users (seed {meta["eval_seed"]}, never used for training or selection), {n} training seed(s)
  per method (the table's last column). Each cell: the mean over seeds and users with a 95 %
  CI from a bootstrap over seeds and, within each, over users; each Δ is a paired difference
  (same seed, same user; the seeds both methods have) with its 95 % CI. Model selection
  used validation users (seed {tc["val_seed"]}, {tc["val_sessions"]} sessions every {
        tc["select_every"]
    } collection steps).
* Learners: {tc["n_users"]} concurrent users, {tc["updates_per_step"]} update(s) per collection
  step at batch {cfg["tsh"]["batch_size"]}; the same five-layer actor/critic MLPs (width
  {cfg["tsh"]["hidden"]}) for every RL method.
"""
    verdict_text = report.get("verdict", {}).get("text", "")
    ranking = report.get("verdict", {}).get("ranking", [])
    labels = {k: report["methods"][k]["label"] for k in report["methods"]}
    form = cfg["formula"]
    notes = METHOD_NOTES.format(
        beta=form["beta"], low=form["log_weight_low"], high=form["log_weight_high"]
    )
    tail = f"""

### Verdict

{verdict_text}

Ranking by mean watch time: {" > ".join(labels[k] for k in ranking)}.

The paper's ordering (formulas < TD3/BatchRL < xMTF) is the hypothesis under test, not a
target: these are the numbers that came out.

### Methods (details in `trainer/study/methods/`)

{notes}
"""
    extra = f"\n{findings.strip()}\n" if findings else ""
    return head + "\n" + render_tables(report) + tail + extra
