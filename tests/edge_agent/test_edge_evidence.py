"""Evidence of a window: condition indicators, ISO zone and the envelope defect verdict."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.errors import ConfigError
from edge_agent.evidence import ENVELOPE_EVERY, EvidenceExtractor, window_features, zone_of
from edge_agent.settings import AssetConfig
from models.bearing import get_bearing
from models.dsp.defects import defect_frequencies_hz
from models.dsp.severity import STANDARD_GRAVITY
from models.simulator import BearingSignalStream, FaultMode, MachineProfile

FS = 12_000.0
RPM = 1797.0
WINDOW = 2048
WINDOW_NS = round(WINDOW * 1e9 / FS)
PUMP = AssetConfig(bearing="6205", rpm=RPM, machine_group=2, mounting="rigid")


def stream_windows(mode: FaultMode, severity: float, count: int, seed: int = 0) -> list[np.ndarray]:
    stream = BearingSignalStream(MachineProfile(rpm=RPM), np.random.default_rng(seed))
    return [stream.next(WINDOW, mode, severity) for _ in range(count)]


def feed(
    extractor: EvidenceExtractor, windows: list[np.ndarray], *, flagged: bool, asset: str = "pump-1"
) -> None:
    for k, w in enumerate(windows):
        start = k * WINDOW_NS
        extractor.observe(
            asset, (asset, "acc-1", 0), w, FS, start, start + WINDOW_NS, flagged=flagged
        )


def test_features_of_a_sine_have_the_known_rms_and_iso_zone() -> None:
    # Prepare: 50 Hz, 4 mm/s peak velocity = 2.83 mm/s RMS (zone C, group 2 rigid)
    t = np.arange(12_000) / FS
    accel_g = 4.0e-3 * 2 * np.pi * 50.0 * np.cos(2 * np.pi * 50.0 * t) / STANDARD_GRAVITY

    # Execute
    features = window_features(accel_g.astype(np.float32), FS)

    # Assert
    assert features["rms_g"] == pytest.approx(np.max(accel_g) / np.sqrt(2), rel=1e-4)
    assert features["kurtosis"] == pytest.approx(1.5, abs=1e-3)
    assert features["crest_factor"] == pytest.approx(np.sqrt(2), rel=1e-3)
    assert features["velocity_rms_mm_s"] == pytest.approx(2.828, abs=0.01)
    assert zone_of(features["velocity_rms_mm_s"], 2, "rigid") == "C"


@pytest.mark.parametrize(
    ("group", "mounting", "zone"),
    [
        (1, "rigid", "B"),
        (3, "rigid", "B"),
        (2, "rigid", "C"),
        (4, "rigid", "C"),
        (2, "flexible", "B"),
    ],
)
def test_groups_3_and_4_use_the_boundaries_of_groups_1_and_2(
    group: int, mounting: str, zone: str
) -> None:
    # Execute / Assert
    assert zone_of(3.0, group, mounting) == zone


def test_slow_sampling_has_no_velocity() -> None:
    # Execute
    features = window_features(np.ones(64, dtype=np.float32) + np.arange(64) % 2, 100.0)

    # Assert
    assert "velocity_rms_mm_s" not in features
    assert set(features) == {"rms_g", "kurtosis", "crest_factor"}


def test_outer_race_defect_is_named_bpfo_at_its_frequency() -> None:
    # Prepare
    extractor = EvidenceExtractor({"pump-1": PUMP})
    bpfo = defect_frequencies_hz(get_bearing("6205"), RPM)["outer_race"]

    # Execute
    feed(extractor, stream_windows("outer_race", 0.3, 6), flagged=True)
    evidence = extractor.evidence("pump-1", window_features(np.zeros(WINDOW, np.float32), FS))

    # Assert
    assert extractor.envelopes_run >= 1
    assert evidence.defect == "outer_race"
    assert evidence.defect_frequency == "BPFO"
    assert evidence.defect_hz == pytest.approx(bpfo, rel=0.03)
    assert evidence.defect_score_db is not None
    assert evidence.defect_score_db >= 12.0


def test_inner_race_defect_is_named_bpfi() -> None:
    # Prepare
    extractor = EvidenceExtractor({"pump-1": PUMP})

    # Execute
    feed(extractor, stream_windows("inner_race", 0.3, 6, seed=3), flagged=True)
    evidence = extractor.evidence("pump-1", {"rms_g": 1.0, "kurtosis": 3.0, "crest_factor": 3.0})

    # Assert
    assert (evidence.defect, evidence.defect_frequency) == ("inner_race", "BPFI")


def test_healthy_bearing_shows_no_defect() -> None:
    # Prepare
    extractor = EvidenceExtractor({"pump-1": PUMP})

    # Execute
    feed(extractor, stream_windows("normal", 0.0, 6, seed=1), flagged=True)
    evidence = extractor.evidence("pump-1", {"rms_g": 0.1, "kurtosis": 3.0, "crest_factor": 3.0})

    # Assert
    assert extractor.envelopes_run >= 1
    assert evidence.defect == "none"
    assert evidence.defect_frequency is None
    assert evidence.defect_hz is None


def test_unflagged_windows_get_an_envelope_only_every_nth_window() -> None:
    # Prepare
    extractor = EvidenceExtractor({"pump-1": PUMP})
    windows = stream_windows("normal", 0.0, 4 * ENVELOPE_EVERY)

    # Execute
    feed(extractor, windows, flagged=False)

    # Assert
    assert 1 <= extractor.envelopes_run <= 4


def test_flagged_windows_get_more_envelopes_than_unflagged_ones() -> None:
    # Prepare
    flagged, unflagged = EvidenceExtractor({"pump-1": PUMP}), EvidenceExtractor({"pump-1": PUMP})
    windows = stream_windows("normal", 0.0, 32)

    # Execute
    feed(flagged, windows, flagged=True)
    feed(unflagged, windows, flagged=False)

    # Assert
    assert flagged.envelopes_run > unflagged.envelopes_run


def test_a_gap_restarts_the_signal_history() -> None:
    # Prepare: two windows, a gap, two more: never 0.5 s of contiguous signal
    extractor = EvidenceExtractor({"pump-1": PUMP})
    windows = stream_windows("outer_race", 0.3, 4)

    # Execute
    for k, w in enumerate(windows):
        start = k * WINDOW_NS + (10 * WINDOW_NS if k >= 2 else 0)
        extractor.observe(
            "pump-1", ("pump-1", "acc-1", 0), w, FS, start, start + WINDOW_NS, flagged=True
        )

    # Assert
    assert extractor.envelopes_run == 0


def test_asset_without_bearing_gets_no_envelope() -> None:
    # Prepare
    extractor = EvidenceExtractor({"fan-1": AssetConfig(machine_group=1, mounting="flexible")})

    # Execute
    feed(extractor, stream_windows("outer_race", 0.3, 6), flagged=True, asset="fan-1")
    evidence = extractor.evidence(
        "fan-1", {"rms_g": 0.1, "kurtosis": 3.0, "crest_factor": 3.0, "velocity_rms_mm_s": 4.0}
    )

    # Assert
    assert extractor.envelopes_run == 0
    assert evidence.defect is None
    assert evidence.iso_zone == "B"  # group 1, flexible: 3.5 <= 4.0 < 7.1


def test_unknown_bearing_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"assets\.pump-1\.bearing: unknown bearing"):
        EvidenceExtractor({"pump-1": AssetConfig(bearing="no-such-bearing", rpm=RPM)})


def test_undefined_indicators_are_left_out_not_made_up() -> None:
    # Prepare: a constant window has no kurtosis (zero variance)
    extractor = EvidenceExtractor({})

    # Execute
    features = window_features(np.full(WINDOW, 0.5, np.float32), FS)
    evidence = extractor.evidence("pump-9", features)

    # Assert
    assert "kurtosis" not in features
    assert evidence.kurtosis is None
    assert evidence.rms_g == pytest.approx(0.5)
    assert evidence.iso_zone == "A"  # no vibration above 10 Hz
