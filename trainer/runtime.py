"""Where and how the trainer computes: the device choice and torch's thread count."""

from __future__ import annotations

import contextlib

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``, ``cuda`` and
    ``cuda:N`` are checked and returned as they are. Raises ValueError otherwise."""
    import torch

    name = name.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but torch sees no CUDA device")
        index = name.partition(":")[2]
        if index and not (index.isdigit() and int(index) < torch.cuda.device_count()):
            raise ValueError(f"no CUDA device {index!r} ({torch.cuda.device_count()} visible)")
        return name
    raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N; got {name!r}")


def set_threads(n: int) -> None:
    """Use ``n`` intra-op threads (and one inter-op thread). The trainer's networks are small:
    on a machine shared with a scorer or other jobs, more threads than cores only contend,
    so the CLIs default to one per process."""
    import torch

    torch.set_num_threads(n)
    # only settable before the first parallel work; otherwise keep what is set
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
