"""Per-window evidence for health messages: condition indicators, ISO zone, envelope verdict.

Two tiers, sized for the node's CPU (measured in ``docs/edge-alarms.md``):

*Every window* (cheap, ``O(n log n)``, 1-3 ms for 2,048 samples): RMS (g), kurtosis,
crest factor, velocity RMS and the ISO 10816-3 / 20816-3 zone for the asset's ``machine_group``
and ``mounting`` (`models.dsp.condition`, shared with the serving API).

*Some windows* (the envelope analysis, `models.dsp.diagnosis.diagnose`: kurtogram, band-pass,
Hilbert envelope, line search; 10-35 ms on 0.5 s of signal): only for assets with ``bearing``
and ``rpm`` configured, over the latest ``max(0.5 s, 10 shaft turns)`` of contiguous windows of
the channel (one 2,048-sample window at 12 kHz is too short to resolve the shaft harmonics at
1,800 rpm), and only when the window was flagged (faulty or anomalous) and the channel's last
envelope is at least :data:`ENVELOPE_EVERY_FLAGGED` windows old, or every
:data:`ENVELOPE_EVERY` windows otherwise. So a healthy channel spends about 1 % of a window's
duration on it (at most 1.3 % as measured), an alarmed one at most 5 %.

Pure analytics plus a little per-channel memory (the recent samples); no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final, cast

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ConfigError
from edge_agent.messages import DefectSymbol, Evidence
from edge_agent.settings import AssetConfig
from models.bearing import BearingGeometry, defect_frequencies, get_bearing
from models.dsp.condition import DEFECT_SYMBOLS, window_features, zone_of
from models.dsp.diagnosis import Verdict, diagnose
from models.errors import SignalError

ENVELOPE_EVERY: Final = 16
"""An unflagged channel gets an envelope analysis every this many windows."""
ENVELOPE_EVERY_FLAGGED: Final = 4
"""A flagged window gets one if the channel's last is at least this many windows old."""
ENVELOPE_MIN_S: Final = 0.5
ENVELOPE_MIN_TURNS: Final = 10.0

SYMBOLS: Final = cast(dict[str, DefectSymbol], DEFECT_SYMBOLS)

Samples = npt.NDArray[np.float32]
ChannelKey = tuple[str, str, int]


@dataclass(frozen=True)
class Envelope:
    """Result of one envelope analysis (see :class:`edge_agent.messages.Evidence`)."""

    defect: Verdict
    defect_frequency: DefectSymbol | None
    defect_hz: float | None
    defect_score_db: float | None
    window_start_ns: int
    scores_db: dict[str, float]


class _Channel:
    """Recent contiguous samples of one channel and its envelope schedule."""

    def __init__(self) -> None:
        self.chunks: deque[Samples] = deque()
        self.n = 0
        self.fs = 0.0
        self.end_ns = -1
        self.since_envelope = ENVELOPE_EVERY  # the first due window gets one

    def push(self, samples: Samples, fs: float, start_ns: int, end_ns: int, keep: int) -> None:
        contiguous = fs == self.fs and abs(start_ns - self.end_ns) <= 1e9 / fs
        if not contiguous:
            self.chunks.clear()
            self.n = 0
        self.chunks.append(samples)
        self.n += samples.size
        self.fs, self.end_ns = fs, end_ns
        while self.chunks and self.n - self.chunks[0].size >= keep:
            self.n -= self.chunks.popleft().size
        self.since_envelope += 1

    def latest(self, n: int) -> Samples | None:
        if self.n < n:
            return None
        return np.concatenate(list(self.chunks))[-n:]


class EvidenceExtractor:
    """Evidence of each window of the assets in ``assets`` (others get the cheap part only).

    Parameters
    ----------
    assets
        The agent's ``[assets.<id>]`` configuration.
    envelope_every, envelope_every_flagged
        Envelope schedule, see the module docstring.

    Raises
    ------
    ConfigError
        An asset's ``bearing`` is neither a catalogue name nor a valid geometry.
    """

    def __init__(
        self,
        assets: dict[str, AssetConfig],
        *,
        envelope_every: int = ENVELOPE_EVERY,
        envelope_every_flagged: int = ENVELOPE_EVERY_FLAGGED,
    ) -> None:
        if envelope_every < 1 or envelope_every_flagged < 1:
            raise ValueError("envelope schedules must be >= 1 window")
        self._assets = assets
        self._bearings: dict[str, BearingGeometry] = {}
        for asset, cfg in assets.items():
            if cfg.bearing is not None and cfg.rpm is not None:
                try:
                    self._bearings[asset] = get_bearing(cfg.bearing)
                except SignalError as exc:
                    raise ConfigError(f"assets.{asset}.bearing: {exc}") from exc
        self._every = envelope_every
        self._every_flagged = envelope_every_flagged
        self._channels: dict[ChannelKey, _Channel] = {}
        self._envelopes: dict[str, Envelope] = {}
        self.envelopes_run = 0

    def envelope_samples(self, asset_id: str, fs: float) -> int:
        """Samples the envelope analysis of ``asset_id`` needs at ``fs`` (0: none configured)."""
        cfg = self._assets.get(asset_id)
        if asset_id not in self._bearings or cfg is None or cfg.rpm is None:
            return 0
        shaft_hz = defect_frequencies(self._bearings[asset_id], cfg.rpm).shaft_hz
        return math.ceil(max(ENVELOPE_MIN_S * fs, ENVELOPE_MIN_TURNS * fs / shaft_hz))

    def observe(
        self,
        asset_id: str,
        channel: ChannelKey,
        samples: Samples,
        fs: float,
        start_ns: int,
        end_ns: int,
        *,
        flagged: bool,
    ) -> Envelope | None:
        """Remember a window's samples; run the envelope analysis if it is due.

        Returns the new envelope result, or ``None`` when none ran (not configured, not due,
        or not enough contiguous signal yet). The asset's latest result is kept for
        :meth:`evidence`.
        """
        need = self.envelope_samples(asset_id, fs)
        if need == 0:
            return None
        state = self._channels.setdefault(channel, _Channel())
        state.push(samples, fs, start_ns, end_ns, need)
        due = state.since_envelope >= (self._every_flagged if flagged else self._every)
        if not due:
            return None
        signal = state.latest(need)
        if signal is None:
            return None
        cfg = self._assets[asset_id]
        assert cfg.rpm is not None  # envelope_samples checked it
        try:
            diagnosis = diagnose(signal, fs, cfg.rpm, self._bearings[asset_id])
        except SignalError:
            return None
        state.since_envelope = 0
        self.envelopes_run += 1
        best = max(diagnosis.evidence, key=lambda row: row.score_db)
        called = diagnosis.verdict != "none"
        result = Envelope(
            defect=diagnosis.verdict,
            defect_frequency=SYMBOLS[best.defect] if called else None,
            defect_hz=float(best.found_hz) if called else None,
            defect_score_db=float(best.score_db) if called else None,
            window_start_ns=end_ns - round(signal.size * 1e9 / fs),
            scores_db={row.defect: float(row.score_db) for row in diagnosis.evidence},
        )
        self._envelopes[asset_id] = result
        return result

    def evidence(self, asset_id: str, features: dict[str, float]) -> Evidence:
        """The health-message evidence: ``features`` plus the asset's latest envelope."""
        cfg = self._assets.get(asset_id, AssetConfig())
        velocity = features.get("velocity_rms_mm_s")
        zone = None if velocity is None else zone_of(velocity, cfg.machine_group, cfg.mounting)
        env = self._envelopes.get(asset_id)
        return Evidence(
            rms_g=features.get("rms_g"),
            kurtosis=features.get("kurtosis"),
            crest_factor=features.get("crest_factor"),
            velocity_rms_mm_s=velocity,
            iso_zone=zone,
            defect=None if env is None else env.defect,
            defect_frequency=None if env is None else env.defect_frequency,
            defect_hz=None if env is None else env.defect_hz,
            defect_score_db=None if env is None else env.defect_score_db,
            envelope_window_start_ns=None if env is None else env.window_start_ns,
        )


__all__ = [
    "ENVELOPE_EVERY",
    "ENVELOPE_EVERY_FLAGGED",
    "SYMBOLS",
    "Envelope",
    "EvidenceExtractor",
    "window_features",
    "zone_of",
]
