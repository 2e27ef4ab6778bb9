"""The fixed item pool of a world: synthetic items, or the real KuaiRand videos."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainer.sim import kuairand
from trainer.sim.config import SimConfig


@dataclass(frozen=True)
class Items:
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


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def make_items(config: SimConfig, rng: np.random.Generator) -> Items:
    n, dim = config.n_items, config.latent_dim
    popularity = 1.0 / np.arange(1, config.n_categories + 1) ** config.category_zipf
    category = rng.choice(config.n_categories, size=n, p=popularity / popularity.sum())
    centres = unit(rng.standard_normal((config.n_categories, dim)))
    latent = unit(centres[category] * config.category_strength + rng.standard_normal((n, dim)))
    duration = sample_durations(rng, n, config)
    log_d = np.log(duration)
    z_dur = (log_d - log_d.mean()) / max(float(log_d.std()), 1e-9)
    c = config.bait_duration_corr
    bait = c * z_dur + math.sqrt(1.0 - c * c) * rng.standard_normal(n)
    return Items(
        latent=latent.astype(np.float32),
        category=category.astype(np.int64),
        duration=duration,
        bait=bait.astype(np.float32),
        quality=rng.standard_normal(n).astype(np.float32),
        social=rng.standard_normal(n).astype(np.float32),
    )


def make_real_items(
    config: SimConfig, rng: np.random.Generator, videos: kuairand.VideoFeatures
) -> Items:
    """The KuaiRand videos: real durations and tags, simulated latent scores.

    The category (for fatigue) is the first tag, ordered by frequency (videos without a tag
    form one more category); the latent vector lies around the mean of the centres of all the
    video's tags. Unknown durations are drawn from :func:`sample_durations`. Ads are baitier,
    and each upload type shifts quality a little.
    """
    n, dim = len(videos), config.latent_dim
    category = rank_codes(videos.primary_tag)
    tag_matrix, _ = videos.tag_matrix()
    centres = unit(rng.standard_normal((tag_matrix.shape[1], dim)))
    mix = unit(tag_matrix @ centres) * (tag_matrix.sum(axis=1, keepdims=True) > 0)
    latent = unit(mix * config.category_strength + rng.standard_normal((n, dim)))
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
    return Items(
        latent=latent.astype(np.float32),
        category=category.astype(np.int64),
        duration=duration,
        bait=bait.astype(np.float32),
        quality=quality.astype(np.float32),
        social=rng.standard_normal(n).astype(np.float32),
    )


def rank_codes(values: np.ndarray) -> np.ndarray:
    """Codes 0, 1, ... of ``values`` by descending frequency (ties: smaller value first)."""
    distinct, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    order = np.lexsort((distinct, -counts))
    code = np.empty(len(distinct), np.int64)
    code[order] = np.arange(len(distinct))
    return code[inverse.ravel()]
