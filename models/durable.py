"""Crash-safe file writes: data and directory entries forced to disk before they count.

A file written with :func:`write_synced` into a staging name and then renamed (``os.replace``)
over its final name, followed by :func:`fsync_dir` on the parent, is either wholly there or
not there after a power cut. The registry, the agents' model cache and their small state
files use this pair.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new, renamed or removed names) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (created or truncated) and flush it to disk."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
