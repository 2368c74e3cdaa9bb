"""Atomic per-round checkpoints of a federated run, and finding the newest valid one.

One file per completed round, ``<checkpoint-dir>/<run-name>/round-000007.npz``: a numpy
``.npz`` (no pickle: it is loaded with ``allow_pickle=False``) holding

- ``global/<name>``: the global model's arrays after the round,
- ``state/<name>``: the strategy's state (FedAdam's ``m_t``/``v_t`` moments),
- ``meta``: UTF-8 JSON with the round, the weights' sha256, the RoundLogs so far, the registry
  version published for each round, the run-config hash and the Flower run ids that wrote it.

A file is written under a ``.tmp-`` name, fsynced, renamed over its final name and the folder
fsynced (``models.durable``), so a SIGKILL or a power cut leaves either the previous
checkpoint or the new one, never half of one. Readers ignore ``.tmp-`` files, still check every
candidate (zip CRCs, the weights' hash) and fall back to the next older file, and
:meth:`CheckpointStore.latest` clears stale temporaries.

Flower gives every ``flwr run`` a new run id, so "the same run" is the run config's
``run-name``: a restarted ``flwr run`` with the same ``run-name`` (and ``checkpoint-dir``)
continues from the newest checkpoint there.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord

from aggregator.rounds import RoundLog
from models.durable import fsync_dir, write_synced
from models.fl_config import RunConfig

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^round-(\d{6,})\.npz$")
# keys a resumed run may change without invalidating its checkpoints
RESUMABLE_CHANGES = frozenset({"num_server_rounds", "round_timeout_s", "server_device"})

NDArrays = dict[str, npt.NDArray[Any]]


class CheckpointError(Exception):
    """A checkpoint cannot be used for this run (another configuration, unreadable state)."""


def weights_sha256(arrays: Mapping[str, npt.NDArray[Any]]) -> str:
    """sha256 over the arrays' names, dtypes, shapes and bytes, in name order.

    Two models have the same hash exactly when every array is bit-for-bit equal.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.asarray(arrays[name], order="C")
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def to_record(arrays: Mapping[str, npt.NDArray[Any]]) -> ArrayRecord:
    """Flower ArrayRecord of numpy ``arrays``, in their order, bytes unchanged."""
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})


def config_hash(cfg: RunConfig) -> str:
    """Hash of the run config, minus the keys a resumed run may change."""
    values = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Checkpoint:
    """The state of a run after a completed round."""

    server_round: int
    arrays: NDArrays
    config_hash: str
    strategy_state: NDArrays = field(default_factory=dict)
    round_logs: dict[int, RoundLog] = field(default_factory=dict)
    registry_versions: dict[int, int] = field(default_factory=dict)
    flower_run_ids: list[str] = field(default_factory=list)

    @property
    def weights_sha256(self) -> str:
        """Hash of the global model (:func:`weights_sha256`)."""
        return weights_sha256(self.arrays)

    def to_bytes(self) -> bytes:
        """The ``.npz`` bytes of this checkpoint."""
        meta = {
            "format": FORMAT_VERSION,
            "server_round": self.server_round,
            "weights_sha256": self.weights_sha256,
            "config_hash": self.config_hash,
            "round_logs": [log.to_dict() for _, log in sorted(self.round_logs.items())],
            "registry_versions": {str(k): v for k, v in self.registry_versions.items()},
            "flower_run_ids": self.flower_run_ids,
        }
        members: dict[str, npt.NDArray[Any]] = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        }
        members.update({f"global/{k}": np.asarray(v) for k, v in self.arrays.items()})
        members.update({f"state/{k}": np.asarray(v) for k, v in self.strategy_state.items()})
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **members)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """Parse and verify :meth:`to_bytes` output; raises :class:`CheckpointError`."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                members = {name: npz[name] for name in npz.files}
            meta = json.loads(members.pop("meta").tobytes().decode())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"unreadable checkpoint: {exc}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format {meta.get('format')!r} is not supported")
        arrays = {k[len("global/") :]: v for k, v in members.items() if k.startswith("global/")}
        state = {k[len("state/") :]: v for k, v in members.items() if k.startswith("state/")}
        ckpt = cls(
            server_round=int(meta["server_round"]),
            arrays=arrays,
            config_hash=str(meta["config_hash"]),
            strategy_state=state,
            round_logs={
                int(raw["server_round"]): RoundLog.from_dict(raw) for raw in meta["round_logs"]
            },
            registry_versions={int(k): int(v) for k, v in meta["registry_versions"].items()},
            flower_run_ids=[str(r) for r in meta["flower_run_ids"]],
        )
        if ckpt.weights_sha256 != meta["weights_sha256"]:
            raise CheckpointError("checkpoint weights do not match their recorded sha256")
        return ckpt


class CheckpointStore:
    """The checkpoints of one named run, in one folder.

    Parameters
    ----------
    directory : Path
        ``<checkpoint-dir>/<run-name>``; created on the first save.
    keep : int
        Completed-round files kept (the newest ones); older ones are removed after each save.
    """

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    @staticmethod
    def for_run(cfg: RunConfig, flower_run_id: str) -> CheckpointStore:
        """The store of ``cfg.run_name``, or of this Flower run id when the run has no name."""
        name = cfg.run_name or f"run-{flower_run_id}"
        return CheckpointStore(Path(cfg.checkpoint_dir) / name)

    def path_for(self, server_round: int) -> Path:
        """Final file name of the checkpoint of ``server_round``."""
        return self.directory / f"round-{server_round:06d}.npz"

    def rounds(self) -> list[int]:
        """Rounds with a checkpoint file, ascending (unverified)."""
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, ckpt: Checkpoint) -> Path:
        """Write ``ckpt`` atomically (temp file, fsync, rename, fsync folder); prune old ones."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path_for(ckpt.server_round)
        tmp = self.directory / f"{TMP_PREFIX}{final.name}.{uuid.uuid4().hex}"
        try:
            write_synced(tmp, ckpt.to_bytes())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.directory)
        for old in self.rounds()[: -self.keep]:
            self.path_for(old).unlink(missing_ok=True)
        return final

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that reads and verifies, or ``None``; clears stale temporaries."""
        if not self.directory.is_dir():
            return None
        for stale in self.directory.glob(f"{TMP_PREFIX}*"):
            stale.unlink(missing_ok=True)
        for server_round in reversed(self.rounds()):
            path = self.path_for(server_round)
            try:
                ckpt = Checkpoint.from_bytes(path.read_bytes())
            except (OSError, CheckpointError) as exc:
                logger.warning("checkpoint %s skipped: %s", path, exc)
                continue
            if ckpt.server_round != server_round:
                logger.warning("checkpoint %s holds round %d; skipped", path, ckpt.server_round)
                continue
            return ckpt
        return None
