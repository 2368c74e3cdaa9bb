"""Crash-safe file writes: data and directory entries forced to disk before they count.

A file written with :func:`write_synced` into a staging name and then renamed (``os.replace``)
over its final name, followed by :func:`fsync_dir` on the parent, is either wholly there or
not there after a power cut. The registry, the agents' model cache and their small state
files use this pair.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt


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


def replace_npz(
    path: Path, arrays: Mapping[str, npt.NDArray[np.generic]], stale: Sequence[str] = ()
) -> None:
    """Write ``arrays`` as an ``.npz`` at ``path`` atomically (staged, synced, renamed).

    Files beside it matching a glob of ``stale`` (other runs' files, staging files a crash left
    behind) are removed after the rename; ``path`` itself never is.
    """
    import io

    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_synced(staging, buffer.getvalue())
    os.replace(staging, path)
    for pattern in stale:
        for old in path.parent.glob(pattern):
            if old != path:
                old.unlink(missing_ok=True)
    fsync_dir(path.parent)
