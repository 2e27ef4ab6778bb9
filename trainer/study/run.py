"""The whole study: every method x seed (in parallel workers), assembled into paper.json."""

from __future__ import annotations

import json
import math
import multiprocessing
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trainer import stats
from trainer.config import from_dict
from trainer.loop import plain_sum_score
from trainer.sim import SimConfig
from trainer.study.budget import estimate_seconds
from trainer.study.config import SECTIONS, PaperConfig
from trainer.study.registry import METHOD_BY_KEY, METHODS, Method
from trainer.study.report import render_tables, verdict, write_markdown
from trainer.study.runner import Runner, Trial


def summarise(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std (ddof=1; 0 with one seed) over seeds, and at every budget the mean
    watch time with its 95 % CI from the two-level bootstrap over seeds and evaluation users."""
    out: dict[str, Any] = {"n_seeds": float(len(trials))}
    for key in ("return_mean", "length_mean", "seconds", "mono_violation", "action_at_bound"):
        values = [t[key] for t in trials if t.get(key) is not None]
        if not values:
            continue
        arr = np.asarray(values, np.float64)
        name = key.removesuffix("_mean")
        out[f"{name}_mean"] = float(arr.mean())
        out[f"{name}_std"] = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    rows = []
    for j, first in enumerate(trials[0]["budgets"]):
        cells = [t["budgets"][j] for t in trials]
        est = stats.estimate(np.array([c["returns"] for c in cells]))
        rows.append(
            {
                "budget": first["budget"],
                "return": est.as_dict(),
                "requests": float(np.mean([c["requests"] for c in cells])),
                "length_mean": float(np.mean([c["length_mean"] for c in cells])),
                "cap_share": float(np.mean([c["cap_share"] for c in cells])),
                "kept_start": float(np.mean([c.get("kept_start", 0.0) for c in cells])),
            }
        )
    out["budgets"] = rows
    out["return_ci95"] = rows[-1]["return"]["ci95"]
    return out


def run_paper(
    config: PaperConfig,
    out: Path,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    jobs: int = 1,
    merge: bool = False,
    add_seeds: bool = False,
) -> dict[str, Any]:
    """Train and evaluate every method ``config.trials`` times; write paper.json/paper.md.

    ``jobs`` > 1 runs (method, seed) pairs in that many worker processes (each with
    ``config.torch_threads`` torch threads). Every run reseeds its simulator, networks and
    replay from its seed, so the results do not depend on ``jobs`` or on the order of runs.

    ``merge`` adds the methods run now to an existing ``out/paper.json`` of the same study (same
    configuration but for the method list, same plain-sum result), replacing their old entries:
    one more method does not need the whole study again.

    ``add_seeds`` (with ``merge``) grows a study in resumable parts: each method run now keeps
    its trials in ``out/paper.json`` and runs only the seeds it lacks up to ``config.trials``
    (a study of 3 seeds becomes one of 10 over several sessions); ``trials`` may differ from the
    prior study's, nothing else may."""
    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        if add_seeds and not merge:
            raise ValueError("add_seeds extends a study: it needs merge")
        prior = _prior_study(config, out, ignore_trials=add_seeds) if merge else None
        return _run_paper(config, out, progress, echo, jobs, prior, add_seeds)
    finally:
        torch.set_num_threads(threads_before)


class StudyMismatch(ValueError):
    """``merge`` asked for a study that is absent or was run with another configuration."""


#: Config sections (or one field of a section) that only some kinds of method read: a study that
#: ran none of those methods merges with any value of them (e.g. one run before they existed).
READ_ONLY_BY: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("es", None): ("es_xmtf",),
    ("td3", "offline_updates"): ("batchrl",),
}


def _unread(method_keys: Iterable[str]) -> list[tuple[str, str | None]]:
    """The fields of :data:`READ_ONLY_BY` (None: a whole section) none of these methods read."""
    kinds = {METHOD_BY_KEY[k].kind for k in method_keys if k in METHOD_BY_KEY}
    return [key for key, readers in READ_ONLY_BY.items() if not kinds & set(readers)]


def _comparable(config: dict[str, Any], prior: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config without its method list and without what the prior study's methods never
    read (``prior``: the other study's whole report; default this config's own methods)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items() if k != "methods"}
    keys = prior["methods"] if prior is not None else config.get("methods", [])
    for section, field in _unread(keys):
        if field is None:
            out.pop(section, None)
        elif isinstance(out.get(section), dict):
            out[section].pop(field, None)
    return out


def _merged_config(mine: dict[str, Any], prior: dict[str, Any]) -> dict[str, Any]:
    """The config of ``prior`` (a whole report) grown by this run's (``mine``): the prior's
    values, plus every field it lacks, and the values this run's methods ran with for what the
    prior's methods never read (:data:`READ_ONLY_BY`), so that the next merge compares them."""
    theirs = prior["config"]
    out: dict[str, Any] = {}
    for key in mine.keys() | theirs.keys():
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out[key] = {**a, **b}
        else:
            out[key] = b if key in theirs else a
    for section, field in _unread(prior["methods"]):
        if not isinstance(mine.get(section), dict):
            continue
        if field is None:
            out[section] = dict(mine[section])
        elif field in mine[section]:
            out[section] = {**out[section], field: mine[section][field]}
    return out


#: Config fields added after studies were committed, with the value that reproduces what a
#: study written before the field existed ran: such a study merges with a run that has it.
ADDED_FIELDS: dict[tuple[str, str], Any] = {
    ("tsh", "transfer_anchor"): "none",
    ("es", "block_iterations"): 0,
    ("es", "distill_steps"): 300,
    ("es", "distill_lr"): 1e-3,
    ("es", "distill_batch"): 128,
    ("es", "distill_requests"): 8192,
    ("es", "warm_share"): 0.0,
    ("es", "warm_sessions"): 32,
    ("train", "confirm_sessions"): 0,
}


def study_config(report: dict[str, Any]) -> PaperConfig:
    """The :class:`PaperConfig` a ``paper.json`` recorded, to re-create its world, users and
    methods (a field the study predates takes the value it ran with, :data:`ADDED_FIELDS`; a
    section it never wrote, its default)."""
    data = report["config"]
    built: dict[str, Any] = {}
    for name, cls in {"sim": SimConfig, **SECTIONS}.items():
        if name in data:
            old = {f: v for (sec, f), v in ADDED_FIELDS.items() if sec == name}
            built[name] = from_dict(cls, {**old, **data[name]})
    return PaperConfig(
        **built,
        dose=float(data.get("dose", 0.0)),
        budgets=tuple(int(b) for b in data["budgets"]),
        trials=int(data["trials"]),
        methods=tuple(data["methods"]),
        quick=bool(data.get("quick", False)),
        torch_threads=int(data.get("torch_threads", 1)),
    )


def _drop_fields_added_since(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    """Drop from ``mine`` each field of :data:`ADDED_FIELDS` the prior study's config lacks
    while ``mine`` holds the value that study ran with: then it is the same study."""
    for (section, name), old in ADDED_FIELDS.items():
        here, there = mine.get(section), theirs.get(section)
        if not (isinstance(here, dict) and isinstance(there, dict)) or name in there:
            continue
        if here.get(name) == old:
            here.pop(name, None)


def _same_numbers(a: Any, b: Any, rtol: float = 1e-6) -> bool:
    """Equal up to ``rtol`` on floats: numpy's SIMD kernels round the last bit differently on
    different CPUs, so a study merged on another machine sees the same world to ~1e-7."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        pairs = zip(a, b, strict=False)
        return len(a) == len(b) and all(_same_numbers(x, y, rtol) for x, y in pairs)
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-9)
    return bool(a == b)


def _prior_study(config: PaperConfig, out: Path, ignore_trials: bool = False) -> dict[str, Any]:
    path = out / "paper.json"
    if not path.is_file():
        raise StudyMismatch(f"nothing to merge into: {path} does not exist")
    prior: dict[str, Any] = json.loads(path.read_text())
    mine, theirs = _comparable(config.as_dict(), prior), _comparable(prior["config"], prior)
    if ignore_trials:
        mine.pop("trials", None)
        theirs.pop("trials", None)
    _drop_fields_added_since(mine, theirs)
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        raise StudyMismatch(
            f"cannot merge into {path}: its configuration differs in {', '.join(differ)}"
        )
    return prior


def _run_paper(
    config: PaperConfig,
    out: Path,
    progress: bool,
    echo: Callable[[str], None],
    n_jobs: int,
    prior: dict[str, Any] | None = None,
    add_seeds: bool = False,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    torch_threads = torch.get_num_threads()
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    runner = Runner(config, progress=progress)
    methods = [METHOD_BY_KEY[k] for k in config.methods]

    t = time.perf_counter()
    estimates = estimate_seconds(runner, methods)
    probe_s = time.perf_counter() - t
    plain = runner.evaluate(plain_sum_score)
    if prior is not None and not _same_numbers(prior["plain_sum"], plain):
        raise StudyMismatch("the plain sum changed since the merged study: not the same world")
    kept = _kept_trials(prior, methods) if add_seeds else {}
    jobs = [(m, s) for m in methods for s in range(len(kept.get(m.key, [])), config.trials)]
    projected = sum(estimates[m.key] for m, _ in jobs)
    echo(
        f"paper: {len(jobs)} runs of {len(methods)} methods (seeds up to {config.trials}), "
        f"{n_jobs} job(s); projected "
        f"{projected / 60 / n_jobs:.1f} min (probe {probe_s:.1f} s; per seed: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in estimates.items())
        + ")"
    )

    results: dict[str, Any] = {}

    def checkpoint_of(method: Method, seed: int) -> Path | None:
        if seed != 0 or method.kind == "control":
            return None
        json_kinds = ("cem", "cem_xmtf")  # es_xmtf keeps an xMTF agent (safetensors)
        return ckpt_dir / f"{method.key}{'.json' if method.kind in json_kinds else '.safetensors'}"

    trials: dict[tuple[str, int], Trial] = {}
    bar = tqdm(total=len(jobs), desc="paper", disable=not progress, unit="run")
    spent = estimated = 0.0  # of the finished runs: the probe's error so far rescales the rest
    for method, seed, trial in _execute(runner, jobs, checkpoint_of, jobs_n=n_jobs):
        trials[(method.key, seed)] = trial
        spent += trial.seconds
        estimated += estimates[method.key]
        left = sum(estimates[m.key] for m, s in jobs if (m.key, s) not in trials)
        scale = spent / estimated if estimated > 0 else 1.0
        bar.set_postfix_str(
            f"{method.key} seed {seed} done, ~{left * scale / 60 / n_jobs:.0f} min left"
        )
        bar.update()
    bar.close()
    for method in methods:  # assemble in a fixed order, whatever order the runs finished in
        first_ckpt = checkpoint_of(method, 0)  # seed 0's model is the one kept
        earlier = kept.get(method.key, [])
        results[method.key] = (prior["methods"][method.key] if earlier and prior else {}) | {
            "label": method.label,
            "kind": method.kind,
            "table": method.table,
            "formula": method.formula,
            "tsh_overrides": dict(method.tsh),
            **({"es_overrides": dict(method.es)} if method.es else {}),
            "projected_seconds_per_seed": estimates[method.key],
            "checkpoint": str(first_ckpt.relative_to(out)) if first_ckpt else None,
            "trials": earlier + [trials[(m.key, s)].as_dict() for m, s in jobs if m is method],
        }
        results[method.key]["summary"] = summarise(results[method.key]["trials"])
    seconds = time.perf_counter() - t_start
    meta = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": seconds,
        "projected_seconds": projected,
        "probe_seconds": probe_s,
        "torch_threads": torch_threads,
        "jobs": n_jobs,
        "machine": platform.platform(),
        "seeds": list(range(config.trials)),
        "world_seed": config.sim.seed,
        "population": runner.train_sim.population,
        "eval_seed": config.train.eval_seed,
        "eval_sessions": config.train.eval_sessions,
    }
    report: dict[str, Any] = {
        "meta": meta,
        "config": config.as_dict(),
        "plain_sum": plain,
        "methods": results,
    }
    if prior is not None:
        merged = {k: v for k, v in prior["methods"].items() if k not in results} | results
        keys = [m.key for m in METHODS if m.key in merged]
        report = prior | {"methods": {k: merged[k] for k in keys}}
        report["config"] = _merged_config(config.as_dict(), prior) | {"methods": keys}
        if add_seeds:  # the study's seed target; methods not grown keep fewer (the seeds column)
            report["config"]["trials"] = max(config.trials, int(prior["config"]["trials"]))
        report["meta"] = prior["meta"] | {
            "merged": [*prior["meta"].get("merged", []), {**meta, "methods": list(results)}]
        }
    report["verdict"] = verdict(report)
    (out / "paper.json").write_text(json.dumps(report))  # compact: per-user returns inside
    write_markdown(report, out)
    echo(render_tables(report))
    echo(
        f"paper: done in {seconds / 60:.1f} min (projected {projected / 60 / n_jobs:.1f} min); "
        f"wrote {out / 'paper.md'}"
    )
    return report


def _kept_trials(prior: dict[str, Any] | None, methods: Sequence[Method]) -> dict[str, list]:
    """The prior study's trials of ``methods``, checked to be seeds 0, 1, ... in order (the
    paired comparisons pair seeds by position)."""
    kept: dict[str, list] = {}
    for method in methods:
        earlier = (prior or {}).get("methods", {}).get(method.key, {}).get("trials", [])
        seeds = [t.get("seed") for t in earlier]
        if seeds != list(range(len(earlier))):
            raise StudyMismatch(f"{method.key}: its trials are seeds {seeds}, not 0, 1, ...")
        kept[method.key] = list(earlier)
    return kept


# ------------------------------------------------------------------------------ parallel runs

_WORKER_RUNNER: Runner | None = None


def _worker_init(config: PaperConfig) -> None:
    global _WORKER_RUNNER
    torch.set_num_threads(config.torch_threads)
    _WORKER_RUNNER = Runner(config)


def _worker_run(key: str, seed: int, checkpoint: Path | None) -> Trial:
    assert _WORKER_RUNNER is not None
    return _WORKER_RUNNER.run(METHOD_BY_KEY[key], seed, checkpoint)


def _execute(
    runner: Runner,
    jobs: Sequence[tuple[Method, int]],
    checkpoint_of: Callable[[Method, int], Path | None],
    jobs_n: int,
) -> Iterator[tuple[Method, int, Trial]]:
    """Run every (method, seed), in this process or in ``jobs_n`` spawned workers; yields as
    runs finish. The longest projected runs are not reordered: the list is already grouped
    by method, and worker start-up is a few seconds against minutes of work."""
    if jobs_n == 1:
        for method, seed in jobs:
            yield method, seed, runner.run(method, seed, checkpoint_of(method, seed))
        return
    ctx = multiprocessing.get_context("spawn")  # no fork after torch has started its threads
    with ProcessPoolExecutor(
        jobs_n, mp_context=ctx, initializer=_worker_init, initargs=(runner.config,)
    ) as pool:
        futures = {pool.submit(_worker_run, m.key, s, checkpoint_of(m, s)): (m, s) for m, s in jobs}
        for future in as_completed(futures):
            method, seed = futures[future]
            yield method, seed, future.result()
