"""Where the benchmarks find the real CWRU recordings."""

from __future__ import annotations

import os
from pathlib import Path


def cwru_dir() -> Path:
    """``$FEDPM_CWRU_DIR``, else ``../shared/datasets/cwru-12k-drive-end`` beside the checkout."""
    env = os.environ.get("FEDPM_CWRU_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cwru-12k-drive-end"
