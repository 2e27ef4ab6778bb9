"""Realistic ``/v1/rank`` bodies, pre-encoded once (the load client only replays bytes).

What a recommendation backend sends: a 64-float user state, N string ids shaped like
KuaiRand video ids, one array per task of calibrated probabilities (logit-normal around the
KuaiRand base rates, paper Table 6) written with full float64 precision as a JSON encoder
would, and ``top_n`` = 10. At N = 500, K = 6 a body is about 66 KB.
"""

from __future__ import annotations

import numpy as np
import orjson

# Mean rates of the six KuaiRand feedbacks (paper Table 6); other tasks cycle through them.
_BASE_RATES = (0.3793, 0.2635, 0.0151, 0.0012, 0.0025, 0.0009)
TOP_N = 10


def make_body(
    n: int, tasks: list[str], state_dim: int, rng: np.random.Generator, top_n: int = TOP_N
) -> bytes:
    preds = {}
    for k, name in enumerate(tasks):
        rate = _BASE_RATES[k % len(_BASE_RATES)]
        # logit-normal around the base rate: what a calibrated sigmoid head (an MMoE) outputs
        logits = np.log(rate / (1 - rate)) + rng.normal(0.0, 1.0, n)
        preds[name] = (1.0 / (1.0 + np.exp(-logits))).tolist()
    ids = rng.choice(10**9, size=n, replace=False) + 10**9
    body = {
        "request_id": f"r-{rng.integers(2**62):x}",
        "session_id": f"s-{rng.integers(2**40):x}",
        "user_id": f"u-{rng.integers(10**7)}",
        "user_state": rng.normal(0.0, 1.0, state_dim).tolist(),
        "item_ids": [f"v{i}" for i in ids.tolist()],
        "predictions": preds,
        "top_n": top_n,
    }
    return orjson.dumps(body)


def make_bodies(
    n: int, tasks: list[str], state_dim: int, count: int = 32, seed: int = 0
) -> list[bytes]:
    rng = np.random.default_rng(seed + n)
    return [make_body(n, tasks, state_dim, rng) for _ in range(count)]
