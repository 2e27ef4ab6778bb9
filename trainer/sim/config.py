"""The parameters of one simulated world; a JSON file of overrides makes one."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The real-user folds of ``SimConfig.user_fold`` ("" = every user).
USER_FOLDS = ("", "train", "validation", "evaluation")


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
    # heterogeneity dose d of the world family (results/worlds.md): per-user satisfaction
    # utilities driven by two hidden tastes z = latent . proj[:2] (visible, noisily, as
    # profile_latent0/1). Regret weight q_regret + d het_regret z_0 (negative: short clicks
    # please the user); interaction weights x max(0, 1 + d het_social z_1), long-view weight
    # x max(0, 1 - d het_social z_1 / 2). d = 0 is the base world, bit for bit.
    heterogeneity: float = 0.0
    het_regret: float = 3.0
    het_social: float = 1.0
    # state
    ema_decay: float = 0.7
    seconds_per_item_overhead: float = 2.0
    # population: a KuaiRand-Pure folder (user_features_pure.csv, video_features_basic_pure.csv).
    # None: $XMTF_KUAIRAND_DIR if set, else synthetic; "": synthetic; a folder without the two
    # files: synthetic, with a warning. See ``resolve_data_dir``.
    data_dir: str | None = None
    # real users only: "" draws from every user; "train" / "validation" / "evaluation" from a
    # disjoint 60 / 20 / 20 % split by a hash of the real user_id (see trainer.sim.population)
    user_fold: str = ""

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
        if self.user_fold not in USER_FOLDS:
            raise ValueError(f"user_fold must be one of {USER_FOLDS}, got {self.user_fold!r}")
        if self.heterogeneity < 0:
            raise ValueError("heterogeneity must be >= 0")
        if self.heterogeneity > 0 and self.profile_latent_dims < 2:
            raise ValueError(
                "heterogeneity > 0 needs profile_latent_dims >= 2 (the visible tastes)"
            )

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
    if key == "user_fold":
        if not isinstance(value, str):
            raise ValueError(f"SimConfig.user_fold must be a string, got {value!r}")
        return value
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
