"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def _find_cwru() -> Path | None:
    candidates = [_REPO.parent / "shared" / "datasets" / "cwru-12k-drive-end"]
    if os.environ.get("FEDPM_CWRU_DIR"):
        candidates.insert(0, Path(os.environ["FEDPM_CWRU_DIR"]))
    return next((c for c in candidates if (c / "MANIFEST.tsv").is_file()), None)


@pytest.fixture(scope="session")
def cwru_path() -> Path | None:
    """The CWRU drive-end folder (``$FEDPM_CWRU_DIR`` or ``../shared/datasets``), or None."""
    return _find_cwru()


@pytest.fixture(scope="session")
def cwru_root(cwru_path: Path | None) -> Path:
    """The CWRU folder; skips the test when it is absent, but fails under CI.

    CI runs with ``CI=true`` and ``shared/`` beside the clone: there, a missing dataset would
    silently skip the real-data checks, so it is an error instead.
    """
    if cwru_path is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(
                "CWRU dataset missing under CI: expected ../shared/datasets beside the repo"
            )
        pytest.skip("CWRU dataset not found (set FEDPM_CWRU_DIR)")
    return cwru_path
