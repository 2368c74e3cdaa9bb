"""Ingestor without a broker: validation, sequence tracking, windowing, labels, rejects."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import FS_HZ, T0_NS, cwru_or_synthetic, make_frames, with_nan_sample

from edge_agent.ingest import Ingestor
from edge_agent.store import LocalStore
from models.frame import G_MS2, Frame, encode_binary, encode_json, frame_topic

SITE = "plant-a"
WINDOW = 2048
TOPIC = frame_topic(SITE, "pump-1", "acc-1")
LABELS = f"fedpm/v1/{SITE}/pump-1/labels"


def ingest_all(ingestor: Ingestor, payloads: list[bytes], topic: str = TOPIC) -> None:
    for payload in payloads:
        ingestor.handle(topic, payload)


def test_frames_become_windows_in_g(store: LocalStore) -> None:
    # Prepare: 40 frames of 512 samples = 10 windows of 2048
    x = cwru_or_synthetic(40 * 512)
    frames = make_frames(x, 512)
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    ingest_all(ingestor, [encode_binary(f) for f in frames])

    # Assert
    stored = store.unscored_windows(0, limit=100)
    assert len(stored) == 10
    assert stored[0].start_ns == T0_NS
    np.testing.assert_array_equal(np.concatenate([w.samples for w in stored]), x)
    assert store.counters() == {"frames": 40}
    assert store.rejects() == {}


def test_json_frames_in_ms2_are_converted_to_g(store: LocalStore) -> None:
    # Prepare
    x = np.full(WINDOW, 0.5, dtype=np.float32)
    frames = make_frames(x * G_MS2, 1024, units="m/s^2")
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    ingest_all(ingestor, [encode_json(f) for f in frames])

    # Assert
    (window,) = store.unscored_windows(0)
    np.testing.assert_allclose(window.samples, 0.5, rtol=1e-6)


def test_multichannel_frames_give_windows_per_channel(store: LocalStore) -> None:
    # Prepare
    x = np.stack([np.zeros(WINDOW), np.ones(WINDOW), 2 * np.ones(WINDOW)]).astype(np.float32)
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    ingest_all(ingestor, [encode_binary(f) for f in make_frames(x, 1024)])

    # Assert
    stored = store.unscored_windows(0)
    assert sorted((w.channel, float(w.samples[0])) for w in stored) == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
    ]


def test_duplicates_are_dropped_and_gaps_reset_the_window(store: LocalStore) -> None:
    # Prepare: frames 0..15 of 512 samples; deliver 0..3, 3 again, then skip 4 and 5
    frames = make_frames(cwru_or_synthetic(16 * 512), 512)
    order = [0, 1, 2, 3, 3, *range(6, 16)]
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    ingest_all(ingestor, [encode_binary(frames[i]) for i in order])

    # Assert: window 1 = frames 0..3; after the gap, frames 6..9 and 10..13 (14, 15 partial)
    starts = [w.start_ns for w in store.unscored_windows(0)]
    assert starts == [frames[0].timestamp_ns, frames[6].timestamp_ns, frames[10].timestamp_ns]
    assert store.rejects() == {"duplicate": 1}
    assert store.counters() == {"frames": 14, "seq_gaps": 1, "frames_missing": 2}


def test_out_of_order_frame_is_rejected_and_restarted_sensor_accepted(
    store: LocalStore,
) -> None:
    # Prepare
    frames = make_frames(cwru_or_synthetic(8 * 512), 512)
    later = make_frames(cwru_or_synthetic(4 * 512), 512, t0_ns=T0_NS + 10**10)  # seq 0.. again
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    ingest_all(ingestor, [encode_binary(frames[i]) for i in (0, 1, 2, 3, 1)])
    ingest_all(ingestor, [encode_binary(f) for f in later])

    # Assert
    assert store.rejects() == {"out_of_order": 1}
    assert store.counters()["seq_restarts"] == 1
    assert store.count_windows() == 2


def test_redelivery_after_a_restart_is_recognised(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "s.sqlite"
    frames = make_frames(cwru_or_synthetic(8 * 512), 512)
    with LocalStore(path) as store:
        ingest_all(Ingestor(store, SITE, WINDOW), [encode_binary(f) for f in frames[:4]])

    # Execute: a new process (new Ingestor) gets frame 3 again (QoS 1), then 4..7
    with LocalStore(path) as store:
        ingestor = Ingestor(store, SITE, WINDOW)
        ingest_all(ingestor, [encode_binary(f) for f in frames[3:]])
        rejects, windows = store.rejects(), store.count_windows()

    # Assert
    assert rejects == {"duplicate": 1}
    assert windows == 2


NAN_JSON = (
    b'{"v": 1, "asset_id": "pump-1", "sensor_id": "acc-1", "seq": 0, "ts_ns": 0, '
    b'"fs": 12000, "units": "g", "data": [1.0, NaN]}'
)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage bytes\xff", "bad_magic"),
        (b"FPMF\x01" + bytes(10), "truncated"),
        (b'{"v": 1, "asset_id": "pump-1"', "bad_json"),
        (NAN_JSON, "non_finite"),
    ],
)
def test_malformed_frames_are_counted_by_reason(
    store: LocalStore, payload: bytes, reason: str
) -> None:
    # Prepare
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    ingestor.handle(TOPIC, payload)

    # Assert
    assert store.rejects() == {reason: 1}
    assert store.count_windows() == 0


def test_bad_frames_do_not_disturb_good_ones(
    store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    frames = make_frames(cwru_or_synthetic(8 * 512), 512)
    good = [encode_binary(f) for f in frames]
    truncated = good[2][:-100]
    nan_frame = with_nan_sample(frames[3])
    other_sensor = make_frames(cwru_or_synthetic(512), 512, sensor="acc-9")[0]
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    with caplog.at_level(logging.WARNING, logger="edge_agent.ingest"):
        ingest_all(ingestor, good[:2])
        for _ in range(50):
            ingestor.handle(TOPIC, b"garbage")
        ingestor.handle(TOPIC, truncated)
        ingestor.handle(TOPIC, nan_frame)
        ingestor.handle(TOPIC, encode_binary(other_sensor))  # payload says acc-9
        ingestor.handle(f"fedpm/v1/{SITE}/pump-1/acc-1/frames/extra", good[2])
        ingestor.handle("fedpm/v1/other-site/pump-1/acc-1/frames", good[2])
        ingest_all(ingestor, good[2:])

    # Assert
    assert store.count_windows() == 2
    assert store.rejects() == {
        "bad_magic": 50,
        "truncated": 1,
        "non_finite": 1,
        "topic_mismatch": 1,
        "bad_topic": 2,
    }
    garbage_logs = [r for r in caplog.records if "bad_magic" in r.getMessage()]
    assert len(garbage_logs) == 1  # bounded-rate logging


def test_label_events(store: LocalStore) -> None:
    # Prepare
    event = {"v": 1, "asset_id": "pump-1", "label": "ball", "start_ns": 10, "end_ns": 20}
    sensor_event = {**event, "sensor_id": "acc-2", "source": "cmms"}
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    ingestor.handle(LABELS, json.dumps(event).encode())
    ingestor.handle(LABELS, json.dumps(event).encode())  # QoS 1 redelivery
    ingestor.handle(LABELS, json.dumps(sensor_event).encode())

    # Assert
    assert store.count_labels() == 2
    assert store.rejects() == {}


EVENT = {"v": 1, "asset_id": "pump-1", "label": "ball", "start_ns": 1, "end_ns": 2}


def as_json(**changes: object) -> bytes:
    event = {**EVENT, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "label_json"),
        (as_json(start_ns=None, end_ns=None), "label_schema"),
        (as_json(v=2), "label_schema"),
        (as_json(start_ns=5), "label_schema"),
        (as_json(start_ns="1"), "label_schema"),
        (as_json(extra="field"), "label_schema"),
        (as_json(asset_id="pump-2"), "label_topic_mismatch"),
        (b"x" * 5000, "label_too_large"),
    ],
)
def test_malformed_label_events_are_counted(store: LocalStore, payload: bytes, reason: str) -> None:
    # Prepare
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    ingestor.handle(LABELS, payload)

    # Assert
    assert store.rejects() == {reason: 1}
    assert store.count_labels() == 0


def test_a_bug_on_one_message_does_not_stop_ingestion(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    frames = make_frames(cwru_or_synthetic(4 * 512), 512)
    ingestor = Ingestor(store, SITE, WINDOW)
    calls = {"n": 0}
    real = ingestor._track_sequence

    def flaky(frame: Frame) -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ZeroDivisionError("boom")
        return real(frame)

    monkeypatch.setattr(ingestor, "_track_sequence", flaky)

    # Execute
    ingest_all(ingestor, [encode_binary(f) for f in frames])

    # Assert
    assert store.rejects() == {"internal_error": 1}
    assert store.counters() == {"frames": 3}


def test_frames_at_another_rate_are_windowed_at_their_rate(store: LocalStore) -> None:
    # Prepare
    fs = 25_600.0
    frames = make_frames(np.zeros(4096, np.float32), 1024, fs=fs)
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    ingest_all(ingestor, [encode_binary(f) for f in frames])

    # Assert
    stored = store.unscored_windows(0)
    assert [w.sample_rate_hz for w in stored] == [fs, fs]
    assert stored[0].end_ns - stored[0].start_ns == round(WINDOW * 1e9 / fs)
    assert fs != FS_HZ


def test_a_restart_loses_no_sample_of_acknowledged_frames(tmp_path: Path) -> None:
    # Prepare: 10 frames of 512 samples = 2.5 windows; the agent stops after frame 5
    # (1 window stored, half a window pending) and a new agent takes over on the same store
    x = cwru_or_synthetic(10 * 512)
    frames = [encode_binary(f) for f in make_frames(x, 512)]
    path = tmp_path / "store.sqlite"
    with LocalStore(path) as store:
        ingest_all(Ingestor(store, SITE, WINDOW), frames[:6])

    # Execute
    with LocalStore(path) as store:
        ingest_all(Ingestor(store, SITE, WINDOW), frames[6:])
        stored = store.unscored_windows(0, limit=10)

    # Assert: the second window spans the restart and holds exactly the published samples
    assert len(stored) == 2
    assert stored[1].start_ns == T0_NS + round(2048 * 1e9 / FS_HZ)
    np.testing.assert_array_equal(np.concatenate([w.samples for w in stored]), x[: 2 * 2048])
