"""Where the trainer tests find the real KuaiRand-Pure features, and the marker for tests
that need them (skipped cleanly in a clone without ``../shared``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainer.sim.kuairand import ENV_DIR, find_data_dir

#: ``$XMTF_KUAIRAND_DIR``, else ``shared/data/kuairand-pure`` beside the checkout.
REAL_DIR: Path | None = find_data_dir(
    os.environ.get(ENV_DIR),
    Path(__file__).resolve().parents[3] / "shared" / "data" / "kuairand-pure",
)
needs_real = pytest.mark.skipif(
    REAL_DIR is None,
    reason="real KuaiRand-Pure data absent: set XMTF_KUAIRAND_DIR or place it in "
    "../shared/data/kuairand-pure beside the checkout",
)
