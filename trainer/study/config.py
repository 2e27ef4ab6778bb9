"""The study's configuration: the world, the learners' hyper-parameters and budgets, the seeds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import TSHConfig, from_dict, load_json, to_dict
from trainer.loop import TrainConfig
from trainer.policy_search import PolicySearchConfig
from trainer.sim import SimConfig
from trainer.study.methods.cem import CEMConfig
from trainer.study.methods.formulas import FormulaConfig
from trainer.study.methods.td3 import TD3Config
from trainer.study.registry import DEFAULT_METHODS, METHOD_BY_KEY

#: The study's config sections besides ``sim``, by their name in ``paper.json`` and in
#: ``--config`` files.
SECTIONS: dict[str, type] = {
    "tsh": TSHConfig,
    "train": TrainConfig,
    "cem": CEMConfig,
    "td3": TD3Config,
    "es": PolicySearchConfig,
    "formula": FormulaConfig,
}


@dataclass(frozen=True)
class PaperConfig:
    """One world of the study (``sim`` with ``dose`` as its heterogeneity), its methods, seeds
    and budgets. Defaults: world seed 101 of the registered family (results/worlds.md)."""

    sim: SimConfig = field(default_factory=lambda: SimConfig(max_steps=80, seed=101))
    dose: float = 0.0
    # The study runs the paper's unanchored transfer (what every committed study ran); the
    # product's default anchor is Table 5's xmtf_anchor row.
    tsh: TSHConfig = field(
        default_factory=lambda: TSHConfig(batch_size=256, transfer_anchor="none")
    )
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            total_steps=400,
            updates_per_step=1,
            eval_every=0,
            eval_sessions=2000,
            eval_seed=30_000,
            select_every=200,
            val_sessions=300,
            val_seed=20_000,
            confirm_sessions=0,  # the committed studies ran without the confirmation test
        )
    )
    # every method is evaluated when its training (and validation) has used each budget, in
    # simulated requests; the main table is at the last one
    budgets: tuple[int, ...] = (100_000, 300_000)
    cem: CEMConfig = field(
        default_factory=lambda: CEMConfig(iterations=10_000, population=16, sessions=100)
    )
    td3: TD3Config = field(default_factory=TD3Config)
    es: PolicySearchConfig = field(default_factory=PolicySearchConfig)
    formula: FormulaConfig = field(default_factory=FormulaConfig)
    trials: int = 10
    methods: tuple[str, ...] = DEFAULT_METHODS
    log_every: int = 10  # training-curve resolution, in collection steps
    quick: bool = False
    # torch intra-op threads. 1 by default: these networks are small, and on a busy 2-core
    # machine two threads per process thrash (10x and worse slow-downs were measured).
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError("trials must be >= 1")
        if self.torch_threads < 1:
            raise ValueError("torch_threads must be >= 1")
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise ValueError("--budget / budgets must be positive request counts")
        if list(self.budgets) != sorted(set(self.budgets)):
            raise ValueError("--budget / budgets must be increasing")
        if self.dose < 0:
            raise ValueError("dose must be >= 0")
        unknown = [m for m in self.methods if m not in METHOD_BY_KEY]
        if unknown:
            raise ValueError(
                f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHOD_BY_KEY)}"
            )

    @property
    def world(self) -> SimConfig:
        """The simulated world: ``sim`` at heterogeneity ``dose``."""
        return self.sim.replace(heterogeneity=self.dose)

    @classmethod
    def quick_config(cls, trials: int = 2) -> PaperConfig:
        """Tiny budgets: every method end to end in seconds (tests, smoke runs)."""
        return cls(
            sim=SimConfig(n_candidates=20, max_steps=8, n_items=500, seed=101),
            tsh=TSHConfig(
                hidden=32,
                batch_size=64,
                inner_batch_size=16,
                neutral_fit_steps=10,
                transfer_anchor="none",
            ),
            train=TrainConfig(
                n_users=32,
                total_steps=6,
                learning_starts=64,
                updates_per_step=2,
                replay_capacity=4096,
                replay_candidates=16,
                eval_every=0,
                eval_sessions=40,
                eval_seed=30_000,
                select_every=3,
                val_sessions=16,
                val_seed=20_000,
                confirm_sessions=0,
            ),
            budgets=(100, 250),
            cem=CEMConfig(iterations=100, population=4, sessions=4),
            es=PolicySearchConfig(pairs=2, sessions=4),
            td3=TD3Config(offline_updates=20),
            trials=trials,
            log_every=2,
            quick=True,
        )

    def with_overrides(self, path: Path) -> PaperConfig:
        """Apply a JSON file with optional sections sim, tsh, train, cem, td3, es, formula."""
        data = load_json(path)
        unknown = sorted(set(data) - {"sim", *SECTIONS})
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(unknown)}")
        changes: dict[str, Any] = {}
        if "sim" in data:
            changes["sim"] = self.sim.replace(**data["sim"])
        for name, cls in SECTIONS.items():
            if name in data:
                merged = {**to_dict(getattr(self, name)), **data[name]}
                changes[name] = from_dict(cls, merged)
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sim": to_dict(self.sim),
            "dose": self.dose,
            "budgets": list(self.budgets),
            "tsh": to_dict(self.tsh),
            "train": to_dict(self.train),
            "cem": to_dict(self.cem),
            "td3": to_dict(self.td3),
            "es": to_dict(self.es),
            "formula": to_dict(self.formula),
            "trials": self.trials,
            "methods": list(self.methods),
            "quick": self.quick,
            "torch_threads": self.torch_threads,
        }
