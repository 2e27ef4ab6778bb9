"""The cross-entropy method over K non-personalised log-weights (CEM-1/2 of Table 3): a
diagonal Gaussian refitted to the elite of each population."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from trainer.loop import ScoreFn
from trainer.sim import UserSimulator, evaluate


@dataclass(frozen=True)
class CEMConfig:
    iterations: int = 12
    population: int = 16
    elite_frac: float = 0.25
    sessions: int = 300  # simulated sessions per candidate (the same users for a whole population)
    init_std: float = 1.0
    min_std: float = 0.05

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.population < 2 or self.sessions < 1:
            raise ValueError("CEM needs iterations >= 1, population >= 2, sessions >= 1")
        if not 0.0 < self.elite_frac <= 1.0:
            raise ValueError("elite_frac must be in (0, 1]")


@dataclass
class CEMResult:
    mean: np.ndarray  # (dim,) the final distribution's mean: the solution
    std: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)


def cem_optimize(
    objective: Callable[[np.ndarray, int], np.ndarray],
    dim: int,
    config: CEMConfig,
    rng: np.random.Generator,
    low: float = -np.inf,
    high: float = np.inf,
    init_mean: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "cem",
    init_std: np.ndarray | None = None,
    should_stop: Callable[[int, np.ndarray], bool] | None = None,
) -> CEMResult:
    """Maximise ``objective(candidates (P, dim), iteration) -> values (P,)`` with the
    cross-entropy method: sample a diagonal Gaussian (clipped to [low, high]), keep the elite,
    refit mean and std to it (std floored at ``min_std``). ``init_std`` (per dimension)
    overrides ``config.init_std``, e.g. for a search warm-started from a known solution.
    ``should_stop(iterations_done, mean)`` ends the search early (a budget spent)."""
    mean = np.zeros(dim) if init_mean is None else np.asarray(init_mean, np.float64).copy()
    std = np.full(dim, config.init_std) if init_std is None else np.asarray(init_std, np.float64)
    n_elite = max(1, round(config.elite_frac * config.population))
    history: list[dict[str, float]] = []
    bar = tqdm(range(config.iterations), desc=desc, disable=not progress, leave=False)
    for it in bar:
        pop = np.clip(mean + std * rng.standard_normal((config.population, dim)), low, high)
        values = np.asarray(objective(pop, it), np.float64)
        elite = pop[np.argsort(-values)[:n_elite]]
        mean = elite.mean(axis=0)
        std = np.maximum(elite.std(axis=0), config.min_std)
        row = {
            "iteration": float(it + 1),
            "population_mean": float(values.mean()),
            "elite_mean": float(np.sort(values)[-n_elite:].mean()),
            "best": float(values.max()),
        }
        history.append(row)
        bar.set_postfix(best=f"{row['best']:.0f}")
        if should_stop is not None and should_stop(it + 1, mean):
            break
    return CEMResult(mean=mean, std=std, history=history)


class SearchedWeights:
    """A CEM search's parameters as a learner :class:`trainer.selection.Selector` can validate,
    keep and put back (a guarded CEM is selected as the learners are); ``params`` None stands
    for the model served before the search, ``served``."""

    def __init__(
        self,
        make_fn: Callable[[np.ndarray], ScoreFn],
        params: np.ndarray | None,
        served: ScoreFn | None = None,
    ) -> None:
        self.make_fn, self.served = make_fn, served
        self.params = None if params is None else np.array(params, np.float64)

    def score_fn(self) -> ScoreFn:
        if self.params is None:
            assert self.served is not None
            return self.served
        return self.make_fn(self.params)

    def snapshot(self) -> dict[str, np.ndarray | None]:
        return {"params": None if self.params is None else self.params.copy()}

    def restore(self, snapshot: dict[str, np.ndarray | None]) -> None:
        params = snapshot["params"]
        self.params = None if params is None else np.array(params, np.float64)


@dataclass
class CandidateSessions:
    """CEM's objective: each candidate's mean session return on the users of its iteration
    (``users(it)``, the same for the whole population: common random numbers); ``cost`` is the
    requests of the last call. ``wrap(i, fn)`` may wrap candidate ``i``'s score_fn."""

    sim: UserSimulator
    make_fn: Callable[[np.ndarray], ScoreFn]
    sessions: int
    users: Callable[[int], int]
    wrap: Callable[[int, ScoreFn], ScoreFn] | None = None
    cost: int = 0

    def __call__(self, pop: np.ndarray, it: int) -> np.ndarray:
        before = self.sim.requests_served
        values = []
        for i, u in enumerate(pop):
            fn = self.make_fn(u)
            fn = self.wrap(i, fn) if self.wrap is not None else fn
            values.append(evaluate(self.sim, fn, self.sessions, self.users(it)).returns.mean())
        self.cost = self.sim.requests_served - before
        return np.array(values)
