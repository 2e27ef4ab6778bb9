"""CUPED (Deng, Xu, Kohavi and Walker 2013) for the report's user-level ratio metric.

Each user has, in an arm, a numerator (watch time) and a denominator (sessions), and a
covariate measured before the experiment: their watch time per session in sessions logged
before it began. Users without such sessions get the pooled mean of the covariate (over every
user of the experiment who has one, all arms together): the standard treatment of missing
pre-period data, which leaves them unadjusted.

The metric of arm ``a`` is ``R_a = sum(num) / sum(den)``; linearised (the delta method, as in
:func:`~trainer.experiment.stats.ratio`), its per-user influence is
``l_i = (num_i - R_a den_i) / mean_a(den)`` and ``Var(R_a) = Var(l) / n_a``. The adjusted metric
is ``R_a - theta (mean_a(x) - mean(x))`` with ``mean(x)`` pooled over the arms and ``theta =
Cov(l, x) / Var(x)`` pooled within the arms (one theta for all, so the adjustment cannot favour
an arm); its variance is ``Var(l - theta x) / n_a``, smaller by the share ``corr(l, x)^2`` of the
variance the covariate explains. The covariate is fixed before assignment, so the adjusted
metric estimates the same thing as the plain one (unbiased); the relative difference to control
and its interval follow from the adjusted arms exactly as for the plain ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trainer.experiment.stats import Ratio


@dataclass(frozen=True)
class ArmInput:
    """One arm's per-user numerator, denominator and pre-period covariate (NaN: none)."""

    num: np.ndarray
    den: np.ndarray
    x: np.ndarray


@dataclass(frozen=True)
class Cuped:
    """The adjusted arms and what the adjustment did."""

    adjusted: dict[str, Ratio]
    variance_reduction: dict[str, float]  # per arm: 1 - Var(l - theta x) / Var(l)
    theta: float
    x_mean: float  # pooled mean of the covariate (the fill-in for users without one)
    users_with_covariate: dict[str, int]
    pooled_variance_reduction: float  # the same, within-arm variances pooled over the arms


def covariate(pre_watch: np.ndarray, pre_sessions: np.ndarray) -> np.ndarray:
    """Watch time per session before the experiment per user (NaN without sessions)."""
    pre_watch = np.asarray(pre_watch, np.float64)
    pre_sessions = np.asarray(pre_sessions, np.float64)
    out = np.full(len(pre_watch), math.nan)
    has = pre_sessions > 0
    out[has] = pre_watch[has] / pre_sessions[has]
    return out


def _influence(num: np.ndarray, den: np.ndarray) -> tuple[float, np.ndarray]:
    r = float(num.sum() / den.sum())
    return r, (num - r * den) / float(den.mean())


def cuped(arms: dict[str, ArmInput]) -> Cuped | None:
    """CUPED-adjusted ratio metrics of ``arms`` (see the module docstring); None when no user
    has a covariate or an arm has fewer than two users."""
    arms = {k: a for k, a in arms.items() if len(a.num)}
    if not arms or any(len(a.num) < 2 or a.den.sum() <= 0 for a in arms.values()):
        return None
    observed = np.concatenate([a.x[np.isfinite(a.x)] for a in arms.values()])
    if observed.size == 0:
        return None
    x_mean = float(observed.mean())
    parts = {}
    for name, a in arms.items():
        x = np.where(np.isfinite(a.x), a.x, x_mean)
        r, infl = _influence(np.asarray(a.num, np.float64), np.asarray(a.den, np.float64))
        parts[name] = (r, infl, x, int(np.isfinite(a.x).sum()))
    sxx = sum(float(((x - x.mean()) ** 2).sum()) for _, _, x, _ in parts.values())
    sxl = sum(float(((x - x.mean()) * infl).sum()) for _, infl, x, _ in parts.values())
    theta = sxl / sxx if sxx > 0 else 0.0
    adjusted, reduction = {}, {}
    raw_ss = res_ss = 0.0
    for name, (r, infl, x, _) in parts.items():
        n = len(x)
        resid = infl - theta * (x - x.mean())
        adjusted[name] = Ratio(
            r - theta * (float(x.mean()) - x_mean), math.sqrt(float(resid.var(ddof=1)) / n), n
        )
        v_raw, v_res = float(infl.var(ddof=1)), float(resid.var(ddof=1))
        reduction[name] = 1.0 - v_res / v_raw if v_raw > 0 else 0.0
        raw_ss += v_raw * (n - 1)
        res_ss += v_res * (n - 1)
    pooled = 1.0 - res_ss / raw_ss if raw_ss > 0 else 0.0
    return Cuped(adjusted, reduction, theta, x_mean, {k: p[3] for k, p in parts.items()}, pooled)
