"""KuaiRand-like user simulator: the offline environment of xMTF (paper section 6.1, SPEC §7).

NumPy only (no torch): it also drives a torch-free demo against the HTTP scorer.

World
-----
* **Items** (a fixed pool of ``n_items``, drawn once from ``SimConfig.seed``): a latent vector
  clustered around the centre of the item's category (Zipf-like category popularity), a
  duration from a split-lognormal that reproduces KuaiRand's real duration quantiles (10th
  percentile 14.6 s, median 81.2 s, 90th percentile 237.9 s), a *bait* score (catchy cover:
  more clicks, fewer long views and interactions; positively correlated with duration), a
  *quality* score (holds attention: more long views, more of the video watched) and a *social*
  score (invites likes, follows, comments and shares).
* **Users** (a fresh random user per session): a latent preference vector, an activity level
  (click propensity, initial satisfaction), an interactivity trait, a patience trait (exit
  threshold) and a bait sensitivity. The state shows noisy versions of these traits as profile
  features, never the traits or the satisfaction themselves.

Populations
-----------
``SimConfig.data_dir`` (or, when it is ``None``, ``$XMTF_KUAIRAND_DIR``) may name a
KuaiRand-Pure folder (``user_features_pure.csv``, ``video_features_basic_pure.csv``, read by
:mod:`trainer.kuairand`); without one the synthetic population above is used. With one:

* the items are the 7,583 real videos, with their real durations (unknown ones drawn from the
  split-lognormal) and their tags as categories (the first tag sets the fatigue category; the
  latent vector lies around the mean centre of all its tags); ads are baitier and each upload
  type shifts quality; ``n_items`` and ``n_categories`` come from the table;
* each session draws a real user (uniformly). The user's traits are fixed per user and derived
  from the profile: activity level from ``user_active_degree`` (then follows and friends) with
  the same 30/40/30 % split, interactivity from the social counts (friends, fans, author and
  live-streamer flags), patience from ``register_days``, bait sensitivity and latent
  preferences from an embedding of the anonymous ``onehot_feat*`` categories. Each hidden
  trait correlates 0.8 with the visible profile score that the state shows in the same
  columns as the synthetic profile (``activity_*``, ``profile_social``, ``profile_tenure``,
  ``profile_bait``, ``profile_latent*``), so ``state_dim`` does not change.

Every feedback mechanism and parameter is shared, so both populations give feedback rates
close to the paper's Table 6 under a reasonable ranker.

Per request
-----------
``n_candidates`` distinct items are drawn from the pool. The true feedback probabilities come
from the user-item affinity (scaled dot product of the latent vectors), the item scores, the
user's traits, the time of day and category fatigue, plus per-task base logits. Feedbacks are
correlated as in KuaiRand: ``click`` first, then ``long_view | click``, then like / follow /
comment / share ``| click`` with lower odds without a long view; nothing but a click happens
without a click. The MTL predictions are calibrated noisy marginals,
``sigmoid(logit(p) + N(0, prediction_noise))``, in the order of :data:`TASKS`.

The user sees the ``top_n`` items the policy picks. Watch time is 0 without a click; with a
long view it is at least ``min(duration, 18 s)`` plus a quality- and affinity-driven share of
the rest; without one it is strictly less than ``min(duration, 18 s)``, so ``long_view`` means
exactly what it means in KuaiRand. The step reward is the summed watch time of the shown items.

Satisfaction and exit (the long-term effect)
--------------------------------------------
Each user carries a hidden satisfaction ``sat`` (initial value depends on activity) updated
after every request as ``sat <- decay * sat + (1 - decay) * Q``, where the step quality ``Q``
averages over the shown items: ``+`` a long view, ``+`` each interaction (like less than follow,
comment and share), ``-`` a click without a long view ("clickbait regret"), ``-`` the item's
category having been shown recently (fatigue). The user leaves when ``sat`` falls below their
threshold, with a small random exit hazard, or after ``max_steps`` requests.

Why greedy watch time is not optimal: long videos give the most watch time per request, but
long videos tend to be baity, so showing them brings clicks without long views and few
interactions, which drains satisfaction and ends the session early. Interaction-rich,
high-quality items give less watch time now but keep the user coming back, so they win on
total watch time per session. The state exposes exponential averages of the recent click,
long-view, interaction and regret rates, the step index and the session watch time, from
which a policy can infer how close the user is to leaving and trade immediate watch time
against retention accordingly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.tasks import DEFAULT_TASK_NAMES, TaskSpec, calibrate_tasks, make_tasks
from trainer import kuairand

logger = logging.getLogger(__name__)

#: The simulator's task order: every ``(..., K)`` array uses it.
TASKS: tuple[str, ...] = DEFAULT_TASK_NAMES
_K = len(TASKS)
#: The interaction tasks, sampled conditionally on click (and long view).
_INTERACT = ("like", "follow", "comment", "share")
_N_ACTIVITY = 3
_P_ACTIVITY = (0.3, 0.4, 0.3)
_EPS = 1e-6

#: Names of the state features other than the ``profile_latent_dims`` latent projections.
_PROFILE_FEATURES = (
    "activity_low",
    "activity_mid",
    "activity_high",
    "profile_social",
    "profile_tenure",
    "profile_bait",
)
_CONTEXT_FEATURES = ("tod_sin", "tod_cos", "step_frac")
_RECENT_FEATURES = (
    "ema_click",
    "ema_long_view",
    "ema_like",
    "ema_follow_comment_share",
    "ema_regret",
    "ema_watch_min",
    "ema_repeat",
    "last_click",
    "last_long_view",
    "last_watch_min",
    "session_watch_log",
)


@dataclass(frozen=True)
class SimConfig:
    """All parameters of a simulated world; a JSON file of overrides makes one world."""

    n_candidates: int = 50
    top_n: int = 6
    prediction_noise: float = 0.35
    max_steps: int = 40
    n_items: int = 5000
    latent_dim: int = 8
    seed: int = 0
    # items
    n_categories: int = 20
    category_zipf: float = 0.8
    category_strength: float = 1.2
    duration_median_s: float = 81.2
    duration_sigma_low: float = 1.339
    duration_sigma_high: float = 0.839
    duration_min_s: float = 2.0
    duration_max_s: float = 900.0
    bait_duration_corr: float = 0.6
    long_view_s: float = 18.0
    # users
    profile_latent_dims: int = 4
    profile_noise: float = 0.6
    user_click_bias: float = 0.25
    user_interact_std: float = 0.6
    bait_sensitivity_std: float = 0.3
    # true feedback logits
    base_click: float = -1.95
    base_long_view: float = 0.78
    base_like: float = -3.75
    base_follow: float = -6.23
    base_comment: float = -5.63
    base_share: float = -6.77
    click_affinity: float = 0.8
    long_view_affinity: float = 0.6
    interact_affinity: float = 0.5
    bait_click: float = 0.7
    bait_long_view: float = 0.8
    bait_interact: float = 0.6
    quality_long_view: float = 0.5
    item_social_std: float = 0.7
    interact_no_long_view_drop: float = 1.0
    tod_click: float = 0.15
    fatigue_click: float = 0.15
    # watch time: share of (duration - min(duration, 18 s)) watched after a long view
    watch_base: float = -0.5
    watch_affinity: float = 0.5
    watch_quality: float = 0.5
    watch_noise: float = 0.8
    # satisfaction and exit
    sat_init: float = 0.4
    sat_init_activity: float = 0.1
    sat_init_std: float = 0.1
    sat_decay: float = 0.9
    exit_threshold: float = 0.05
    patience_std: float = 0.08
    base_exit_prob: float = 0.01
    q_base: float = 0.0
    q_long_view: float = 1.0
    q_like: float = 5.0
    q_follow_comment_share: float = 10.0
    q_regret: float = 2.0
    q_fatigue: float = 0.1
    fatigue_decay: float = 0.7
    # state
    ema_decay: float = 0.7
    seconds_per_item_overhead: float = 2.0
    # population: a KuaiRand-Pure folder (user_features_pure.csv, video_features_basic_pure.csv).
    # None: $XMTF_KUAIRAND_DIR if set, else synthetic; "": synthetic; a folder without the two
    # files: synthetic, with a warning. See ``resolve_data_dir``.
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, os.PathLike):
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(
                f"SimConfig.data_dir must be a path string or None, got {self.data_dir!r}"
            )
        positive = ("n_candidates", "top_n", "max_steps", "n_items", "latent_dim", "n_categories")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SimConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.top_n > self.n_candidates:
            raise ValueError(f"top_n ({self.top_n}) must be <= n_candidates ({self.n_candidates})")
        if self.n_candidates > self.n_items:
            raise ValueError(f"n_candidates ({self.n_candidates}) must be <= n_items")
        if self.prediction_noise < 0:
            raise ValueError("prediction_noise must be >= 0")
        for name in ("sat_decay", "ema_decay", "fatigue_decay", "bait_duration_corr"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SimConfig.{name} must be in [0, 1]")
        if not 0.0 <= self.base_exit_prob < 1.0:
            raise ValueError("base_exit_prob must be in [0, 1)")
        if not 0 <= self.profile_latent_dims <= self.latent_dim:
            raise ValueError("profile_latent_dims must be in [0, latent_dim]")

    @classmethod
    def from_file(cls, path: str | Path) -> SimConfig:
        """Load a JSON object of field overrides; an unknown key raises ``ValueError``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a simulator config must be a JSON object")
        return cls().replace(**data)

    def replace(self, **kw: Any) -> SimConfig:
        """A copy with some fields changed; an unknown field raises ``ValueError``."""
        known = {f.name: f for f in dataclasses.fields(self)}
        for key, value in kw.items():
            if key not in known:
                raise ValueError(f"unknown SimConfig key {key!r}")
            kw[key] = _coerce(key, value, known[key].type)
        return dataclasses.replace(self, **kw)


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    """Check and convert a JSON value to the field's scalar type."""
    if key == "data_dir":
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ValueError(f"SimConfig.data_dir must be a path string or null, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"SimConfig.{key} must be a number, got {value!r}")
    if type_name in ("int", int):
        if float(value) != int(value):
            raise ValueError(f"SimConfig.{key} must be an integer, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True)
class Observation:
    """What the policy sees at one request of every user slot."""

    state: np.ndarray  # (U, D) float32
    predictions: np.ndarray  # (U, C, K) float32 in (0, 1), order = TASKS
    item_ids: np.ndarray  # (U, C) int64
    active: np.ndarray  # (U,) bool


@dataclass(frozen=True)
class StepResult:
    """The users' response to one request, and the next observation."""

    reward: np.ndarray  # (U,) float32 watch time (s) of the shown items
    watch_time: np.ndarray  # (U, top_n) float32
    signals: np.ndarray  # (U, top_n, K) int8, order = TASKS
    done: np.ndarray  # (U,) bool
    observation: Observation
    finished_returns: np.ndarray  # (F,) float32
    finished_lengths: np.ndarray  # (F,) int32
    #: (U, top_n) float32 durations (s) of the shown items (0 for inactive users).
    durations: np.ndarray | None = None
    #: (U, top_n) int64 ids of the shown items.
    shown_ids: np.ndarray | None = None


@dataclass(frozen=True)
class EvalResult:
    """Per-session totals of an evaluation run."""

    returns: np.ndarray  # (S,) total watch time per session
    lengths: np.ndarray  # (S,) requests per session

    def summary(self) -> dict[str, float]:
        """Mean and standard deviation of returns and lengths, and the session count."""
        return {
            "return_mean": float(np.mean(self.returns)),
            "return_std": float(np.std(self.returns)),
            "length_mean": float(np.mean(self.lengths)),
            "length_std": float(np.std(self.lengths)),
            "n_sessions": float(len(self.returns)),
        }


@dataclass(frozen=True)
class _Items:
    """The fixed item pool."""

    latent: np.ndarray  # (I, L) float32, unit norm
    category: np.ndarray  # (I,) int64
    duration: np.ndarray  # (I,) float32 seconds
    bait: np.ndarray  # (I,) float32
    quality: np.ndarray  # (I,) float32
    social: np.ndarray  # (I,) float32


def sample_durations(rng: np.random.Generator, n: int, config: SimConfig) -> np.ndarray:
    """Split-lognormal durations (s): the log-scale spread differs below and above the median.

    With the defaults this reproduces KuaiRand's 10th percentile, median and 90th percentile.
    """
    z = rng.standard_normal(n)
    sigma = np.where(z < 0, config.duration_sigma_low, config.duration_sigma_high)
    d = config.duration_median_s * np.exp(z * sigma)
    return np.clip(d, config.duration_min_s, config.duration_max_s).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _make_items(config: SimConfig, rng: np.random.Generator) -> _Items:
    n, dim = config.n_items, config.latent_dim
    popularity = 1.0 / np.arange(1, config.n_categories + 1) ** config.category_zipf
    category = rng.choice(config.n_categories, size=n, p=popularity / popularity.sum())
    centres = _unit(rng.standard_normal((config.n_categories, dim)))
    latent = _unit(centres[category] * config.category_strength + rng.standard_normal((n, dim)))
    duration = sample_durations(rng, n, config)
    log_d = np.log(duration)
    z_dur = (log_d - log_d.mean()) / max(float(log_d.std()), 1e-9)
    c = config.bait_duration_corr
    bait = c * z_dur + math.sqrt(1.0 - c * c) * rng.standard_normal(n)
    return _Items(
        latent=latent.astype(np.float32),
        category=category.astype(np.int64),
        duration=duration,
        bait=bait.astype(np.float32),
        quality=rng.standard_normal(n).astype(np.float32),
        social=rng.standard_normal(n).astype(np.float32),
    )


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
    if not explicit:
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


def _make_real_items(
    config: SimConfig, rng: np.random.Generator, videos: kuairand.VideoFeatures
) -> _Items:
    """The KuaiRand videos: real durations and tags, simulated latent scores.

    The category (for fatigue) is the first tag, ordered by frequency (videos without a tag
    form one more category); the latent vector lies around the mean of the centres of all the
    video's tags. Unknown durations are drawn from :func:`sample_durations`. Ads are baitier,
    and each upload type shifts quality a little.
    """
    n, dim = len(videos), config.latent_dim
    category = _rank_codes(videos.primary_tag)
    tag_matrix, _ = videos.tag_matrix()
    centres = _unit(rng.standard_normal((tag_matrix.shape[1], dim)))
    mix = _unit(tag_matrix @ centres) * (tag_matrix.sum(axis=1, keepdims=True) > 0)
    latent = _unit(mix * config.category_strength + rng.standard_normal((n, dim)))
    duration = videos.duration_s.astype(np.float64).copy()
    unknown = np.isnan(duration)
    duration[unknown] = sample_durations(rng, int(unknown.sum()), config)
    duration = np.clip(duration, config.duration_min_s, config.duration_max_s).astype(np.float32)
    log_d = np.log(duration)
    z_dur = (log_d - log_d.mean()) / max(float(log_d.std()), 1e-9)
    c = config.bait_duration_corr
    bait = c * z_dur + math.sqrt(1.0 - c * c) * rng.standard_normal(n)
    names = videos.video_type_names
    if "AD" in names:
        bait = bait + 1.0 * (videos.video_type == names.index("AD"))
    upload_effect = 0.5 * rng.standard_normal(len(videos.upload_type_names) + 1)
    quality = (upload_effect[videos.upload_type] + rng.standard_normal(n)) / math.sqrt(1.25)
    return _Items(
        latent=latent.astype(np.float32),
        category=category.astype(np.int64),
        duration=duration,
        bait=bait.astype(np.float32),
        quality=quality.astype(np.float32),
        social=rng.standard_normal(n).astype(np.float32),
    )


def _rank_codes(values: np.ndarray) -> np.ndarray:
    """Codes 0, 1, ... of ``values`` by descending frequency (ties: smaller value first)."""
    distinct, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    order = np.lexsort((distinct, -counts))
    code = np.empty(len(distinct), np.int64)
    code[order] = np.arange(len(distinct))
    return code[inverse.ravel()]


@dataclass(frozen=True)
class _Population:
    """Fixed traits and visible profile of every real user (arrays over users)."""

    user_id: np.ndarray  # (P,) int64
    latent: np.ndarray  # (P, L) float32 unit norm
    activity: np.ndarray  # (P,) int64 in {0, 1, 2}
    traits: np.ndarray  # (P, 3) float64: interactivity, patience, bait sensitivity ~ N(0, 1)
    profile: np.ndarray  # (P, 6 + profile_latent_dims) float32 state profile features


def _make_population(
    config: SimConfig, rng: np.random.Generator, users: kuairand.UserFeatures, proj: np.ndarray
) -> _Population:
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
    cuts = np.quantile(activity_rank, np.cumsum(_P_ACTIVITY)[:-1])
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
    latent = _unit(corr * pref + noise_scale * rng.standard_normal((n, dim)))
    profile_latent = pref @ proj.T / math.sqrt(dim)
    one_hot = np.eye(_N_ACTIVITY)[activity]
    profile = np.concatenate([one_hot, visible, profile_latent], axis=1)
    return _Population(
        user_id=users.user_id.copy(),
        latent=latent.astype(np.float32),
        activity=activity,
        traits=traits,
        profile=profile.astype(np.float32),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def top_n_indices(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest scores per row, by descending score, ties by lower index.

    ``scores`` is ``(U, C)``; NaN counts as the lowest score. Returns ``(U, n)`` int64.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (U, C), got shape {scores.shape}")
    if not 0 < n <= scores.shape[1]:
        raise ValueError(f"n={n} must be in [1, {scores.shape[1]}]")
    keys = -scores.astype(np.float64)
    keys[np.isnan(keys)] = np.inf
    return np.argsort(keys, axis=1, kind="stable")[:, :n].astype(np.int64)


class _Users:
    """Per-slot user traits and session state, all arrays with a leading user axis."""

    def __init__(
        self, n: int, config: SimConfig, n_categories: int, population: _Population | None
    ) -> None:
        dim, p = config.latent_dim, config.profile_latent_dims
        self.population = population
        self.user_id = np.full(n, -1, np.int64)
        self.latent = np.zeros((n, dim), np.float32)
        self.activity = np.zeros(n, np.int64)
        self.interact = np.zeros(n, np.float32)
        self.threshold = np.zeros(n, np.float32)
        self.bait_sens = np.zeros(n, np.float32)
        self.profile = np.zeros((n, len(_PROFILE_FEATURES) + p), np.float32)
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
            latent = _unit(rng.standard_normal((m, config.latent_dim))).astype(np.float32)
            activity = rng.choice(_N_ACTIVITY, size=m, p=_P_ACTIVITY)
            traits = rng.standard_normal((m, 3))  # interactivity, patience, bait sensitivity
            noise = rng.standard_normal((m, 3 + proj.shape[0])) * config.profile_noise
            one_hot = np.eye(_N_ACTIVITY, dtype=np.float32)[activity]
            visible = np.concatenate([0.8 * traits, latent @ proj.T * 0.8], axis=1) + noise
            profile = np.concatenate([one_hot, visible], axis=1)
        else:
            who = rng.integers(0, len(pop.user_id), size=m)
            latent, activity, traits = pop.latent[who], pop.activity[who], pop.traits[who]
            profile = pop.profile[who]
            self.user_id[rows] = pop.user_id[who]
        self.latent[rows] = latent
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
        self.ema[rows] = _EMA_PRIOR
        self.last[rows] = _EMA_PRIOR[[0, 1, 5]]
        self.exposure[rows] = 0.0
        self.active[rows] = True


#: Initial values of the recent-behaviour averages: click, long view, like, follow+comment+share,
#: regret, watch minutes per item, repeat rate (roughly a reasonable ranker's rates).
_EMA_PRIOR = np.array([0.38, 0.26, 0.015, 0.005, 0.12, 0.5, 0.2], np.float32)


@dataclass
class _Candidates:
    """Per-candidate quantities of the current request, kept for the step."""

    ids: np.ndarray  # (U, C)
    p_click: np.ndarray  # (U, C)
    p_lv: np.ndarray  # (U, C) long view given click
    int_logit: np.ndarray  # (U, C, 4) interaction logits given click and long view
    watch_logit: np.ndarray  # (U, C) logit of the share watched after a long view
    marginals: np.ndarray  # (U, C, K) true marginal probabilities


class UserSimulator:
    """Vectorised KuaiRand-like environment; see the module docstring for the mechanism."""

    tasks: tuple[str, ...] = TASKS

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        world = np.random.default_rng(np.random.SeedSequence([self.config.seed, 0]))
        self.data_dir = resolve_data_dir(self.config.data_dir)
        tables = load_kuairand_tables(self.data_dir) if self.data_dir is not None else None
        if tables is None:
            self.items = _make_items(self.config, world)
            self.item_video_ids = np.arange(self.config.n_items, dtype=np.int64)
        else:
            self.items = _make_real_items(self.config, world, tables[1])
            self.item_video_ids = tables[1].video_id.copy()
        self._proj = _unit(
            world.standard_normal((self.config.profile_latent_dims, self.config.latent_dim))
        ).astype(np.float32) * math.sqrt(self.config.latent_dim)
        self._population = (
            _make_population(self.config, world, tables[0], self._proj)
            if tables is not None
            else None
        )
        self.n_items = len(self.items.duration)
        self.n_categories = int(self.items.category.max()) + 1
        if self.config.n_candidates > self.n_items:
            raise ValueError(f"n_candidates must be <= the {self.n_items} items")
        self._int_base = np.array(
            [getattr(self.config, f"base_{t}") for t in _INTERACT], np.float32
        )
        self._rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, 1]))
        self._users: _Users | None = None
        self._cand: _Candidates | None = None
        self._obs: Observation | None = None
        self._auto_reset = True

    # ----------------------------------------------------------------------------- properties
    @property
    def state_dim(self) -> int:
        """Dimension D of the user state (a fixed function of the config)."""
        return len(self.state_feature_names)

    @property
    def state_feature_names(self) -> tuple[str, ...]:
        """Names of the D state features, in order."""
        latent = tuple(f"profile_latent{i}" for i in range(self.config.profile_latent_dims))
        return _PROFILE_FEATURES + latent + _CONTEXT_FEATURES + _RECENT_FEATURES

    @property
    def item_durations(self) -> np.ndarray:
        """(n_items,) float32 durations in seconds (index with ``Observation.item_ids``)."""
        return self.items.duration

    @property
    def item_categories(self) -> np.ndarray:
        """(n_items,) int64 category of each item."""
        return self.items.category

    @property
    def population(self) -> str:
        """``"kuairand"`` (real user profiles and videos) or ``"synthetic"``."""
        return "synthetic" if self._population is None else "kuairand"

    def user_ids(self) -> np.ndarray:
        """(U,) int64 real KuaiRand ``user_id`` of each slot's user (-1 when synthetic)."""
        return self._require_users().user_id.copy()

    def true_probabilities(self) -> np.ndarray:
        """(U, C, K) true marginal feedback probabilities of the current candidates (oracle)."""
        return self._require_cand().marginals.astype(np.float32)

    def satisfaction(self) -> np.ndarray:
        """(U,) hidden satisfaction of each slot (for analysis; not part of the state)."""
        return self._require_users().sat.copy()

    # ---------------------------------------------------------------------------- public API
    def task_specs(self, n_users: int = 512, seed: int = 777) -> tuple[TaskSpec, ...]:
        """The tasks with input normalisation fitted to this world's MTL predictions (what a
        deployment reads off its logs), from one request of ``n_users`` users. Resets the
        simulator: call it before collecting."""
        obs = self.reset(n_users, seed=seed, auto_reset=False)
        sample = obs.predictions.reshape(-1, obs.predictions.shape[-1])
        return calibrate_tasks(make_tasks(self.tasks), sample)

    def reset(self, n_users: int, seed: int | None = None, auto_reset: bool = True) -> Observation:
        """Start ``n_users`` fresh sessions.

        ``seed`` reseeds the interaction stream (``None`` continues the current one).
        ``auto_reset=True``: an ended session is replaced at once by a new random user, so all
        slots stay active. ``auto_reset=False``: ended users become inactive for good.
        """
        if n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {n_users}")
        if seed is not None:
            self._rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, 2, seed]))
        self._auto_reset = auto_reset
        self._users = _Users(n_users, self.config, self.n_categories, self._population)
        self._users.init_rows(np.arange(n_users), self._rng, self.config, self._proj)
        self._obs = self._observe()
        return self._obs

    def step_scores(self, scores: np.ndarray) -> StepResult:
        """Show the ``top_n`` candidates by score (ties: lower index first) and step."""
        return self.step(top_n_indices(scores, self.config.top_n))

    def step(self, shown: np.ndarray) -> StepResult:
        """Show the candidates ``shown`` ``(U, top_n)`` and advance every active session."""
        users, cand = self._require_users(), self._require_cand()
        shown = self._check_shown(shown, users.active)
        active = users.active.copy()
        ids = np.take_along_axis(cand.ids, shown, axis=1)
        signals = self._sample_signals(cand, shown, active)
        durations = self.items.duration[ids] * active[:, None]
        watch = self._watch_time(cand, shown, signals, durations)
        reward = watch.sum(axis=1, dtype=np.float32)
        repeat = self._update_exposure(users, ids, active)
        self._update_satisfaction(users, signals, repeat, active)
        self._update_recent(users, signals, watch, repeat, active)
        done = self._exits(users, active)
        finished_returns = users.session_watch[done].astype(np.float32)
        finished_lengths = users.step[done].astype(np.int32)
        self._end_sessions(users, done)
        self._obs = self._observe()
        return StepResult(
            reward=reward,
            watch_time=watch,
            signals=signals,
            done=done,
            observation=self._obs,
            finished_returns=finished_returns,
            finished_lengths=finished_lengths,
            durations=durations.astype(np.float32),
            shown_ids=ids,
        )

    # ------------------------------------------------------------------------------- internals
    def _require_users(self) -> _Users:
        if self._users is None:
            raise RuntimeError("call reset() before step()")
        return self._users

    def _require_cand(self) -> _Candidates:
        if self._cand is None:
            raise RuntimeError("call reset() first")
        return self._cand

    def _check_shown(self, shown: np.ndarray, active: np.ndarray) -> np.ndarray:
        cfg = self.config
        shown = np.asarray(shown)
        expected = (len(active), cfg.top_n)
        if shown.shape != expected:
            raise ValueError(f"shown must have shape {expected}, got {shown.shape}")
        if not np.issubdtype(shown.dtype, np.integer):
            raise ValueError("shown must hold integer candidate indices")
        shown = np.where(active[:, None], shown, np.arange(cfg.top_n)[None, :]).astype(np.int64)
        if shown.min() < 0 or shown.max() >= cfg.n_candidates:
            raise ValueError(f"shown indices must be in [0, {cfg.n_candidates})")
        ordered = np.sort(shown, axis=1)
        if np.any(ordered[:, 1:] == ordered[:, :-1]):
            raise ValueError("shown indices must be distinct within each row")
        return shown

    def _sample_signals(
        self, cand: _Candidates, shown: np.ndarray, active: np.ndarray
    ) -> np.ndarray:
        """Sample click, then long view given click, then interactions given both."""
        rng, n = self._rng, self.config.top_n
        u = len(active)
        p_click = np.take_along_axis(cand.p_click, shown, axis=1)
        p_lv = np.take_along_axis(cand.p_lv, shown, axis=1)
        int_logit = np.take_along_axis(cand.int_logit, shown[:, :, None], axis=1)
        draws = rng.random((u, n, 2 + len(_INTERACT)), dtype=np.float32)
        click = (draws[..., 0] < p_click) & active[:, None]
        long_view = click & (draws[..., 1] < p_lv)
        drop = np.where(long_view, 0.0, self.config.interact_no_long_view_drop)
        p_int = _sigmoid(int_logit - drop[..., None].astype(np.float32))
        interact = click[..., None] & (draws[..., 2:] < p_int)
        return np.concatenate([click[..., None], long_view[..., None], interact], axis=2).astype(
            np.int8
        )

    def _watch_time(
        self, cand: _Candidates, shown: np.ndarray, signals: np.ndarray, durations: np.ndarray
    ) -> np.ndarray:
        """Play time: 0 unclicked; < min(d, 18 s) clicked without long view; >= with it."""
        rng, cfg = self._rng, self.config
        threshold = np.minimum(durations, cfg.long_view_s)
        watch_logit = np.take_along_axis(cand.watch_logit, shown, axis=1)
        noise = rng.standard_normal(shown.shape, dtype=np.float32) * cfg.watch_noise
        share = _sigmoid(watch_logit + noise)
        partial = rng.uniform(0.05, 0.95, size=shown.shape).astype(np.float32)
        long_play = threshold + (durations - threshold) * share
        short_play = threshold * partial
        click, long_view = signals[..., 0].astype(bool), signals[..., 1].astype(bool)
        watch = np.where(long_view, long_play, np.where(click, short_play, 0.0))
        return watch.astype(np.float32)

    def _update_exposure(self, users: _Users, ids: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Fraction of shown items whose category was shown recently (or twice now)."""
        cfg = self.config
        cats = self.items.category[ids]
        n_users = len(active)
        seen = np.take_along_axis(users.exposure, cats, axis=1)
        n_cat = self.n_categories
        flat = (np.arange(n_users)[:, None] * n_cat + cats).ravel()
        counts = np.bincount(flat, minlength=n_users * n_cat).reshape(n_users, -1)
        within = np.take_along_axis(counts, cats, axis=1) - 1
        repeat = np.minimum(seen + within, 3.0)
        users.exposure *= cfg.fatigue_decay
        users.exposure += counts * active[:, None]
        return (repeat * active[:, None]).astype(np.float32)

    def _update_satisfaction(
        self, users: _Users, signals: np.ndarray, repeat: np.ndarray, active: np.ndarray
    ) -> None:
        cfg = self.config
        s = signals.astype(np.float32)
        regret = s[..., 0] * (1.0 - s[..., 1])
        item_q = (
            cfg.q_long_view * s[..., 1]
            + cfg.q_like * s[..., 2]
            + cfg.q_follow_comment_share * s[..., 3:].sum(axis=2)
            - cfg.q_regret * regret
            - cfg.q_fatigue * repeat
        )
        quality = cfg.q_base + item_q.mean(axis=1)
        new_sat = cfg.sat_decay * users.sat + (1.0 - cfg.sat_decay) * quality
        users.sat = np.where(active, new_sat, users.sat)

    def _update_recent(
        self,
        users: _Users,
        signals: np.ndarray,
        watch: np.ndarray,
        repeat: np.ndarray,
        active: np.ndarray,
    ) -> None:
        cfg = self.config
        s = signals.astype(np.float32)
        rates = s.mean(axis=1)  # (U, K)
        regret = (s[..., 0] * (1.0 - s[..., 1])).mean(axis=1)
        watch_min = watch.mean(axis=1) / 60.0
        now = np.stack(
            [
                rates[:, 0],
                rates[:, 1],
                rates[:, 2],
                rates[:, 3:].sum(axis=1),
                regret,
                watch_min,
                (repeat > 0).mean(axis=1),
            ],
            axis=1,
        )
        a = active[:, None]
        users.ema = np.where(a, cfg.ema_decay * users.ema + (1 - cfg.ema_decay) * now, users.ema)
        last = np.stack([rates[:, 0], rates[:, 1], watch_min], axis=1)
        users.last = np.where(a, last, users.last).astype(np.float32)
        step_s = watch.sum(axis=1) + cfg.seconds_per_item_overhead * cfg.top_n
        users.tod = np.where(active, (users.tod + step_s / 3600.0) % 24.0, users.tod)
        users.session_watch += watch.sum(axis=1) * active
        users.step += active

    def _exits(self, users: _Users, active: np.ndarray) -> np.ndarray:
        hazard = self._rng.random(len(active)) < self.config.base_exit_prob
        leave = (users.sat < users.threshold) | hazard | (users.step >= self.config.max_steps)
        return leave & active

    def _end_sessions(self, users: _Users, done: np.ndarray) -> None:
        if self._auto_reset:
            users.init_rows(np.flatnonzero(done), self._rng, self.config, self._proj)
        else:
            users.active &= ~done

    def _sample_candidates(self, n_users: int) -> np.ndarray:
        """(U, C) distinct item ids per row: draw with replacement, redraw duplicates."""
        cfg, rng = self.config, self._rng
        ids = rng.integers(0, self.n_items, size=(n_users, cfg.n_candidates), dtype=np.int64)
        for _ in range(100):
            order = np.argsort(ids, axis=1, kind="stable")
            ordered = np.take_along_axis(ids, order, axis=1)
            dup_sorted = np.zeros_like(ids, dtype=bool)
            dup_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
            if not dup_sorted.any():
                return ids
            rows, cols = np.nonzero(dup_sorted)
            ids[rows, order[rows, cols]] = rng.integers(0, self.n_items, size=len(rows))
        raise RuntimeError("could not draw distinct candidates")

    def _observe(self) -> Observation:
        users = self._require_users()
        ids = self._sample_candidates(len(users.active))
        self._cand = self._candidate_probs(users, ids)
        predictions = self._predict(self._cand.marginals)
        return Observation(
            state=self._state(users),
            predictions=predictions,
            item_ids=ids,
            active=users.active.copy(),
        )

    def _candidate_probs(self, users: _Users, ids: np.ndarray) -> _Candidates:
        """True conditional and marginal feedback probabilities of every candidate."""
        cfg, it = self.config, self.items
        aff = np.einsum("ucl,ul->uc", it.latent[ids], users.latent) * math.sqrt(cfg.latent_dim)
        bait, quality, social = it.bait[ids], it.quality[ids], it.social[ids]
        fatigue = np.take_along_axis(users.exposure, it.category[ids], axis=1)
        user_click = cfg.user_click_bias * (users.activity - 1)
        user_click = user_click + cfg.tod_click * np.cos(2 * np.pi * (users.tod - 21.0) / 24.0)
        click_logit = (
            cfg.base_click
            + user_click[:, None]
            + cfg.click_affinity * aff
            + cfg.bait_click * bait * users.bait_sens[:, None]
            - cfg.fatigue_click * fatigue
        )
        lv_logit = (
            cfg.base_long_view
            + cfg.long_view_affinity * aff
            + cfg.quality_long_view * quality
            - cfg.bait_long_view * bait
        )
        shared = (
            cfg.interact_affinity * aff
            + users.interact[:, None]
            + cfg.item_social_std * social
            - cfg.bait_interact * bait
        )
        int_logit = (shared[..., None] + self._int_base).astype(np.float32)
        watch_logit = cfg.watch_base + cfg.watch_affinity * aff + cfg.watch_quality * quality
        p_click = _sigmoid(click_logit.astype(np.float32))
        p_lv = _sigmoid(lv_logit.astype(np.float32))
        marginals = self._marginals(p_click, p_lv, int_logit)
        return _Candidates(ids, p_click, p_lv, int_logit, watch_logit.astype(np.float32), marginals)

    def _marginals(
        self, p_click: np.ndarray, p_lv: np.ndarray, int_logit: np.ndarray
    ) -> np.ndarray:
        drop = np.float32(self.config.interact_no_long_view_drop)
        lv = p_lv[..., None]
        p_int = lv * _sigmoid(int_logit) + (1.0 - lv) * _sigmoid(int_logit - drop)
        pc = p_click[..., None]
        return np.concatenate([pc, pc * lv, pc * p_int], axis=2)

    def _predict(self, marginals: np.ndarray) -> np.ndarray:
        """Calibrated noisy MTL estimates: sigmoid(logit(p) + N(0, prediction_noise))."""
        noise = self._rng.standard_normal(marginals.shape, dtype=np.float32)
        logits = _logit(marginals.astype(np.float64)) + self.config.prediction_noise * noise
        return np.clip(_sigmoid(logits), _EPS, 1.0 - _EPS).astype(np.float32)

    def _state(self, users: _Users) -> np.ndarray:
        cfg = self.config
        angle = 2.0 * np.pi * users.tod / 24.0
        context = np.stack(
            [np.sin(angle), np.cos(angle), users.step / cfg.max_steps], axis=1
        ).astype(np.float32)
        session = np.log1p(users.session_watch / 60.0)[:, None].astype(np.float32)
        parts = [users.profile, context, users.ema, users.last, session]
        return np.concatenate(parts, axis=1).astype(np.float32)


def evaluate(
    sim: UserSimulator,
    score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_sessions: int,
    seed: int,
) -> EvalResult:
    """Run ``n_sessions`` concurrent sessions to their end, ranking by ``score_fn``.

    ``score_fn(state (U, D), predictions (U, C, K)) -> scores (U, C)`` is called on the active
    users only. Deterministic for a seed (and a deterministic ``score_fn``).
    """
    obs = sim.reset(n_sessions, seed=seed, auto_reset=False)
    returns = np.zeros(n_sessions, np.float64)
    lengths = np.zeros(n_sessions, np.int64)
    for _ in range(sim.config.max_steps + 1):
        active = obs.active
        if not active.any():
            break
        scores = np.zeros((*active.shape, sim.config.n_candidates), np.float64)
        scores[active] = score_fn(obs.state[active], obs.predictions[active])
        result = sim.step_scores(scores)
        returns += result.reward
        lengths += active
        obs = result.observation
    if obs.active.any():
        raise RuntimeError("sessions did not end within max_steps")
    logger.debug("evaluated %d sessions", n_sessions)
    return EvalResult(returns=returns.astype(np.float32), lengths=lengths.astype(np.int32))
