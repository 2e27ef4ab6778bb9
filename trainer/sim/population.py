"""Who the users are: the real KuaiRand population's fixed traits (or none: synthetic users are
drawn per session in :mod:`trainer.sim.users`)."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.sim import kuairand
from trainer.sim.config import SimConfig
from trainer.sim.items import unit

logger = logging.getLogger(__name__)

#: Activity levels (low, mid, high) and their shares of the users.
N_ACTIVITY = 3
P_ACTIVITY = (0.3, 0.4, 0.3)


# ----------------------------------------------------------------- real KuaiRand population
def resolve_data_dir(data_dir: str | None) -> Path | None:
    """The KuaiRand-Pure folder a config asks for, or ``None`` for the synthetic population.

    ``None`` looks at ``$XMTF_KUAIRAND_DIR`` only (library code never guesses a path); ``""``
    means synthetic. A folder lacking ``user_features_pure.csv`` or
    ``video_features_basic_pure.csv`` falls back to synthetic with a warning.
    """
    if data_dir == "":
        return None
    explicit = data_dir is not None
    if data_dir is None:
        data_dir = os.environ.get(kuairand.ENV_DIR) or None
        if data_dir is None:
            return None
    folder = Path(data_dir).expanduser()
    files = (folder / kuairand.USER_FEATURES_FILE, folder / kuairand.VIDEO_FEATURES_FILE)
    found = folder if all(f.is_file() for f in files) else None
    if found is None:
        source = "SimConfig.data_dir" if explicit else f"${kuairand.ENV_DIR}"
        logger.warning(
            "%s=%s lacks %s or %s; using the synthetic population",
            source,
            data_dir,
            kuairand.USER_FEATURES_FILE,
            kuairand.VIDEO_FEATURES_FILE,
        )
    return found


@functools.lru_cache(maxsize=4)
def _load_tables(
    folder: str, stamp: tuple[int, int]
) -> tuple[kuairand.UserFeatures, kuairand.VideoFeatures]:
    """Both feature tables of ``folder`` (cached per modification times ``stamp``)."""
    del stamp  # part of the cache key only
    base = Path(folder)
    users = kuairand.load_user_features(base / kuairand.USER_FEATURES_FILE)
    videos = kuairand.load_video_features(base / kuairand.VIDEO_FEATURES_FILE)
    return users, videos


def load_kuairand_tables(folder: Path) -> tuple[kuairand.UserFeatures, kuairand.VideoFeatures]:
    """The user and video tables of a KuaiRand-Pure folder, read once per process."""
    files = (folder / kuairand.USER_FEATURES_FILE, folder / kuairand.VIDEO_FEATURES_FILE)
    stamp = (files[0].stat().st_mtime_ns, files[1].stat().st_mtime_ns)
    return _load_tables(str(folder.resolve()), stamp)


def _gaussianize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normal scores of ``x``: ranks (ties broken at random) mapped to N(0, 1) quantiles."""
    n = len(x)
    order = np.lexsort((rng.random(n), np.nan_to_num(x, nan=float(np.nanmedian(x)))))
    dist = statistics.NormalDist()
    quantiles = np.array([dist.inv_cdf((i + 0.5) / n) for i in range(n)])
    out = np.empty(n)
    out[order] = quantiles
    return out


def _zscore(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, np.float64), nan=float(np.nanmedian(x)))
    return (x - x.mean()) / max(float(x.std()), 1e-9)


#: Shares of the real users in the train / validation / evaluation folds.
FOLD_SHARES = {"train": (0.0, 0.6), "validation": (0.6, 0.8), "evaluation": (0.8, 1.0)}


def fold_rows(user_id: np.ndarray, fold: str) -> np.ndarray:
    """Rows of the users in ``fold`` (every row for ""), by a stable hash of the user id: the
    folds are disjoint and do not depend on the world seed."""
    if fold == "":
        return np.arange(len(user_id))
    lo, hi = FOLD_SHARES[fold]
    digest = [hashlib.blake2b(str(int(u)).encode(), digest_size=8).digest() for u in user_id]
    frac = np.array([int.from_bytes(d, "big") for d in digest], np.float64) / 2.0**64
    return np.flatnonzero((frac >= lo) & (frac < hi))


@dataclass(frozen=True)
class Population:
    """Fixed traits and visible profile of every real user (arrays over users)."""

    user_id: np.ndarray  # (P,) int64
    latent: np.ndarray  # (P, L) float32 unit norm
    activity: np.ndarray  # (P,) int64 in {0, 1, 2}
    traits: np.ndarray  # (P, 3) float64: interactivity, patience, bait sensitivity ~ N(0, 1)
    profile: np.ndarray  # (P, 6 + profile_latent_dims) float32 state profile features
    pool: np.ndarray | None = None  # rows sessions draw from (SimConfig.user_fold); None: all


def make_population(
    config: SimConfig, rng: np.random.Generator, users: kuairand.UserFeatures, proj: np.ndarray
) -> Population:
    """Real users' traits from their profiles (SimConfig.seed fixes the hidden parts).

    * activity level (30/40/30 % low/mid/high, as the synthetic users): the rank by
      ``user_active_degree``, ties broken by follows + friends;
    * interactivity <- social score (friends, fans, video author, live streamer);
    * patience <- tenure (``register_days``);
    * bait sensitivity <- a projection of the anonymous ``onehot_feat*`` categories;
    * latent preferences <- an embedding of the ``onehot_feat*`` categories (users sharing
      categories have similar tastes).

    Each hidden trait is ``r * visible + sqrt(1 - r^2) * N(0, 1)`` where the visible score
    (normal scores over the population) is what the state's profile part shows, and
    ``r = 0.8 / sqrt(0.64 + profile_noise^2)`` is the synthetic population's correlation
    between a trait and its visible feature (0.8 with the defaults).
    """
    n, dim = len(users), config.latent_dim
    corr = 0.8 / math.sqrt(0.64 + config.profile_noise**2)
    # activity: rank by degree, then by how connected the user is
    degree = np.where(users.active_degree >= 0, users.active_degree, 5).astype(np.float64)
    connected = np.log1p(np.nan_to_num(users.follow_user_num)) + np.log1p(
        np.nan_to_num(users.friend_user_num)
    )
    activity_rank = _gaussianize(degree + 0.01 * _gaussianize(connected, rng), rng)
    cuts = np.quantile(activity_rank, np.cumsum(P_ACTIVITY)[:-1])
    activity = np.searchsorted(cuts, activity_rank, side="right").astype(np.int64)
    # social and tenure scores
    social = (
        _zscore(np.log1p(np.nan_to_num(users.friend_user_num)))
        + _zscore(np.log1p(np.nan_to_num(users.fans_user_num)))
        + 0.5 * np.nan_to_num(users.is_video_author)
        + 0.5 * np.nan_to_num(users.is_live_streamer)
    )
    tenure = np.log1p(np.nan_to_num(users.register_days))
    # the onehot categories: a random vector per (feature, value), summed per user
    embed = np.zeros((n, dim + 1))
    onehot = users.onehot
    for j in range(onehot.shape[1]):
        col = onehot[:, j]
        known = ~np.isnan(col)
        _, codes = np.unique(col[known], return_inverse=True)
        table = rng.standard_normal((int(codes.max(initial=-1)) + 1, dim + 1))
        embed[known] += table[codes.ravel()]
    embed = (embed - embed.mean(axis=0)) / np.maximum(embed.std(axis=0), 1e-9)
    visible = np.stack(
        [_gaussianize(social, rng), _gaussianize(tenure, rng), _gaussianize(embed[:, -1], rng)],
        axis=1,
    )
    noise_scale = math.sqrt(1.0 - corr**2)
    traits = corr * visible + noise_scale * rng.standard_normal((n, 3))
    pref = embed[:, :dim]
    latent = unit(corr * pref + noise_scale * rng.standard_normal((n, dim)))
    profile_latent = pref @ proj.T / math.sqrt(dim)
    one_hot = np.eye(N_ACTIVITY)[activity]
    profile = np.concatenate([one_hot, visible, profile_latent], axis=1)
    return Population(
        user_id=users.user_id.copy(),
        latent=latent.astype(np.float32),
        activity=activity,
        traits=traits,
        profile=profile.astype(np.float32),
    )
