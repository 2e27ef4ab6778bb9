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
:mod:`trainer.sim.kuairand`); without one the synthetic population above is used. With one:

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
``sigmoid(logit(p) + N(0, prediction_noise))``, task-major ``(U, K, C)`` in the order of
:data:`TASKS` (as every other part of xmtf lays predictions out).

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
import math
from dataclasses import dataclass

import numpy as np

from shared.fusion import top_n_indices
from shared.tasks import DEFAULT_TASK_NAMES, TaskSpec, calibrate_tasks, make_tasks
from trainer.sim.config import SimConfig
from trainer.sim.items import make_items, make_real_items, unit
from trainer.sim.population import (
    fold_rows,
    load_kuairand_tables,
    make_population,
    resolve_data_dir,
)
from trainer.sim.users import PROFILE_FEATURES, Users

#: The simulator's task order: the ``K`` axis of every array uses it.
TASKS: tuple[str, ...] = DEFAULT_TASK_NAMES
#: The interaction tasks, sampled conditionally on click (and long view).
_INTERACT = ("like", "follow", "comment", "share")
_EPS = 1e-6
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
class Observation:
    """What the policy sees at one request of every user slot."""

    state: np.ndarray  # (U, D) float32
    predictions: np.ndarray  # (U, K, C) float32 in (0, 1), task-major, order = TASKS
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


@dataclass
class _Candidates:
    """Per-candidate quantities of the current request, kept for the step."""

    ids: np.ndarray  # (U, C)
    p_click: np.ndarray  # (U, C)
    p_lv: np.ndarray  # (U, C) long view given click
    int_logit: np.ndarray  # (U, C, 4) interaction logits given click and long view
    watch_logit: np.ndarray  # (U, C) logit of the share watched after a long view
    marginals: np.ndarray  # (U, C, K) true marginal probabilities


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


class UserSimulator:
    """Vectorised KuaiRand-like environment; see the module docstring for the mechanism."""

    tasks: tuple[str, ...] = TASKS

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        world = np.random.default_rng(np.random.SeedSequence([self.config.seed, 0]))
        self.data_dir = resolve_data_dir(self.config.data_dir)
        tables = load_kuairand_tables(self.data_dir) if self.data_dir is not None else None
        if tables is None:
            self.items = make_items(self.config, world)
            self.item_video_ids = np.arange(self.config.n_items, dtype=np.int64)
        else:
            self.items = make_real_items(self.config, world, tables[1])
            self.item_video_ids = tables[1].video_id.copy()
        self._proj = unit(
            world.standard_normal((self.config.profile_latent_dims, self.config.latent_dim))
        ).astype(np.float32) * math.sqrt(self.config.latent_dim)
        self._population = (
            make_population(self.config, world, tables[0], self._proj)
            if tables is not None
            else None
        )
        if self._population is not None and self.config.user_fold:
            pool = fold_rows(self._population.user_id, self.config.user_fold)
            self._population = dataclasses.replace(self._population, pool=pool)
        self.n_items = len(self.items.duration)
        self.n_categories = int(self.items.category.max()) + 1
        if self.config.n_candidates > self.n_items:
            raise ValueError(f"n_candidates must be <= the {self.n_items} items")
        self._int_base = np.array(
            [getattr(self.config, f"base_{t}") for t in _INTERACT], np.float32
        )
        self._rng = np.random.default_rng(np.random.SeedSequence([self.config.seed, 1]))
        self._users: Users | None = None
        self._cand: _Candidates | None = None
        self._obs: Observation | None = None
        self._auto_reset = True
        #: Requests answered so far (one per active user per step): the study's budget counter.
        self.requests_served = 0

    # ----------------------------------------------------------------------------- properties
    @property
    def state_dim(self) -> int:
        """Dimension D of the user state (a fixed function of the config)."""
        return len(self.state_feature_names)

    @property
    def state_feature_names(self) -> tuple[str, ...]:
        """Names of the D state features, in order."""
        latent = tuple(f"profile_latent{i}" for i in range(self.config.profile_latent_dims))
        return PROFILE_FEATURES + latent + _CONTEXT_FEATURES + _RECENT_FEATURES

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
        """(U, K, C) true marginal feedback probabilities of the current candidates (oracle)."""
        return np.ascontiguousarray(self._require_cand().marginals.transpose(0, 2, 1), np.float32)

    def satisfaction(self) -> np.ndarray:
        """(U,) hidden satisfaction of each slot (for analysis; not part of the state)."""
        return self._require_users().sat.copy()

    # ---------------------------------------------------------------------------- public API
    def task_specs(self, n_users: int = 512, seed: int = 777) -> tuple[TaskSpec, ...]:
        """The tasks with input normalisation fitted to this world's MTL predictions (what a
        deployment reads off its logs), from one request of ``n_users`` users. Resets the
        simulator: call it before collecting."""
        obs = self.reset(n_users, seed=seed, auto_reset=False)
        sample = obs.predictions.transpose(0, 2, 1).reshape(-1, obs.predictions.shape[1])
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
        self._users = Users(n_users, self.config, self.n_categories, self._population)
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
        self.requests_served += int(active.sum())
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
    def _require_users(self) -> Users:
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

    def _update_exposure(self, users: Users, ids: np.ndarray, active: np.ndarray) -> np.ndarray:
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
        self, users: Users, signals: np.ndarray, repeat: np.ndarray, active: np.ndarray
    ) -> None:
        cfg = self.config
        s = signals.astype(np.float32)
        regret = s[..., 0] * (1.0 - s[..., 1])
        if cfg.heterogeneity > 0:
            item_q = self._heterogeneous_quality(users, s, regret, repeat)
        else:
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

    def _heterogeneous_quality(
        self, users: Users, s: np.ndarray, regret: np.ndarray, repeat: np.ndarray
    ) -> np.ndarray:
        """Per-item step quality with each user's own utilities (``SimConfig.heterogeneity``)."""
        cfg, d = self.config, self.config.heterogeneity
        z_regret, z_social = users.taste[:, 0:1], users.taste[:, 1:2]
        regret_w = cfg.q_regret + d * cfg.het_regret * z_regret
        social = np.maximum(0.0, 1.0 + d * cfg.het_social * z_social)
        long_view = np.maximum(0.0, 1.0 - 0.5 * d * cfg.het_social * z_social)
        return (
            cfg.q_long_view * long_view * s[..., 1]
            + social
            * (cfg.q_like * s[..., 2] + cfg.q_follow_comment_share * s[..., 3:].sum(axis=2))
            - regret_w * regret
            - cfg.q_fatigue * repeat
        )

    def hidden_tastes(self, active_only: bool = False) -> np.ndarray:
        """(U, 2) each slot's hidden tastes (the oracle of ``make headroom``; not in the state);
        ``active_only``: the rows of the current observation's active users, in order."""
        users = self._require_users()
        return users.taste[users.active].copy() if active_only else users.taste.copy()

    def _update_recent(
        self,
        users: Users,
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

    def _exits(self, users: Users, active: np.ndarray) -> np.ndarray:
        hazard = self._rng.random(len(active)) < self.config.base_exit_prob
        leave = (users.sat < users.threshold) | hazard | (users.step >= self.config.max_steps)
        return leave & active

    def _end_sessions(self, users: Users, done: np.ndarray) -> None:
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
        predictions = self._predict(self._cand.marginals)  # (U, C, K): the draws' order
        return Observation(
            state=self._state(users),
            predictions=np.ascontiguousarray(predictions.transpose(0, 2, 1)),
            item_ids=ids,
            active=users.active.copy(),
        )

    def _candidate_probs(self, users: Users, ids: np.ndarray) -> _Candidates:
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

    def _state(self, users: Users) -> np.ndarray:
        cfg = self.config
        angle = 2.0 * np.pi * users.tod / 24.0
        context = np.stack(
            [np.sin(angle), np.cos(angle), users.step / cfg.max_steps], axis=1
        ).astype(np.float32)
        session = np.log1p(users.session_watch / 60.0)[:, None].astype(np.float32)
        parts = [users.profile, context, users.ema, users.last, session]
        return np.concatenate(parts, axis=1).astype(np.float32)
