"""The CLIs' shared argument helpers: the user-facing error, ``XMTF_`` env defaults, checked
number types (``xmtf-train`` in :mod:`trainer.cli`, its study commands in
:mod:`trainer.study.commands`)."""

from __future__ import annotations

import argparse
import os
from typing import Any


class CLIError(Exception):
    """A one-line, user-facing failure."""


def env_default(option: str, default: Any = None) -> Any:
    return os.environ.get("XMTF_" + option.upper().replace("-", "_"), default)


def add_option(p: argparse.ArgumentParser, option: str, default: Any = None, **kw: Any) -> None:
    p.add_argument(f"--{option}", default=env_default(option, default), **kw)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def seconds_arg(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value
