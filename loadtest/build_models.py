"""Build the benchmark's model versions (one per K) with the trainer's own export path.

Run in a subprocess of the benchmark (``python -m loadtest.build_models OUT K [K ...]``) so that
torch is never imported by the load client or the scorer. Writes ``OUT/k<K>/`` model dirs, each
a published version of an untrained-but-fitted agent (the neutral fusion), state_dim 64 and the
default TSHConfig (MFC hidden sizes (32, 32)). ``--seeds 0,1`` writes one version per seed
(named ``seed<S>``, different weights, the same tasks) with ``CURRENT`` on the first: what an
experiment between two versions needs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from shared.tasks import DEFAULT_TASK_NAMES, make_tasks

STATE_DIM = 64


def task_names(k: int) -> list[str]:
    """The default six for K = 6 (the paper's tasks), else ``t0 .. t{K-1}``."""
    return list(DEFAULT_TASK_NAMES) if k == len(DEFAULT_TASK_NAMES) else [f"t{i}" for i in range(k)]


def build(
    out: Path, k: int, state_dim: int = STATE_DIM, seed: int = 0, version: str | None = None
) -> Path:
    import torch

    from trainer.export import export_version
    from trainer.tsh import TSHAgent

    torch.set_num_threads(1)
    model_dir = out / f"k{k}"
    agent = TSHAgent(make_tasks(task_names(k)), state_dim, seed=seed)
    export_version(agent, model_dir, training={"source": "bench"}, version=version)
    return model_dir


def build_seeds(out: Path, k: int, seeds: list[int], state_dim: int = STATE_DIM) -> Path:
    """One version ``seed<S>`` per seed in ``out/k<K>``, ``CURRENT`` on the first."""
    from shared.manifest import write_current

    for seed in seeds:
        model_dir = build(out, k, state_dim, seed, version=f"seed{seed}")
    write_current(model_dir, f"seed{seeds[0]}")
    return model_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("ks", type=int, nargs="+")
    p.add_argument("--state-dim", type=int, default=STATE_DIM)
    p.add_argument("--seeds", default=None, help="comma-separated: one version seed<S> each")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
        dirs = {k: str(build_seeds(args.out, k, seeds, args.state_dim)) for k in args.ks}
    else:
        dirs = {k: str(build(args.out, k, args.state_dim)) for k in args.ks}
    print(json.dumps(dirs))


if __name__ == "__main__":
    main()
