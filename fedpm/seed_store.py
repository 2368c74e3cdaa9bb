"""Fill an edge store with labelled simulated windows directly (no MQTT), for tests and benches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.store import LocalStore
from models.simulator import FAULT_MODES, BearingSignalStream, FaultMode, MachineProfile
from models.windows import Window, windows_from_record

T0_NS = 1_700_000_000_000_000_000


def seed_store(
    path: Path,
    profile: MachineProfile,
    modes: tuple[str, ...],
    *,
    windows_per_mode: int,
    window_samples: int = 2048,
    severity: float = 0.6,
    seed: int = 0,
) -> int:
    """Write one asset per mode, its windows and an operator label covering them.

    Returns the number of windows written.
    """
    written = 0
    step_ns = round(window_samples * 1e9 / profile.sample_rate_hz)
    with LocalStore(path) as store:
        for k, mode in enumerate(modes):
            if mode not in FAULT_MODES:
                raise ValueError(f"unknown fault mode {mode!r}")
            fault: FaultMode = mode
            stream = BearingSignalStream(profile, np.random.default_rng(seed + k))
            record = stream.next(
                windows_per_mode * window_samples, fault, 0.0 if mode == "normal" else severity
            )
            t0 = T0_NS + k * 10**12
            windows = [
                Window(t0 + i * step_ns, profile.sample_rate_hz, w)
                for i, w in enumerate(windows_from_record(record, window_samples))
            ]
            store.add_windows(f"asset-{k}", "de", 0, windows)
            store.add_label(f"asset-{k}", mode, t0, t0 + len(windows) * step_ns)
            written += len(windows)
    return written
