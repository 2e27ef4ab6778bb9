"""The study's summary figures: learning curves over budgets, and the dose-response.

* ``budget_curves(report, path)``: every method's mean watch time per session with its 95 % CI
  at each budget of one study (its learning curve at equal budgets);
* ``dose_response(rows, path)``: each xMTF learner's margin over the best budget-matched
  non-personalised method, with its 95 % CI, against the world's measured headroom (oracle −
  global, with its CI); studies without a measured headroom (KuaiRand users) are placed at
  100 x their dose, and the learners of one study side by side (3 s apart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.study.plots import _pyplot


def budget_curves(report: dict[str, Any], path: Path) -> Path:
    """Mean [95 % CI] per method at each budget (one line per method)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab20")
    styles = ("-", "--", ":")
    for i, entry in enumerate(report["methods"].values()):
        rows = entry["summary"]["budgets"]
        x = [r["budget"] for r in rows]
        y = [r["return"]["mean"] for r in rows]
        lo = [r["return"]["ci95"][0] for r in rows]
        hi = [r["return"]["ci95"][1] for r in rows]
        colour = colours((2 * i) % 20 + (i // 10) % 2)
        ax.plot(x, y, marker="o", color=colour, lw=1.4, ls=styles[i % 3], label=entry["label"])
        ax.fill_between(x, lo, hi, color=colour, alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("training budget (simulated requests, validation included)")
    ax.set_ylabel("watch time per session (s), evaluation users")
    world, dose = report["meta"]["world_seed"], report["config"].get("dose", 0.0)
    users = report["meta"].get("population", "synthetic")
    ax.set_title(f"Learning curves at equal budgets (world {world}, d = {dose:g}, {users} users)",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dose_response(rows: list[dict[str, Any]], path: Path) -> Path:
    """Margin over the best non-personalised method against the measured headroom."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"xmtf": "o", "xmtf_es": "s", "xmtf_es_blocks": "D", "xmtf_es_warm": "^"}
    for j, learner in enumerate(sorted({r.get("learner", "xmtf") for r in rows})):
        mine = [r for r in rows if r.get("learner", "xmtf") == learner and
                r["vs_best_non_personalised"]]  # fmt: skip
        if not mine:
            continue
        xs, xerr_lo, xerr_hi, ys, yerr_lo, yerr_hi = [], [], [], [], [], []
        for r in mine:
            h = r.get("headroom")
            x = (h["mean"] if h else 100.0 * r["dose"]) + 3.0 * j  # learners side by side
            xs.append(x)
            xerr_lo.append(x - 3.0 * j - h["ci95"][0] if h else 0.0)
            xerr_hi.append(h["ci95"][1] - x + 3.0 * j if h else 0.0)
            c = r["vs_best_non_personalised"]
            ys.append(c["mean"])
            yerr_lo.append(c["mean"] - c["ci95"][0])
            yerr_hi.append(c["ci95"][1] - c["mean"])
        ax.errorbar(xs, ys, xerr=[xerr_lo, xerr_hi], yerr=[yerr_lo, yerr_hi],
                    fmt=markers.get(learner, "^"), capsize=3, label=learner)  # fmt: skip
        for x, y, r in zip(xs, ys, mine, strict=True):
            users = ", KuaiRand" if r.get("population") == "kuairand" else ""
            ax.annotate(f"d={r['dose']:g}, w{r['world_seed']}{users}", (x, y), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("measured headroom: oracle − best global weights (s per session)")
    ax.set_ylabel("xMTF − best non-personalised (s per session)")
    ax.set_title("Dose-response: xMTF's margin against the personalisation headroom", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
