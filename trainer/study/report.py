"""paper.md: the study's tables, its verdict computed from the numbers, and the notes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from trainer.study.registry import FORMULA_BASELINES, METHODS, MFC_KINDS


def _pm(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Where xMTF stands against the best formula-based method and the plain sum."""
    methods = report["methods"]
    out: dict[str, Any] = {}
    present = [k for k in FORMULA_BASELINES if k in methods]
    if "xmtf" not in methods or not present:
        out["text"] = "xMTF or every formula baseline is missing from this run: no comparison."
        return out
    x = methods["xmtf"]["summary"]
    best = max(present, key=lambda k: methods[k]["summary"]["return_mean"])
    b = methods[best]["summary"]
    diff = x["return_mean"] - b["return_mean"]
    se = math.sqrt(x["return_std"] ** 2 / x["n_seeds"] + b["return_std"] ** 2 / b["n_seeds"])
    z = diff / se if se > 0 else None
    plain = report["plain_sum"]["return_mean"]
    out |= {
        "best_formula_baseline": best,
        "xmtf_minus_best": diff,
        "z": z,
        "xmtf_beats_best_formula": bool(diff > 0),
        "xmtf_vs_plain_sum_pct": 100.0 * (x["return_mean"] / plain - 1.0),
    }
    label = methods[best]["label"]
    if z is None:
        noise = " (no spread over seeds, e.g. a single seed: significance not assessed)"
    else:
        noise = f" (difference / s.e. = {z:.1f}" + (
            "; within noise, |difference| < 2 s.e.)" if abs(z) < 2 else ")"
        )
    if diff > 0:
        text = (
            f"xMTF beats the best formula-based method, {label}, by {diff:.1f} s of watch time "
            f"per session{noise}."
        )
    else:
        text = (
            f"xMTF does NOT beat the best formula-based method: {label} is ahead by "
            f"{-diff:.1f} s of watch time per session{noise}. "
            "The paper's claim is not reproduced on this simulator with this budget."
        )
    text += f" xMTF vs the plain sum: {out['xmtf_vs_plain_sum_pct']:+.1f} %."
    lam_keys = [k for k in methods if methods[k]["table"] == 4] + ["xmtf"]
    if len(lam_keys) > 1:
        best_lam = max(lam_keys, key=lambda k: methods[k]["summary"]["return_mean"])
        out["best_lambda"] = _lam_of(methods[best_lam], report)
        text += f" Best λ in Table 4: {out['best_lambda']:g} (the paper's: 0.4)."
    ranking = sorted(methods, key=lambda k: -methods[k]["summary"]["return_mean"])
    out["ranking"] = ranking
    out["text"] = text
    return out


def _lam_of(entry: dict[str, Any], report: dict[str, Any]) -> float:
    return float(entry["tsh_overrides"].get("lam", report["config"]["tsh"]["lam"]))


METHOD_NOTES = """\
* Formula 1: `z = Σ a_k o_k`; formula 2: `z = Σ a_k log(o_k + β)`, β = {beta:g}.
  Formula methods search log-weights `u_k`, `a_k = exp(u_k)`, `u_k ∈ [{low:g}, {high:g}]`:
  monotone by construction; `u = 0` is the plain sum (formula 1).
* CEM-1/2: cross-entropy method over the 6 non-personalised log-weights, each candidate scored
  by the mean watch time of simulated training sessions (never the evaluation users).
* TD3-1/2: TD3 (twin critics with the min target, target-policy smoothing, delayed actor and
  target updates) whose action is the per-request log-weights of the formula.
* BatchRL-MTF-1/2: TD3+BC (behaviour-cloning regularised offline actor-critic) trained only on
  a fixed log collected by the neutral weights plus Gaussian noise.
* xMTF: TSH (critic, actor, inner stage with `λ Σ L_mono + (1-λ) L_transfer`), λ = 0.4 unless
  stated; "monotone by construction": non-negative weights on the MFCs' prediction path.
* xMTF w/o outer stage: no RL; the MFCs are trained with eq. 18 whose transfer label is each
  shown item's observed watch time (BPR over shown-item pairs), i.e. myopic.
* xMTF w/o inner stage: no MFCs; TSH's actor-critic drives `z = Σ o_k (1 + a_k o_k)`.
* Formula-based methods for the verdict: CEM, TD3, BatchRL-MTF and xMTF w/o inner stage."""


def _row(label: str, s: dict[str, float], plain: float, violation: bool) -> str:
    ret = _pm(s["return_mean"], s.get("return_std", 0.0), 1)
    length = _pm(s["length_mean"], s.get("length_std", 0.0), 2)
    gain = 100.0 * (s["return_mean"] / plain - 1.0)
    viol = (
        _pm(100.0 * s["mono_violation_mean"], 100.0 * s["mono_violation_std"], 2)
        if violation and "mono_violation_mean" in s
        else "–"
    )
    seconds = f"{s['seconds_mean']:.0f}" if "seconds_mean" in s else "–"
    return f"| {label} | {ret} | {length} | {gain:+.1f} % | {viol} | {seconds} |"


_HEADER = (
    "| {first} | watch time / session (s) | session length (requests) | vs plain sum "
    "| MFC monotonicity violations (%) | train s / seed |\n|---|---:|---:|---:|---:|---:|"
)


def render_tables(report: dict[str, Any]) -> str:
    methods = report["methods"]
    plain_eval = report["plain_sum"]
    plain = plain_eval["return_mean"]
    plain_row = {
        "return_mean": plain,
        "return_std": 0.0,
        "length_mean": plain_eval["length_mean"],
        "length_std": 0.0,
    }
    lines = ["### Table 3: offline performance of the methods", "", _HEADER.format(first="method")]
    lines.append(_row("plain sum (no training)", plain_row, plain, False))
    for m in METHODS:
        if m.table == 3 and m.key in methods:
            mfc = m.kind in MFC_KINDS and dict(m.tsh).get("use_inner", True)
            lines.append(_row(m.label, methods[m.key]["summary"], plain, mfc))
    lam_rows = [(_lam_of(methods[k], report), k) for k in methods if methods[k]["table"] == 4]
    if "xmtf" in methods:
        lam_rows.append((_lam_of(methods["xmtf"], report), "xmtf"))
    if lam_rows:
        lines += ["", "### Table 4: xMTF under different λ (eq. 18)", ""]
        lines.append(_HEADER.format(first="λ"))
        for lam, k in sorted(lam_rows):
            lines.append(_row(f"λ = {lam:g}", methods[k]["summary"], plain, True))
    deviations = [m for m in METHODS if m.table == 5 and m.key in methods]
    if deviations:
        lines += ["", "### Table 5: this implementation's deviations from the paper, undone", ""]
        lines.append(_HEADER.format(first="method"))
        for m in deviations:
            lines.append(_row(m.label, methods[m.key]["summary"], plain, True))
    return "\n".join(lines)


#: Hand-written findings kept next to paper.json; appended to paper.md on every run.
NOTES_FILE = "paper-notes.md"


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
    n = cfg["trials"]
    jobs = int(meta.get("jobs", 1))
    merged = "".join(
        f"; {', '.join(m['methods'])} added on {m['created']} in {m['seconds'] / 60:.1f} min"
        for m in meta.get("merged", [])
    )
    population = {
        "kuairand": "real KuaiRand-Pure user profiles and videos (`XMTF_KUAIRAND_DIR`)",
        "synthetic": "synthetic users and videos with KuaiRand's columns (no `XMTF_KUAIRAND_DIR`"
        " set: what a fresh clone reproduces)",
    }.get(meta.get("population", ""), "not recorded in this run's paper.json")
    head = f"""# xMTF offline study on the simulator (paper Tables 3 and 4)
{quick}
Generated by `xmtf-train paper` on {meta["created"]} in {meta["seconds"] / 60:.1f} min with
{jobs} parallel job(s) of {meta["torch_threads"]} torch thread(s) (projected
{meta["projected_seconds"] / 60 / jobs:.1f} min){merged}.

* Population: {population}.
* Metric: total watch time per session (s) on the same {meta["eval_sessions"]} evaluation
  users (`evaluate(..., seed={meta["eval_seed"]})`) of one simulated world (world seed
  {meta["world_seed"]}); each cell is the mean ± sample std over {n} training seed(s)
  ({", ".join(map(str, meta["seeds"]))}) of the per-seed mean over those sessions. The plain sum
  is deterministic (one evaluation, no training), so it has no spread over seeds.
* Budget of every learning method: {tc["total_steps"]} collection steps x {tc["n_users"]}
  concurrent users, {tc["updates_per_step"]} updates per step (batch {cfg["tsh"]["batch_size"]});
  the same five-layer actor/critic MLPs (width {cfg["tsh"]["hidden"]}) and RL hyper-parameters
  for every RL method. CEM: {cfg["cem"]["iterations"]} iterations x {cfg["cem"]["population"]}
  candidates x {cfg["cem"]["sessions"]} sessions. BatchRL-MTF: the same number of transitions,
  logged once by the neutral weights plus noise, then the same number of updates offline.
* MFC monotonicity violations: share of adjacent steps of a 33-point grid over each task's
  prediction range, at states met during evaluation, where the inner stage moves against the
  task's direction (formula methods are monotone by construction).
"""
    verdict_text = report.get("verdict", {}).get("text", "")
    ranking = report.get("verdict", {}).get("ranking", [])
    labels = {k: report["methods"][k]["label"] for k in report["methods"]}
    body = render_tables(report)
    form = cfg["formula"]
    notes = METHOD_NOTES.format(
        beta=form["beta"], low=form["log_weight_low"], high=form["log_weight_high"]
    )
    tail = f"""

### Verdict

{verdict_text}

Ranking by mean watch time: {" > ".join(labels[k] for k in ranking)}.

The paper's ordering (CEM < TD3/BatchRL < xMTF; λ = 0.4 best) is the hypothesis under test,
not a target: these are the numbers that came out.

### Methods (details in `trainer/study/methods/`)

{notes}
"""
    extra = f"\n{findings.strip()}\n" if findings else ""
    return head + "\n" + body + tail + extra
