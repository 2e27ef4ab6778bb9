"""Per-slot users: their hidden traits, visible profile and session state (arrays over slots)."""

from __future__ import annotations

import numpy as np

from trainer.sim.config import SimConfig
from trainer.sim.items import unit
from trainer.sim.population import N_ACTIVITY, P_ACTIVITY, Population

#: Names of the state features other than the ``profile_latent_dims`` latent projections.
PROFILE_FEATURES = (
    "activity_low",
    "activity_mid",
    "activity_high",
    "profile_social",
    "profile_tenure",
    "profile_bait",
)

#: Initial values of the recent-behaviour averages: click, long view, like, follow+comment+share,
#: regret, watch minutes per item, repeat rate (roughly a reasonable ranker's rates).
EMA_PRIOR = np.array([0.38, 0.26, 0.015, 0.005, 0.12, 0.5, 0.2], np.float32)


#: Hidden tastes of the world family's heterogeneity (see ``SimConfig.heterogeneity``).
N_TASTES = 2


def tastes(latent: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """(m, 2) hidden tastes ``latent . t_j`` (each about N(0, 1), uncorrelated; zero where
    ``proj`` has fewer rows). ``t_0 = proj[0]``; ``t_1`` is ``proj[1]`` made orthogonal to it
    (same norm), so the state's ``profile_latent0/1`` (``0.8 latent . proj[j]`` plus noise for
    synthetic users) show both tastes, noisily."""
    out = np.zeros((len(latent), N_TASTES), np.float32)
    k = min(N_TASTES, proj.shape[0])
    directions = proj[:k].astype(np.float64).copy()
    if k == 2:
        norm = np.linalg.norm(directions[1])
        first = directions[0] / np.linalg.norm(directions[0])
        second = directions[1] - (directions[1] @ first) * first
        directions[1] = second * norm / max(float(np.linalg.norm(second)), 1e-9)
    out[:, :k] = latent @ directions.T
    return out


class Users:
    """Per-slot user traits and session state, all arrays with a leading user axis."""

    def __init__(
        self, n: int, config: SimConfig, n_categories: int, population: Population | None
    ) -> None:
        dim, p = config.latent_dim, config.profile_latent_dims
        self.population = population
        self.user_id = np.full(n, -1, np.int64)
        self.latent = np.zeros((n, dim), np.float32)
        self.activity = np.zeros(n, np.int64)
        self.interact = np.zeros(n, np.float32)
        self.threshold = np.zeros(n, np.float32)
        self.bait_sens = np.zeros(n, np.float32)
        self.profile = np.zeros((n, len(PROFILE_FEATURES) + p), np.float32)
        self.taste = np.zeros((n, N_TASTES), np.float32)
        self.sat = np.zeros(n, np.float64)
        self.step = np.zeros(n, np.int64)
        self.tod = np.zeros(n, np.float64)
        self.session_watch = np.zeros(n, np.float64)
        self.ema = np.zeros((n, 7), np.float32)
        self.last = np.zeros((n, 3), np.float32)
        self.exposure = np.zeros((n, n_categories), np.float32)
        self.active = np.ones(n, bool)

    def init_rows(
        self, rows: np.ndarray, rng: np.random.Generator, config: SimConfig, proj: np.ndarray
    ) -> None:
        """Start a session in ``rows``: a fresh random user, or a random real user."""
        m = len(rows)
        if m == 0:
            return
        pop = self.population
        if pop is None:
            latent = unit(rng.standard_normal((m, config.latent_dim))).astype(np.float32)
            activity = rng.choice(N_ACTIVITY, size=m, p=P_ACTIVITY)
            traits = rng.standard_normal((m, 3))  # interactivity, patience, bait sensitivity
            noise = rng.standard_normal((m, 3 + proj.shape[0])) * config.profile_noise
            one_hot = np.eye(N_ACTIVITY, dtype=np.float32)[activity]
            visible = np.concatenate([0.8 * traits, latent @ proj.T * 0.8], axis=1) + noise
            profile = np.concatenate([one_hot, visible], axis=1)
        else:
            if pop.pool is None:
                who = rng.integers(0, len(pop.user_id), size=m)
            else:
                who = pop.pool[rng.integers(0, len(pop.pool), size=m)]
            latent, activity, traits = pop.latent[who], pop.activity[who], pop.traits[who]
            profile = pop.profile[who]
            self.user_id[rows] = pop.user_id[who]
        self.latent[rows] = latent
        self.taste[rows] = tastes(latent, proj)
        self.activity[rows] = activity
        self.interact[rows] = config.user_interact_std * traits[:, 0]
        self.threshold[rows] = config.exit_threshold - config.patience_std * traits[:, 1]
        self.bait_sens[rows] = 1.0 + config.bait_sensitivity_std * traits[:, 2]
        self.profile[rows] = profile
        sat0 = config.sat_init + config.sat_init_activity * (activity - 1)
        self.sat[rows] = sat0 + config.sat_init_std * rng.standard_normal(m)
        self.tod[rows] = rng.random(m) * 24.0
        self.step[rows] = 0
        self.session_watch[rows] = 0.0
        self.ema[rows] = EMA_PRIOR
        self.last[rows] = EMA_PRIOR[[0, 1, 5]]
        self.exposure[rows] = 0.0
        self.active[rows] = True
