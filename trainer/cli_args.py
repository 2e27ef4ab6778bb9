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


def canary_share(text: str) -> float | None:
    """``--publish`` (``consume``, ``rounds``): None for ``current``, the share for
    ``canary:SHARE``; anything else is a :class:`CLIError` naming the option."""
    if text == "current":
        return None
    kind, _, share = text.partition(":")
    try:
        value = float(share)
    except ValueError:
        value = -1.0
    if kind != "canary" or not 0.0 < value < 1.0:
        raise CLIError(f"--publish must be 'current' or 'canary:SHARE' with 0 < SHARE < 1: {text}")
    return value
