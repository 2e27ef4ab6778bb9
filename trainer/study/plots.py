"""``xmtf-train plot``: PNG figures of the learned MFCs (paper Figures 5-7) and training curves.

* ``fig5_users.png``: the MFC of one task ("long_view" when there is one) against its input
  prediction, for several users (paper Fig. 5);
* ``fig6_tasks.png``: every task's MFC for one user (Fig. 6);
* ``fig7_lambda.png``: the same users' "long_view" MFC for each λ of the paper run (Fig. 7);
* ``curves.png``: training return, critic loss and monotonicity violation rate per method.

The plotted MFC is the whole cell, ``q = q^I (1 + a q^I)`` with ``a = mu(s)`` the user's action
(eqs. 9-11), over the task's prediction range; the other predictions do not enter it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer import losses
from trainer.tsh import TSHAgent

_GRID = 101


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mfc_curves(
    agent: TSHAgent, states: np.ndarray, task: int, grid: int = _GRID
) -> tuple[np.ndarray, np.ndarray]:
    """x (G,) over the task's range and the MFC output (S, G) for each state."""
    spec = agent.tasks[task]
    x = losses.probe_grid(agent.tasks, grid)[task]
    k = len(agent.tasks)
    preds = np.full((len(states), k, grid), 0.5 * (spec.low + spec.high), np.float32)
    preds[:, task, :] = x
    action, _ = agent.act(states, explore=False)
    q_inner = agent.inner(states, preds)[:, task, :]
    return x, q_inner * (1.0 + action[:, task : task + 1] * q_inner)


def _task_index(agent: TSHAgent, name: str = "long_view") -> int:
    names = [t.name for t in agent.tasks]
    return names.index(name) if name in names else 0


def probe_states(agent: TSHAgent, n: int, seed: int = 0) -> np.ndarray:
    """States spread like the observed ones (the normaliser's mean ± std)."""
    rng = np.random.default_rng(seed)
    mean, std = agent.norm.mean.numpy(), np.sqrt(agent.norm.var.numpy())
    return (mean + std * rng.normal(0.0, 1.0, (n, agent.state_dim))).astype(np.float32)


def simulator_states(
    sim_config: dict[str, Any], n: int, seed: int = 0, steps: int = 3
) -> np.ndarray:
    """States of ``n`` simulated users a few requests into their sessions (plain-sum ranking)."""
    from trainer.sim import SimConfig, UserSimulator

    sim = UserSimulator(SimConfig().replace(**sim_config))
    obs = sim.reset(n, seed=10_000 + seed, auto_reset=True)
    for _ in range(steps):
        obs = sim.step_scores(obs.predictions.sum(axis=1)).observation
    return obs.state


def plot_users(agent: TSHAgent, states: np.ndarray, path: Path, title: str = "") -> Path:
    plt = _pyplot()
    task = _task_index(agent)
    x, q = mfc_curves(agent, states, task)
    fig, ax = plt.subplots(figsize=(5, 4))
    for i, row in enumerate(q):
        ax.plot(x, row, label=f"user {i + 1}")
    ax.set_xlabel(f"prediction o ({agent.tasks[task].name})")
    ax.set_ylabel("MFC output q")
    ax.set_title(title or f"MFC of '{agent.tasks[task].name}' for different users")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tasks(agent: TSHAgent, state: np.ndarray, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for k, spec in enumerate(agent.tasks):
        x, q = mfc_curves(agent, state[None, :], k)
        ax.plot(x, q[0], label=spec.name)
    ax.set_xlabel("prediction o")
    ax.set_ylabel("MFC output q")
    ax.set_title("MFCs of one user for different predictions")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lambdas(agents: Sequence[tuple[str, TSHAgent]], states: np.ndarray, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(agents), figsize=(3.2 * len(agents), 3.2), squeeze=False)
    for ax, (label, agent) in zip(axes[0], agents, strict=True):
        task = _task_index(agent)
        x, q = mfc_curves(agent, states, task)
        for row in q:
            ax.plot(x, row)
        ax.set_title(label)
        ax.set_xlabel(f"o ({agent.tasks[task].name})")
    axes[0][0].set_ylabel("MFC output q")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_curve(trials: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of ``key`` per logged step (steps present in every seed)."""
    per_seed = [{r["step"]: r[key] for r in t["curve"] if key in r} for t in trials]
    steps = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
    return np.array(steps), np.array([np.mean([d[s] for d in per_seed]) for s in steps])


def plot_curves(report: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    panels = (
        ("train_return", "return of finished sessions (training, with exploration)", False),
        ("critic_loss", "critic loss", True),
        ("mono_violation", "MFC monotonicity violation rate (training batch)", False),
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    entries = [e for e in report["methods"].values() if e["kind"] != "cem"]  # CEM: per iteration
    colours = plt.get_cmap("tab20")
    lines: dict[str, Any] = {}
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        for i, entry in enumerate(entries):
            steps, values = _mean_curve(entry["trials"], key)
            if len(steps):
                (line,) = ax.plot(
                    steps, values, color=colours((2 * i) % 20 + (i // 10) % 2), lw=1.2
                )
                lines.setdefault(entry["label"], line)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("collection step (BatchRL: offline updates / updates per step)")
        if log:
            ax.set_yscale("log")
    fig.legend(list(lines.values()), list(lines), loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.83, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_checkpoint(checkpoint: Path, out: Path, n_users: int = 5) -> list[Path]:
    """Figures 5 and 6 of one xMTF checkpoint (states probed from its normaliser)."""
    out.mkdir(parents=True, exist_ok=True)
    agent = TSHAgent.load(checkpoint)
    states = probe_states(agent, n_users)
    return [
        plot_users(agent, states, out / "fig5_users.png"),
        plot_tasks(agent, states[0], out / "fig6_tasks.png"),
    ]


def plot_run(run: Path, out: Path, n_users: int = 5) -> list[Path]:
    """All figures of an ``xmtf-train paper`` output folder (first seed's checkpoints)."""
    out.mkdir(parents=True, exist_ok=True)
    report = json.loads((run / "paper.json").read_text())
    methods = report["methods"]
    states = simulator_states(report["config"]["sim"], n_users)
    files: list[Path] = []

    def load(key: str) -> TSHAgent | None:
        entry = methods.get(key)
        if not entry or not entry.get("checkpoint") or entry["kind"] != "tsh":
            return None
        path = run / entry["checkpoint"]
        return TSHAgent.load(path) if path.is_file() else None

    main = load("xmtf")
    if main is not None:
        files.append(plot_users(main, states, out / "fig5_users.png"))
        files.append(plot_tasks(main, states[0], out / "fig6_tasks.png"))
    lam_agents = []
    for key, entry in methods.items():
        if entry["table"] == 4 or key == "xmtf":
            agent = load(key)
            if agent is not None:
                lam_agents.append((agent.config.lam, f"λ = {agent.config.lam:g}", agent))
    if lam_agents:
        lam_agents.sort(key=lambda t: t[0])
        files.append(plot_lambdas([(lbl, a) for _, lbl, a in lam_agents], states,
                                  out / "fig7_lambda.png"))  # fmt: skip
    files.append(plot_curves(report, out / "curves.png"))
    return files
