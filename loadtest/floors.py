"""In-process floors measured on the benchmark's own bodies (no HTTP, no scorer process).

- ``ort``: the least ONNX Runtime work for one request, the smaller of two (each timed in a
  tight loop): ``ort_serving``, the scorer's one call of its serving graph (MFC graph over the
  whole candidate batch, actor, outer stage and top-N), and ``ort_pair``, the version's own MFC
  and actor graphs called one after the other (no outer stage, no top-N); both with the
  scorer's session options (``scorer.model.load_version``).
- ``parse``: the least work that turns a body into the arrays ORT needs (the state and the
  (K, N) prediction matrix as float32, no validation), the faster of two: ``parse_orjson``
  (``orjson.loads`` + numpy, the floor the benchmark started with) and ``parse_simdjson``
  (simdjson document + float64 buffers, the way the scorer's fast path reads numbers).
- ``parse_rank``: the scorer's validating parser (all SPEC §5 checks), for reference.

Each is timed back to back (the strict floor) and, for context, after an idle pause before each
call (``idle_s``), the way a scorer at concurrency 1 meets every request.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import simdjson

from scorer.model import LoadedModel, load_version
from scorer.parsing import Limits, parse_rank
from shared.manifest import read_current


def load_model(model_dir: Path) -> LoadedModel:
    name = read_current(model_dir)
    assert name is not None, f"no CURRENT in {model_dir}"
    return load_version(model_dir / name)


def time_call(
    fn: Callable[[int], Any], reps: int, warmup: int = 200, idle_s: float = 0.0
) -> np.ndarray:
    """Per-call wall times (ns) of ``fn(i)`` for i in range(reps), after ``warmup`` calls.

    ``idle_s`` > 0 sleeps that long before each timed call (not timed), as a scorer at
    concurrency 1 idles between one answer and the next request: back to back, a call finds
    its code and data in the CPU's caches, which a server that waited on the network does not.
    """
    for i in range(warmup):
        fn(i)
    out = np.empty(reps, np.int64)
    perf, sleep = time.perf_counter_ns, time.sleep
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for i in range(reps):
            if idle_s:
                sleep(idle_s)
            t = perf()
            fn(i)
            out[i] = perf() - t
    finally:
        if gc_was:
            gc.enable()
    return out


def minimal_parse(body: bytes, tasks: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    data = orjson.loads(body)
    preds = data["predictions"]
    state = np.array(data["user_state"], np.float32)[None, :]
    matrix = np.array([preds[t] for t in tasks], np.float32)
    return state, matrix


_simdjson = simdjson.Parser()


def minimal_parse_simdjson(body: bytes, tasks: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    doc: Any = _simdjson.parse(body)
    preds = doc["predictions"]
    state = np.frombuffer(doc["user_state"].as_buffer(of_type="d"), np.float64)
    values = np.frombuffer(b"".join(preds[t].as_buffer(of_type="d") for t in tasks), np.float64)
    del doc, preds  # a simdjson parser parses again only once its documents are gone
    return state.astype(np.float32)[None, :], values.astype(np.float32).reshape(len(tasks), -1)


def _faster(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a if np.median(a) <= np.median(b) else b


def measure(
    model: LoadedModel, bodies: list[bytes], reps: int, idle_s: float = 0.0
) -> dict[str, np.ndarray]:
    """The floors' per-call times (ns); see :func:`time_call` for ``idle_s``."""
    tasks = model.task_names
    limits = Limits(max_candidates=5000, max_top_n=1000)
    parsed = [parse_rank(b, tasks, model.state_dim, limits) for b in bodies]
    nb = len(bodies)

    k = len(tasks)
    noise = np.zeros(k, np.float32)

    def ort_pair(i: int) -> None:
        p = parsed[i % nb]
        model.infer(p.state, p.predictions)

    def ort_serving(i: int) -> None:
        p = parsed[i % nb]
        model.rank(p.state, p.predictions, noise, p.top_n)

    def timed(fn: Callable[[int], Any]) -> np.ndarray:
        return time_call(fn, reps, idle_s=idle_s)

    pair, serving = timed(ort_pair), timed(ort_serving)
    by_orjson = timed(lambda i: minimal_parse(bodies[i % nb], tasks))
    by_simdjson = timed(lambda i: minimal_parse_simdjson(bodies[i % nb], tasks))
    return {
        "ort": _faster(pair, serving),
        "ort_pair": pair,
        "ort_serving": serving,
        "parse": _faster(by_orjson, by_simdjson),
        "parse_orjson": by_orjson,
        "parse_simdjson": by_simdjson,
        "parse_rank": timed(lambda i: parse_rank(bodies[i % nb], tasks, model.state_dim, limits)),
    }
