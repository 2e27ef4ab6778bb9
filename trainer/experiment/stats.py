"""The statistics of experiments: user-level ratio metrics, the relative difference to control
(delta method), the sequential guardrail (an always-valid confidence sequence) and the sample
size to recommend.

The unit of randomisation is the user (assignment hashes ``user_id``), so the unit of analysis
is too: each user contributes a numerator (e.g. total watch time over their sessions) and a
denominator (their sessions). A metric "per session" is a ratio of two user-level means,
``R = mean(num) / mean(den)``, and its variance comes from the delta method,
``Var(R) ~ Var(num - R den) / (n mean(den)^2)``, which is correct when one user has several,
correlated sessions (a per-session t-test would not be).

Guard: at every look it forms the normal-mixture confidence sequence (Robbins; Howard et al.
2021, eq. (14)) around the relative difference: with ``V`` the squared standard error,
radius ``sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))``. It covers the
true difference at *every* sample size at once with probability >= 1 - alpha (asymptotically,
as the estimate is approximately normal), so looking after every batch of sessions, as often as
one likes, keeps the false-rollback rate <= alpha. A fixed-n 95 % interval looked at 20 times
would roll back a harmless arm far more often than 5 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
Z80 = 0.8416212335729143  # power 80 %
#: Mixture scale of the confidence sequence, in relative-difference units: it is tightest
#: for differences around this size (a few per cent, the effects a rollout cares about).
TAU = 0.05


@dataclass(frozen=True)
class Ratio:
    """``sum(num) / sum(den)`` over users with the delta-method standard error."""

    mean: float
    se: float
    users: int

    @property
    def ci95(self) -> tuple[float, float]:
        return (self.mean - Z95 * self.se, self.mean + Z95 * self.se)

    def as_dict(self) -> dict[str, object]:
        lo, hi = self.ci95
        return {"mean": self.mean, "ci95": [lo, hi]}


def ratio(num: np.ndarray, den: np.ndarray) -> Ratio:
    """The ratio metric of per-user ``num`` and ``den`` (both (users,))."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    n = len(num)
    if n == 0 or den.sum() <= 0:
        return Ratio(math.nan, math.nan, n)
    r = float(num.sum() / den.sum())
    if n < 2:
        return Ratio(r, math.inf, n)
    resid = num - r * den
    se = math.sqrt(float(resid.var(ddof=1)) / n) / float(den.mean())
    return Ratio(r, se, n)


@dataclass(frozen=True)
class Difference:
    """``treatment / control - 1`` with its standard error (delta method, independent arms)."""

    relative: float
    se: float

    @property
    def ci95(self) -> tuple[float, float]:
        return (self.relative - Z95 * self.se, self.relative + Z95 * self.se)

    def sequence(self, alpha: float = 0.05, tau: float = TAU) -> tuple[float, float]:
        """The always-valid (1 - alpha) confidence sequence at this look."""
        r = cs_radius(self.se, alpha, tau)
        return (self.relative - r, self.relative + r)

    def as_dict(self) -> dict[str, object]:
        lo, hi = self.ci95
        return {"relative": self.relative, "ci95": [lo, hi], "se": self.se}


def relative_difference(treatment: Ratio, control: Ratio) -> Difference:
    if not (control.mean > 0 and math.isfinite(treatment.mean)):
        return Difference(math.nan, math.nan)
    q = treatment.mean / control.mean
    se = q * math.sqrt((treatment.se / treatment.mean) ** 2 + (control.se / control.mean) ** 2)
    return Difference(q - 1.0, se)


def cs_radius(se: float, alpha: float = 0.05, tau: float = TAU) -> float:
    """Half-width of the normal-mixture confidence sequence for an estimate with std ``se``."""
    if not (se > 0 and math.isfinite(se)):
        return math.inf
    v, t2 = se * se, tau * tau
    return math.sqrt(v * (v + t2) / t2 * (2.0 * math.log(1.0 / alpha) + math.log((v + t2) / v)))


def users_per_arm(control: Ratio, mde: float = 0.03, power_z: float = Z80) -> int | None:
    """Users per arm for the report's two-sided 5 % test of the relative difference to detect a
    relative change ``mde`` with 80 % power, from the control arm's per-user spread.

    The test's estimate ``q - 1 = T / C - 1`` has the delta-method variance
    ``q^2 (cv_T^2 + cv_C^2) / n`` (``cv`` the per-user relative spread, ``se^2 n / mean^2``).
    Under the alternative ``q = 1 + mde``, and a change that scales the metric keeps
    ``cv_T = cv_C``, so ``n = 2 cv^2 (1 + mde)^2 (z_{0.975} + z_{0.8})^2 / mde^2``. Dropping the
    ``(1 + mde)^2`` (the variance at ``q = 1``) recommends 6 % too few users at ``mde`` = 3 %,
    and 78 % power instead of 80 %.
    """
    if not (control.users >= 2 and control.mean > 0 and math.isfinite(control.se)):
        return None
    unit_var = (control.se / control.mean) ** 2 * control.users  # per user, relative units
    q = 1.0 + mde
    return math.ceil(2.0 * unit_var * q * q * (Z95 + power_z) ** 2 / mde**2)


@dataclass(frozen=True)
class GuardLook:
    """One arm at one look of the guard."""

    decision: str  # "rolled_back", "promote", "wait" (too few sessions) or "none"
    difference: Difference
    sequence: tuple[float, float]


def guard_look(
    diff: Difference,
    sessions: tuple[int, int],
    max_drop: float,
    min_sessions: int,
    alpha: float = 0.05,
) -> GuardLook:
    """The guardrail on one treatment arm: roll back when the confidence sequence lies wholly
    below ``-max_drop`` (worse than control beyond the margin, at level ``alpha`` under any
    number of looks); promotable when it lies wholly above 0."""
    seq = diff.sequence(alpha)
    if min(sessions) < min_sessions or not math.isfinite(diff.relative):
        return GuardLook("wait", diff, seq)
    if seq[1] < -max_drop:
        return GuardLook("rolled_back", diff, seq)
    if seq[0] > 0:
        return GuardLook("promote", diff, seq)
    return GuardLook("none", diff, seq)
