"""``fedpm simulate-history``: write a simulated run-to-failure history as a dataset folder.

One ``.npz`` file per record (channel ``de``, float32 acceleration in g) and a ``MANIFEST.tsv``
with the CWRU manifest's columns (``file``, ``fault_type``, ``sample_rate_hz``, ``channels``,
``rpm_in_file``) plus a ``timestamp`` (ISO 8601, UTC), so ``fedpm health`` can be run on it.

Records are snapshots taken every ``--interval-hours`` (as in the IMS and PRONOSTIA run-to-failure
sets): severity follows `models.simulator.degradation_severity` from ``--onset`` to 1 at the last
record. With ``--variability plant`` the healthy machine also changes load now and then (shaft
harmonics, roughness and speed follow the load), its sensor noise drifts, and external knocks
hit a few records, so false alarms are possible.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from models.simulator import DegradationShape, FaultMode, MachineProfile

NAME = "simulate-history"
HELP = "write a simulated run-to-failure history (.npz records + MANIFEST.tsv with timestamps)"

MANIFEST_COLUMNS = ("file", "fault_type", "sample_rate_hz", "channels", "rpm_in_file", "timestamp")
CHANNEL = "de"  # the one channel written, as the CWRU drive-end accelerometer
_START = "2026-01-01T00:00:00+00:00"


@dataclass(frozen=True)
class PlantVariability:
    """How a healthy plant varies from record to record.

    Attributes
    ----------
    load_levels : tuple of float
        Load multipliers the machine runs at; the first one at the start.
    load_change_probability : float
        Per-record probability of switching to another load level.
    noise_drift : float
        Standard deviation of the log of the per-record sensor-noise multiplier.
    shock_probability : float
        Per-record probability of an external knock (a ringing transient).
    shock_amplitude_g : float
        Peak acceleration of a knock in g.
    """

    load_levels: tuple[float, ...] = (1.0,)
    load_change_probability: float = 0.0
    noise_drift: float = 0.0
    shock_probability: float = 0.0
    shock_amplitude_g: float = 0.0


VARIABILITY: dict[str, PlantVariability] = {
    "none": PlantVariability(),
    "plant": PlantVariability(
        load_levels=(1.0, 0.8, 1.25),
        load_change_probability=0.1,
        noise_drift=0.05,
        shock_probability=0.03,
        shock_amplitude_g=0.5,
    ),
}


@dataclass(frozen=True)
class History:
    """A simulated history: records (float32, g), true severity and load of each record."""

    records: list[npt.NDArray[np.float32]]
    severity: npt.NDArray[np.float64]
    load: npt.NDArray[np.float64]
    onset: int
    profile: MachineProfile


def _loaded(profile: MachineProfile, load: float, noise: float) -> MachineProfile:
    return dataclasses.replace(
        profile,
        shaft_harmonic_amplitudes=tuple(a * load for a in profile.shaft_harmonic_amplitudes),
        broadband_rms_g=profile.broadband_rms_g * load,
        load_scale=profile.load_scale * load,
        rpm=profile.rpm * (1.0 - 0.02 * (load - 1.0)),  # induction-motor slip grows with load
        noise_rms_g=profile.noise_rms_g * noise,
    )


def _knock(
    n: int, fs: float, amplitude: float, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    import numpy as np

    t = np.arange(n) / fs
    t0 = rng.uniform(0.0, t[-1])
    freq = rng.uniform(0.05, 0.35) * fs
    late = np.clip(t - t0, 0.0, None)
    return np.where(t >= t0, amplitude * np.exp(-late / 2e-3) * np.sin(2 * np.pi * freq * late), 0)


def simulate_history(
    n_records: int,
    onset: int,
    mode: FaultMode,
    seed: int,
    record_samples: int = 12_000,
    profile: MachineProfile | None = None,
    shape: DegradationShape = "exponential",
    variability: PlantVariability | None = None,
) -> History:
    """Simulate a run-to-failure history of independent snapshot records.

    Record ``i`` has severity ``degradation_severity(i, onset, n_records - 1, shape)`` (0 for
    ``mode="normal"``). Each record is an independent `models.simulator.simulate` call, with
    the load and noise of that moment when `variability` is given.

    Raises
    ------
    models.errors.SignalError
        On invalid arguments (see `models.simulator.run_to_failure`).
    """
    import numpy as np

    from models.errors import SignalError
    from models.simulator import MachineProfile, degradation_severity, simulate

    if not 0 <= onset <= n_records - 2:
        raise SignalError(f"onset must be in [0, {n_records - 2}] for {n_records} records")
    prof = profile if profile is not None else MachineProfile()
    var = variability if variability is not None else PlantVariability()
    rng = np.random.default_rng(seed)
    levels = var.load_levels
    level = 0
    records, severity, loads = [], [], []
    for i in range(n_records):
        if len(levels) > 1 and rng.uniform() < var.load_change_probability:
            level = int((level + rng.integers(1, len(levels))) % len(levels))
        noise = math.exp(var.noise_drift * float(rng.standard_normal()))
        sev = 0.0 if mode == "normal" else degradation_severity(i, onset, n_records - 1, shape)
        rec_rng = np.random.default_rng(rng.integers(0, 2**63 - 1))
        x = simulate(_loaded(prof, levels[level], noise), mode, sev, record_samples, rec_rng)
        if var.shock_probability and rng.uniform() < var.shock_probability:
            knock = _knock(record_samples, prof.sample_rate_hz, var.shock_amplitude_g, rng)
            x = (x + knock).astype(np.float32)
        records.append(x)
        severity.append(sev)
        loads.append(levels[level])
    return History(records, np.array(severity), np.array(loads), onset, prof)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate-history`` options to `parser`."""
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    parser.add_argument("--records", type=int, default=60, help="number of records (default 60)")
    parser.add_argument("--onset", type=int, default=30, help="first damaged record (default 30)")
    parser.add_argument(
        "--mode",
        default="outer_race",
        choices=("normal", "inner_race", "outer_race", "ball", "cage"),
        help="fault mode; 'normal' stays healthy throughout (default outer_race)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--record-samples", type=int, default=12_000, help="samples per record at 12 kHz"
    )
    parser.add_argument(
        "--interval-hours", type=float, default=1.0, help="time between records (default 1 h)"
    )
    parser.add_argument(
        "--shape", default="exponential", choices=("exponential", "linear"), help="damage growth"
    )
    parser.add_argument(
        "--variability",
        default="plant",
        choices=sorted(VARIABILITY),
        help="'plant': load changes, noise drift and knocks while healthy (default); 'none'",
    )


def run(args: argparse.Namespace) -> int:
    """Write the history; return 0, or 2 on invalid arguments."""
    import sys
    from datetime import datetime, timedelta

    import numpy as np

    from models.errors import SignalError

    if args.records < 2 or not math.isfinite(args.interval_hours) or args.interval_hours <= 0:
        sys.stderr.write("error: --records must be >= 2 and --interval-hours positive\n")
        return 2
    onset = min(args.onset, args.records - 2)
    try:
        history = simulate_history(
            args.records,
            onset,
            args.mode,
            args.seed,
            args.record_samples,
            shape=args.shape,
            variability=VARIABILITY[args.variability],
        )
    except SignalError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = datetime.fromisoformat(_START)
    fs = history.profile.sample_rate_hz
    rows = ["\t".join(MANIFEST_COLUMNS)]
    for i, (x, sev, load) in enumerate(
        zip(history.records, history.severity, history.load, strict=True)
    ):
        name = f"record_{i:04d}.npz"
        np.savez(out / name, de=x)
        stamp = (start + timedelta(hours=i * args.interval_hours)).isoformat()
        rpm = history.profile.rpm * (1.0 - 0.02 * (load - 1.0))
        fault = "normal" if sev == 0.0 else args.mode
        rows.append("\t".join([name, fault, f"{fs:g}", CHANNEL, f"{rpm:.1f}", stamp]))
    (out / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    sys.stdout.write(
        f"wrote {args.records} records to {out} ({args.mode}, onset at record {onset}, "
        f"failure at record {args.records - 1})\n"
    )
    return 0
