"""The offline environment: a KuaiRand-like user simulator (numpy only; no torch, and nothing
from the study or the stream consumer).

``config`` (SimConfig) -> ``items`` and ``population`` (the world, fixed by its seed) ->
``users`` (per-slot traits and session state) -> ``env`` (UserSimulator: requests, feedback,
satisfaction and exit) -> ``evaluate`` (sessions to their end under a ranking policy).
``kuairand`` and ``kuairand_logs`` read the real dataset's files.
"""

from trainer.sim.config import SimConfig
from trainer.sim.env import TASKS, Observation, StepResult, UserSimulator
from trainer.sim.evaluate import EvalResult, evaluate
from trainer.sim.items import sample_durations

__all__ = [
    "TASKS",
    "EvalResult",
    "Observation",
    "SimConfig",
    "StepResult",
    "UserSimulator",
    "evaluate",
    "sample_durations",
]
