"""Build the benchmark's model versions (one per K) with the trainer's own export path.

Run in a subprocess of the benchmark (``python -m loadtest.build_models OUT K [K ...]``) so that
torch is never imported by the load client or the scorer. Writes ``OUT/k<K>/`` model dirs, each
a published version of an untrained-but-fitted agent (the neutral fusion), state_dim 64 and the
default TSHConfig (MFC hidden sizes (32, 32)).
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


def build(out: Path, k: int, state_dim: int = STATE_DIM, seed: int = 0) -> Path:
    import torch

    from trainer.export import export_version
    from trainer.tsh import TSHAgent

    torch.set_num_threads(1)
    model_dir = out / f"k{k}"
    agent = TSHAgent(make_tasks(task_names(k)), state_dim, seed=seed)
    export_version(agent, model_dir, training={"source": "bench"})
    return model_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("ks", type=int, nargs="+")
    p.add_argument("--state-dim", type=int, default=STATE_DIM)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dirs = {k: str(build(args.out, k, args.state_dim)) for k in args.ks}
    print(json.dumps(dirs))


if __name__ == "__main__":
    main()
