"""Bad input through the Ingestor: counted by reason, kept as bounded dead letters, never fatal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import cwru_or_synthetic, make_frames, with_nan_sample

from edge_agent.ingest import Ingestor
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore
from models.frame import encode_binary, encode_json, frame_topic

SITE = "plant-a"
WINDOW = 2048
TOPIC = frame_topic(SITE, "pump-1", "acc-1")


def limited(store: LocalStore, **kwargs: object) -> Ingestor:
    params: dict[str, object] = {
        "sensors": ["pump-1/acc-1"],
        "max_payload_bytes": 64 * 1024,
        "sample_rate_range_hz": (1000.0, 50_000.0),
        **kwargs,
    }
    return Ingestor(store, SITE, WINDOW, **params)  # type: ignore[arg-type]


def test_each_kind_of_bad_input_is_counted_and_dead_lettered(store: LocalStore) -> None:
    # Prepare
    frame = make_frames(cwru_or_synthetic(512), 512)[0]
    good = encode_binary(frame)
    slow = encode_binary(make_frames(np.zeros(512, np.float32), 512, fs=10.0)[0])
    wrong_version = bytearray(good)
    wrong_version[4] = 9
    bad = {
        "empty": (TOPIC, b""),
        "bad_magic": (TOPIC, b"\x00garbage"),
        "unsupported_version": (TOPIC, bytes(wrong_version)),
        "truncated": (TOPIC, good[:-10]),
        "length_mismatch": (TOPIC, good + b"\x00" * 8),
        "non_finite": (TOPIC, with_nan_sample(frame)),
        "bad_sample_rate": (TOPIC, slow),
        "payload_too_large": (TOPIC, b"\x00" * (64 * 1024 + 1)),
        "unknown_sensor": (frame_topic(SITE, "pump-1", "acc-9"), good),
        "bad_json": (TOPIC, b'{"v": 1'),
        "bad_topic": ("fedpm/v1/other-site/pump-1/acc-1/frames", good),
    }
    ingestor = limited(store)

    # Execute
    for topic, payload in bad.values():
        ingestor.handle(topic, payload)

    # Assert
    assert store.rejects() == dict.fromkeys(bad, 1)
    letters = {d.reason: d for d in store.dead_letters(100)}
    assert set(letters) == set(bad)
    for reason, (topic, payload) in bad.items():
        assert letters[reason].topic == topic
        assert letters[reason].payload == payload[:4096]
        assert letters[reason].payload_bytes == len(payload)
        assert letters[reason].detail
    assert store.count_windows() == 0


def test_duplicates_are_counted_but_not_dead_lettered(store: LocalStore) -> None:
    # Prepare
    frames = [encode_binary(f) for f in make_frames(cwru_or_synthetic(2 * 512), 512)]
    ingestor = limited(store)

    # Execute
    for payload in (frames[0], frames[0], frames[1], frames[1]):
        ingestor.handle(TOPIC, payload)

    # Assert
    assert store.rejects() == {"duplicate": 2}
    assert store.count_dead_letters() == 0
    assert store.counters()["frames"] == 2


def test_dead_letters_stay_bounded_with_the_newest_kept(tmp_path: Path) -> None:
    # Prepare
    store = LocalStore(tmp_path / "s.sqlite", dead_letter_max_rows=10)
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute
    for i in range(100):
        ingestor.handle(TOPIC, b"junk-%03d" % i)

    # Assert
    assert store.rejects() == {"bad_magic": 100}
    assert store.count_dead_letters() == 10
    assert [d.payload for d in store.dead_letters(3)] == [b"junk-099", b"junk-098", b"junk-097"]
    store.close()


def test_an_oversized_payload_is_refused_before_decoding(
    store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a perfectly valid frame that is simply too big, among good ones
    big = encode_binary(make_frames(cwru_or_synthetic(20_000), 20_000)[0])
    frames = [encode_binary(f) for f in make_frames(cwru_or_synthetic(4 * 512), 512)]
    ingestor = limited(store, max_payload_bytes=len(big) - 1)

    # Execute
    with caplog.at_level(logging.WARNING, logger="edge_agent.ingest"):
        ingestor.handle(TOPIC, frames[0])
        for _ in range(20):
            ingestor.handle(TOPIC, big)
        for payload in frames[1:]:
            ingestor.handle(TOPIC, payload)

    # Assert
    assert store.rejects() == {"payload_too_large": 20}
    assert store.count_windows() == 1
    assert len([r for r in caplog.records if "payload_too_large" in r.getMessage()]) == 1
    (letter, *_) = store.dead_letters(1)
    assert len(letter.payload) == 4096
    assert letter.payload_bytes == len(big)


def test_ingestor_from_settings_applies_the_configured_limits(tmp_path: Path) -> None:
    # Prepare
    settings = AgentSettings(
        site_id=SITE,
        store_path=tmp_path / "s.sqlite",
        window_samples=WINDOW,
        sensors=["pump-1/acc-1"],
        min_sample_rate_hz=1000.0,
        max_sample_rate_hz=20_000.0,
        dead_letter_max_rows=5,
        dead_letter_max_payload_bytes=16,
    )
    fast = make_frames(np.zeros(512, np.float32), 512, fs=25_600.0)[0]
    good = make_frames(cwru_or_synthetic(4 * 512), 512)

    # Execute
    with LocalStore.from_settings(settings) as store:
        ingestor = Ingestor.from_settings(store, settings)
        ingestor.handle(TOPIC, encode_json(fast))
        ingestor.handle(frame_topic(SITE, "pump-2", "acc-1"), encode_binary(good[0]))
        for _ in range(10):
            ingestor.handle(TOPIC, b"x" * 100)
        for f in good:
            ingestor.handle(TOPIC, encode_binary(f))
        rejects, letters, windows = store.rejects(), store.dead_letters(100), store.count_windows()

    # Assert
    assert rejects == {"bad_sample_rate": 1, "unknown_sensor": 1, "bad_magic": 10}
    assert len(letters) == 5
    assert all(len(d.payload) <= 16 for d in letters)
    assert windows == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_payload_bytes": 0},
        {"sample_rate_range_hz": (5000.0, 5000.0)},
        {"sample_rate_range_hz": (-1.0, 10.0)},
    ],
)
def test_ingestor_refuses_unusable_limits(store: LocalStore, kwargs: dict[str, object]) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=r"max_payload_bytes|sample_rate_range_hz"):
        limited(store, **kwargs)


def test_label_messages_are_dead_lettered_too(store: LocalStore) -> None:
    # Prepare
    ingestor = limited(store)
    event = {"v": 1, "asset_id": "pump-2", "label": "ball", "start_ns": 1, "end_ns": 2}

    # Execute
    ingestor.handle(f"fedpm/v1/{SITE}/pump-1/labels", json.dumps(event).encode())

    # Assert
    (letter,) = store.dead_letters()
    assert letter.reason == "label_topic_mismatch"
    assert json.loads(letter.payload) == event
