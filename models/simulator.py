"""Physics-based rolling-element bearing vibration simulator (accelerometer output in g).

Signal model after McFadden & Smith (JSV 96(1), 1984) with the random slip of Antoni & Randall
(J. Vib. Acoust. 125(3), 2003):

* shaft harmonics ``1x, 2x, 3x, ...`` with random phases; the speed wanders slowly by
  ``rpm_jitter`` (a 0.2-1 Hz sinusoid integrated into the shaft angle);
* a local defect strikes once per defect period (BPFI, BPFO, ``2 * BSF`` or FTF from the bearing
  geometry), each period jittered by ``slip``; every strike rings the structural resonance (a
  damped 2-pole resonator, ``scipy.signal.lfilter``);
* strike amplitudes grow with severity and load, scatter by 10 % and are modulated as the
  defect passes the load zone (inner race at the shaft rate, ball at the cage rate; the outer
  race is stationary);
* weak white excitation of the resonance (roughness, the healthy broadband part) and white
  sensor noise.

`BearingSignalStream` carries shaft phase, strike timing and resonator state across chunks and
draws each random process from its own generator, so the signal does not depend on how it is
chunked; `simulate` is the one-shot form.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from scipy import signal

from models.bearing import BEARINGS, BearingGeometry, DefectFrequencies, defect_frequencies
from models.errors import SignalError

__all__ = [
    "FAULT_MODES",
    "BearingSignalStream",
    "DegradationShape",
    "FaultMode",
    "MachineProfile",
    "degradation_severity",
    "fault_frequency_hz",
    "run_to_failure",
    "simulate",
]

FaultMode = Literal["normal", "inner_race", "outer_race", "ball", "cage"]
FAULT_MODES: tuple[FaultMode, ...] = get_args(FaultMode)
DegradationShape = Literal["linear", "exponential"]

_DEFECT_FIELD: Mapping[str, str] = {
    "inner_race": "bpfi_hz",
    "outer_race": "bpfo_hz",
    "ball": "ball_hz",
    "cage": "ftf_hz",
}
# Strike amplitude per mode relative to `impulse_amplitude_g` (transmission path, contact).
_MODE_GAIN: Mapping[str, float] = {"inner_race": 0.8, "outer_race": 1.0, "ball": 0.6, "cage": 0.5}
# Load-zone modulation depth: inner race at the shaft rate, ball at the cage rate.
_MODULATION_DEPTH: Mapping[str, float] = {"inner_race": 0.8, "ball": 0.6}
_AMPLITUDE_SCATTER = 0.1
_EXPONENTIAL_RATE = 4.0


def _real(name: str, value: float, low: float, high: float = math.inf) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and low <= value <= high):
        raise SignalError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class MachineProfile:
    """A machine with one monitored bearing and an accelerometer on its housing.

    Parameters
    ----------
    rpm : float
        Nominal shaft speed in rev/min.
    bearing : BearingGeometry
        Monitored bearing, the CWRU drive-end 6205 by default.
    sample_rate_hz : float
        Accelerometer sampling frequency in Hz.
    resonance_hz : float
        Structural resonance excited by defect strikes in Hz, below ``sample_rate_hz / 2``.
    resonance_damping : float
        Damping ratio of the resonance, in (0, 1).
    shaft_harmonic_amplitudes : tuple of float
        Amplitudes in g of the 1x, 2x, 3x, ... shaft harmonics.
    noise_rms_g : float
        RMS of the white sensor noise in g.
    broadband_rms_g : float
        RMS in g of the resonance response to random roughness (healthy broadband part).
    impulse_amplitude_g : float
        Peak resonance response in g (about) to one strike at severity 1 and unit load scale.
    load_scale : float
        Load-dependent multiplier of the strike amplitudes (1 at the reference load).
    rpm_jitter : float
        Peak fractional shaft-speed wander, in [0, 0.1].
    slip : float
        Standard deviation of the fractional jitter of each defect period, in [0, 0.1].
    """

    rpm: float = 1797.0
    bearing: BearingGeometry = BEARINGS["6205"]
    sample_rate_hz: float = 12_000.0
    resonance_hz: float = 3_000.0
    resonance_damping: float = 0.05
    shaft_harmonic_amplitudes: tuple[float, ...] = (0.06, 0.03, 0.015)
    noise_rms_g: float = 0.04
    broadband_rms_g: float = 0.01
    impulse_amplitude_g: float = 2.0
    load_scale: float = 1.0
    rpm_jitter: float = 0.002
    slip: float = 0.015

    def __post_init__(self) -> None:
        if not isinstance(self.bearing, BearingGeometry):
            raise SignalError(f"bearing must be a BearingGeometry, got {self.bearing!r}")
        _real("rpm", self.rpm, 1e-6)
        _real("sample_rate_hz", self.sample_rate_hz, 1e-6)
        _real("resonance_hz", self.resonance_hz, 1e-6, self.sample_rate_hz / 2 * (1 - 1e-9))
        _real("resonance_damping", self.resonance_damping, 1e-6, 1 - 1e-6)
        if not isinstance(self.shaft_harmonic_amplitudes, tuple | list):
            raise SignalError("shaft_harmonic_amplitudes must be a tuple of amplitudes in g")
        for i, amplitude in enumerate(self.shaft_harmonic_amplitudes):
            _real(f"shaft_harmonic_amplitudes[{i}]", amplitude, 0.0)
        for name in ("noise_rms_g", "broadband_rms_g", "impulse_amplitude_g", "load_scale"):
            _real(name, getattr(self, name), 0.0)
        _real("rpm_jitter", self.rpm_jitter, 0.0, 0.1)
        _real("slip", self.slip, 0.0, 0.1)
        object.__setattr__(
            self, "shaft_harmonic_amplitudes", tuple(map(float, self.shaft_harmonic_amplitudes))
        )

    @property
    def frequencies(self) -> DefectFrequencies:
        """Kinematic defect frequencies of the bearing at the nominal speed, in Hz."""
        return defect_frequencies(self.bearing, self.rpm)


def fault_frequency_hz(profile: MachineProfile, mode: FaultMode) -> float:
    """Return the nominal strike frequency in Hz of a fault mode (BPFI, BPFO, 2*BSF or FTF).

    Raises
    ------
    SignalError
        For ``"normal"`` or an unknown mode.
    """
    if mode not in _DEFECT_FIELD:
        raise SignalError(f"mode must be one of {sorted(_DEFECT_FIELD)}, got {mode!r}")
    return float(getattr(profile.frequencies, _DEFECT_FIELD[mode]))


def _integer(name: str, value: int, low: int, high: float = math.inf) -> None:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (ok and low <= value <= high):
        raise SignalError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def _check_request(n_samples: int, mode: str, severity: float) -> None:
    _integer("n_samples", n_samples, 1)
    if mode not in FAULT_MODES:
        raise SignalError(f"mode must be one of {FAULT_MODES}, got {mode!r}")
    _real("severity", severity, 0.0, 1.0)


class BearingSignalStream:
    """Endless, continuous bearing vibration signal delivered in chunks.

    Shaft phase, defect-strike timing and the ringing of the resonance carry over from one
    `next` call to the following one; the fault mode and severity may change between calls.

    Parameters
    ----------
    profile : MachineProfile
        Machine and sensor description.
    rng : numpy.random.Generator
        Source of randomness; the same seed and call sequence give the same signal.
    t0_s : float, optional
        Time of the first sample in s; shifts the shaft phase (for `simulate` chunks).

    Examples
    --------
    >>> import numpy as np
    >>> stream = BearingSignalStream(MachineProfile(), np.random.default_rng(0))
    >>> frame = stream.next(1_200, "outer_race", 0.5)
    >>> frame.dtype, frame.shape, stream.time_s
    (dtype('float32'), (1200,), 0.1)
    """

    def __init__(
        self, profile: MachineProfile, rng: np.random.Generator, t0_s: float = 0.0
    ) -> None:
        if not isinstance(profile, MachineProfile):
            raise SignalError(f"profile must be a MachineProfile, got {profile!r}")
        if not isinstance(rng, np.random.Generator):
            raise SignalError(f"rng must be a numpy.random.Generator, got {rng!r}")
        _real("t0_s", t0_s, -math.inf)
        self._profile, self._t0 = profile, float(t0_s)
        self._emitted = 0
        n_harmonics = len(profile.shaft_harmonic_amplitudes)
        self._harmonic_phase = rng.uniform(0.0, 2 * np.pi, n_harmonics)
        self._wander_hz = float(rng.uniform(0.2, 1.0))
        self._wander_phase = float(rng.uniform(0.0, 2 * np.pi))
        self._zone_phase = float(rng.uniform(0.0, 1.0))  # load-zone position, in cycles
        # Damped resonator h[n] = r**n sin(theta n): poles r exp(+-i theta).
        wn = 2 * np.pi * profile.resonance_hz / profile.sample_rate_hz
        zeta = profile.resonance_damping
        r, theta = math.exp(-zeta * wn), wn * math.sqrt(1 - zeta * zeta)
        self._b = np.array([0.0, r * math.sin(theta)])
        self._a = np.array([1.0, -2 * r * math.cos(theta), r * r])
        energy = 0.5 / (1 - r * r) - 0.5 * (1 / (1 - r * r * np.exp(2j * theta))).real
        self._roughness_std = profile.broadband_rms_g / math.sqrt(energy)
        self._zi = np.zeros(2)
        # One generator per random process keeps the output independent of chunk sizes.
        seeds = rng.integers(0, 2**63 - 1, size=3)
        self._noise_rng, self._roughness_rng, self._strike_rng = map(np.random.default_rng, seeds)
        self._mode: str = "normal"
        self._pending = np.empty((0, 2))  # future strikes: (shaft cycle, amplitude scatter)

    @property
    def profile(self) -> MachineProfile:
        """The machine profile this stream simulates."""
        return self._profile

    @property
    def time_s(self) -> float:
        """Time in s of the next sample to be generated."""
        return self._t0 + self._emitted / self._profile.sample_rate_hz

    def _shaft_cycles(self, t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Shaft angle in revolutions at times `t`: speed ``fr (1 + jitter sin(wander))``."""
        fr = self._profile.rpm / 60.0
        w = 2 * np.pi * self._wander_hz
        wander = (math.cos(self._wander_phase) - np.cos(w * t + self._wander_phase)) / w
        return fr * t + fr * self._profile.rpm_jitter * wander

    def _strikes(
        self, cycles: npt.NDArray[np.float64], mode: str, severity: float
    ) -> npt.NDArray[np.float64]:
        """Excitation with one weighted unit impulse per defect strike in this chunk."""
        p, rng = self._profile, self._strike_rng
        freqs = p.frequencies
        interval = freqs.shaft_hz / float(getattr(freqs, _DEFECT_FIELD[mode]))  # cycles
        if mode != self._mode or self._pending.size == 0:
            self._pending = np.array([[cycles[0] + rng.uniform(0.0, interval), 1.0]])
        pending, last = self._pending, cycles[-1]
        while pending[-1, 0] <= last:
            draws = rng.standard_normal((int((last - pending[-1, 0]) / interval) + 2, 2))
            steps = interval * np.clip(1 + p.slip * draws[:, 0], 0.5, 1.5)
            scatter = np.clip(1 + _AMPLITUDE_SCATTER * draws[:, 1], 0.0, None)
            new = np.column_stack([pending[-1, 0] + np.cumsum(steps), scatter])
            pending = np.concatenate([pending, new])
        due, self._pending = pending[pending[:, 0] <= last], pending[pending[:, 0] > last]
        gain = p.impulse_amplitude_g * p.load_scale * severity * _MODE_GAIN[mode]
        amplitude = gain * due[:, 1]
        depth = _MODULATION_DEPTH.get(mode, 0.0)
        if depth:
            rate = 1.0 if mode == "inner_race" else freqs.ftf_hz / freqs.shaft_hz
            zone = 0.5 * (1 + np.cos(2 * np.pi * (rate * due[:, 0] + self._zone_phase)))
            amplitude = amplitude * (1 - depth + depth * zone)
        excitation = np.zeros(cycles.size)
        np.add.at(excitation, np.searchsorted(cycles, due[:, 0]), amplitude)
        return excitation

    def next(
        self, n_samples: int, mode: FaultMode = "normal", severity: float = 0.0
    ) -> npt.NDArray[np.float32]:
        """Generate the next `n_samples` samples of acceleration in g.

        Parameters
        ----------
        n_samples : int
            Number of samples, positive.
        mode : FaultMode, optional
            Bearing condition, one of `FAULT_MODES`; ``"normal"`` by default.
        severity : float, optional
            Fault severity in [0, 1]; strike amplitudes grow linearly with it.

        Returns
        -------
        numpy.ndarray
            1-D ``float32`` acceleration in g.

        Raises
        ------
        SignalError
            On a non-positive `n_samples`, unknown `mode` or `severity` outside [0, 1].
        """
        _check_request(n_samples, mode, severity)
        p = self._profile
        # Integer sample numbers first: chunked and one-shot times agree to the last bit.
        t = self._t0 + (self._emitted + np.arange(n_samples)) / p.sample_rate_hz
        cycles = self._shaft_cycles(t)
        orders = np.arange(1, len(p.shaft_harmonic_amplitudes) + 1)
        angles = 2 * np.pi * orders[:, None] * cycles + self._harmonic_phase[:, None]
        out = np.asarray(p.shaft_harmonic_amplitudes) @ np.sin(angles)
        excitation = self._roughness_std * self._roughness_rng.standard_normal(n_samples)
        if mode != "normal":
            excitation += self._strikes(cycles, mode, float(severity))
        self._mode = mode
        ringing, self._zi = signal.lfilter(self._b, self._a, excitation, zi=self._zi)
        out += ringing + p.noise_rms_g * self._noise_rng.standard_normal(n_samples)
        self._emitted += int(n_samples)
        return out.astype(np.float32)


def simulate(
    profile: MachineProfile,
    mode: FaultMode,
    severity: float,
    n_samples: int,
    rng: np.random.Generator,
    t0_s: float = 0.0,
) -> npt.NDArray[np.float32]:
    """Simulate one record of bearing vibration: acceleration in g, 1-D ``float32``.

    Same as ``BearingSignalStream(profile, rng, t0_s).next(n_samples, mode, severity)``, see
    there for the parameters. With the same seed, records at ``t0_s = k * n_samples / fs``
    share the shaft phase, so the harmonics run on across records (strike timing and noise
    do not); use one `BearingSignalStream` for fully continuous chunks.

    Raises
    ------
    SignalError
        On invalid arguments.
    """
    return BearingSignalStream(profile, rng, t0_s).next(n_samples, mode, severity)


def degradation_severity(
    t_s: float, onset_s: float, failure_s: float, shape: DegradationShape = "exponential"
) -> float:
    """Return the fault severity in [0, 1] at time `t_s` of a run to failure.

    Severity is 0 up to `onset_s`, 1 from `failure_s` on, and in between grows with
    ``u = (t - onset) / (failure - onset)`` as ``u`` (linear) or
    ``expm1(4 u) / expm1(4)`` (exponential: slow start, fast end, as spall growth).

    Raises
    ------
    SignalError
        On non-finite times, ``onset_s >= failure_s`` or an unknown shape.

    Examples
    --------
    >>> degradation_severity(5.0, onset_s=0.0, failure_s=10.0, shape="linear")
    0.5
    """
    _real("t_s", t_s, -math.inf)
    _real("onset_s", onset_s, -math.inf)
    _real("failure_s", failure_s, -math.inf)
    if onset_s >= failure_s:
        raise SignalError(f"onset_s ({onset_s}) must be before failure_s ({failure_s})")
    if shape not in get_args(DegradationShape):
        raise SignalError(f"shape must be one of {get_args(DegradationShape)}, got {shape!r}")
    u = min(max((t_s - onset_s) / (failure_s - onset_s), 0.0), 1.0)
    if shape == "linear":
        return float(u)
    return math.expm1(_EXPONENTIAL_RATE * u) / math.expm1(_EXPONENTIAL_RATE)


def run_to_failure(
    profile: MachineProfile,
    mode: FaultMode,
    n_records: int,
    record_samples: int,
    onset_record: int,
    rng: np.random.Generator,
    shape: DegradationShape = "exponential",
) -> list[npt.NDArray[np.float32]]:
    """Simulate a time-ordered series of records from healthy to failed.

    Record ``i`` has severity ``degradation_severity(i, onset_record, n_records - 1, shape)``:
    0 up to `onset_record`, 1 for the last record. Records are consecutive chunks of one
    `BearingSignalStream`.

    Returns
    -------
    list of numpy.ndarray
        `n_records` 1-D ``float32`` records of `record_samples` samples, in g.

    Raises
    ------
    SignalError
        If ``n_records < 2``, `onset_record` is outside ``[0, n_records - 2]`` or any other
        argument is invalid.
    """
    _integer("n_records", n_records, 2)
    _integer("onset_record", onset_record, 0, n_records - 2)
    _check_request(record_samples, mode, 0.0)
    stream = BearingSignalStream(profile, rng)
    last = n_records - 1
    return [
        stream.next(record_samples, mode, degradation_severity(i, onset_record, last, shape))
        for i in range(n_records)
    ]
