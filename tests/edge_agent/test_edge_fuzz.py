"""Fuzzing: 10,000 random and mutated messages among good frames, in-process and via Mosquitto.

Every bad message must be refused, counted by reason and dead-lettered within bounds; the good
frames in between must all be stored, sample for sample; the agent must stay up.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import AgentProcess, MqttProbe, cwru_or_synthetic, make_frames, wait_until

from edge_agent.ingest import Ingestor
from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker
from models.frame import FRAME_ERROR_REASONS, HEADER_SIZE, Frame, encode_binary, encode_json
from models.frame import frame_topic as _frame_topic

SITE = "plant-a"
WINDOW = 2048
FRAME = 512
N_GOOD = 400  # 100 windows
N_BAD = 10_000
MAX_PAYLOAD = 64 * 1024
DEAD_LETTERS = 500
RATES = (1000.0, 50_000.0)
TOPIC = _frame_topic(SITE, "pump-1", "acc-1")
LABELS = f"fedpm/v1/{SITE}/pump-1/labels"
DATA_START = HEADER_SIZE + len("pump-1") + len("acc-1") + len("g")  # already 4-byte aligned
KNOWN_REASONS = FRAME_ERROR_REASONS | {
    "payload_too_large",
    "unknown_sensor",
    "topic_mismatch",
    "bad_topic",
    "label_json",
    "label_schema",
    "label_too_large",
    "label_topic_mismatch",
}

Message = tuple[str, bytes]


def crc_fixed(raw: bytearray) -> bytes:
    raw[-4:] = zlib.crc32(bytes(raw[:-4])).to_bytes(4, "little")
    return bytes(raw)


class Mutator:
    """Bad messages of many kinds, round robin, from a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        x = cwru_or_synthetic(8 * FRAME, "inner_race_007_105.npz")
        self.frames = make_frames(x, FRAME, first_seq=10_000)  # never a good frame's seq
        self.kinds: list[Callable[[], Message]] = [
            self.flipped,
            self.truncated,
            self.extended,
            self.wrong_version,
            self.wrong_length_field,
            self.non_finite,
            self.absurd_rate,
            self.absurd_rate_field,
            self.huge,
            self.unknown_sensor,
            self.random_bytes,
            self.json_mutated,
            self.topic_mismatch,
            self.label_garbage,
        ]

    def message(self, k: int) -> Message:
        return self.kinds[k % len(self.kinds)]()

    def _binary(self) -> bytearray:
        return bytearray(encode_binary(self.frames[int(self.rng.integers(len(self.frames)))]))

    def flipped(self) -> Message:
        raw = self._binary()
        for i in self.rng.choice(len(raw), size=int(self.rng.integers(1, 5)), replace=False):
            raw[i] ^= int(self.rng.integers(1, 256))
        return TOPIC, bytes(raw)

    def truncated(self) -> Message:
        raw = self._binary()
        return TOPIC, bytes(raw[: int(self.rng.integers(0, len(raw)))])

    def extended(self) -> Message:
        return TOPIC, bytes(self._binary()) + self.rng.bytes(int(self.rng.integers(1, 64)))

    def wrong_version(self) -> Message:
        raw = self._binary()
        raw[4] = int(self.rng.choice([0, 2, 3, 255]))
        return TOPIC, crc_fixed(raw)

    def wrong_length_field(self) -> Message:
        raw = self._binary()
        struct.pack_into("<I", raw, 12, int(self.rng.integers(0, 1 << 32)))  # n_samples
        return TOPIC, crc_fixed(raw)

    def non_finite(self) -> Message:
        raw = self._binary()
        i = DATA_START + 4 * int(self.rng.integers(FRAME))
        bad = self.rng.choice([np.nan, np.inf, -np.inf])
        raw[i : i + 4] = np.array([bad], dtype="<f4").tobytes()
        return TOPIC, crc_fixed(raw)

    def absurd_rate(self) -> Message:
        f = self.frames[0]
        fs = float(self.rng.choice([0.5, 10.0, 999.0, 50_001.0, 1e6]))
        frame = Frame(f.asset_id, f.sensor_id, f.seq, f.timestamp_ns, fs, "g", f.samples)
        encode = encode_json if self.rng.integers(2) else encode_binary
        return TOPIC, encode(frame)

    def absurd_rate_field(self) -> Message:
        raw = self._binary()
        struct.pack_into("<d", raw, 16, float(self.rng.choice([0.0, -12e3, np.nan, 1e300])))
        return TOPIC, crc_fixed(raw)

    def huge(self) -> Message:
        return TOPIC, b"FPMF\x01" + bytes(MAX_PAYLOAD + int(self.rng.integers(1, 4096)))

    def unknown_sensor(self) -> Message:
        asset, sensor = ("pump-1", "acc-7") if self.rng.integers(2) else ("pump-9", "acc-1")
        frame = make_frames(self.frames[0].samples[0], FRAME, asset=asset, sensor=sensor)[0]
        return _frame_topic(SITE, asset, sensor), encode_binary(frame)

    def random_bytes(self) -> Message:
        raw = self.rng.bytes(int(self.rng.integers(0, 300)))
        if self.rng.integers(4) == 0:
            raw = b"FPMF" + raw
        return TOPIC, raw

    def json_mutated(self) -> Message:
        doc = json.loads(encode_json(self.frames[int(self.rng.integers(len(self.frames)))]))
        op = int(self.rng.integers(6))
        key = str(self.rng.choice(sorted(doc)))
        if op == 0:
            del doc[key]
        elif op == 1:
            wrong: list[object] = ["x", None, [], {}, True]
            doc[key] = wrong[int(self.rng.integers(len(wrong)))]
        elif op == 2:
            doc["v"] = int(self.rng.integers(2, 100))
        elif op == 3:
            doc["data"][int(self.rng.integers(FRAME))] = float("nan")
        elif op == 4:
            doc["extra"] = 1
        else:
            text = json.dumps(doc).encode()
            return TOPIC, text[: int(self.rng.integers(1, len(text)))]
        return TOPIC, json.dumps(doc).encode()

    def topic_mismatch(self) -> Message:
        frame = make_frames(self.frames[0].samples[0], FRAME, sensor="acc-2")[0]
        return TOPIC, encode_binary(frame)

    def label_garbage(self) -> Message:
        if self.rng.integers(2):
            return LABELS, self.rng.bytes(int(self.rng.integers(1, 200)))
        event = {"v": 1, "asset_id": "pump-1", "label": "ball", "start_ns": 5, "end_ns": 1}
        return LABELS, json.dumps(event).encode()


def fuzz_messages(seed: int = 7) -> tuple[np.ndarray, list[Message]]:
    """``N_BAD`` bad messages with ``N_GOOD`` good frames (in order) scattered among them."""
    x = cwru_or_synthetic(N_GOOD * FRAME)
    good = [(TOPIC, encode_binary(f)) for f in make_frames(x, FRAME)]
    mutator = Mutator(seed)
    messages = [mutator.message(k) for k in range(N_BAD)]
    slots = sorted(mutator.rng.choice(N_BAD + N_GOOD, size=N_GOOD, replace=False))
    out: list[Message] = []
    bad_iter, good_iter = iter(messages), iter(good)
    for i in range(N_BAD + N_GOOD):
        out.append(next(good_iter) if slots and slots[0] == i else next(bad_iter))
        if slots and slots[0] == i:
            slots.pop(0)
    return x, out


def fuzz_in_process(path: Path, messages: list[Message]) -> LocalStore:
    """The transport-free twin of the agent: same limits, same group commits."""
    store = LocalStore(path, dead_letter_max_rows=DEAD_LETTERS)
    ingestor = Ingestor(
        store,
        SITE,
        WINDOW,
        sensors=["pump-1/acc-1", "pump-1/acc-2"],
        max_payload_bytes=MAX_PAYLOAD,
        sample_rate_range_hz=RATES,
    )
    for i in range(0, len(messages), 128):
        with store.batch():
            for topic, payload in messages[i : i + 128]:
                ingestor.handle(topic, payload)
    return store


def assert_survived(store: LocalStore, x: np.ndarray) -> dict[str, int]:
    rejects = store.rejects()
    rejects.pop("duplicate", None)  # QoS 1 may redeliver a good frame: counted, harmless
    assert sum(rejects.values()) == N_BAD
    assert set(rejects) <= KNOWN_REASONS
    for reason in (
        "bad_checksum",
        "truncated",
        "length_mismatch",
        "unsupported_version",
        "non_finite",
        "bad_sample_rate",
        "payload_too_large",
        "unknown_sensor",
        "bad_magic",
        "bad_json",
        "topic_mismatch",
        "label_json",
    ):
        assert rejects.get(reason, 0) > 0, reason
    assert store.count_dead_letters() == DEAD_LETTERS
    assert store.counters()["frames"] == N_GOOD
    stored = store.unscored_windows(0, limit=1000)
    assert len(stored) == N_GOOD * FRAME // WINDOW
    np.testing.assert_array_equal(np.concatenate([w.samples for w in stored]), x)
    return rejects


def test_ingestor_survives_ten_thousand_bad_messages(tmp_path: Path) -> None:
    # Prepare
    x, messages = fuzz_messages()

    # Execute
    store = fuzz_in_process(tmp_path / "store.sqlite", messages)

    # Assert
    rejects = assert_survived(store, x)
    assert store.rejects().get("duplicate", 0) == 0
    assert Counter(d.reason for d in store.dead_letters(DEAD_LETTERS)).keys() <= rejects.keys()
    store.close()


@pytest.mark.integration
def test_agent_survives_ten_thousand_bad_messages_over_mqtt(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # Prepare
    store_path = tmp_path / "store.sqlite"
    config = tmp_path / "edge.toml"
    config.write_text(
        f'sensors = ["pump-1/acc-1", "pump-1/acc-2"]\n'
        f"max_payload_bytes = {MAX_PAYLOAD}\n"
        f"min_sample_rate_hz = {RATES[0]}\nmax_sample_rate_hz = {RATES[1]}\n"
        f"dead_letter_max_rows = {DEAD_LETTERS}\n"
    )
    x, messages = fuzz_messages()
    probe = mqtt_probe()
    agent = start_agent(
        "--config", str(config),
        "--site", SITE,
        "--mqtt-port", str(broker.port),
        "--store", str(store_path),
        "--window-samples", str(WINDOW),
    )  # fmt: skip
    probe.subscribe(f"fedpm/v1/{SITE}/agent/status")
    wait_until(
        lambda: any(m.payload == b"online" for m in probe.messages), 30, f"online\n{agent.log()}"
    )

    # Execute
    for topic, payload in messages[:-1]:
        probe.publish(topic, payload, wait=False)
    probe.publish(*messages[-1])  # waits until the last one reached the broker

    # Assert: the agent took everything, stays up, and agrees with the in-process oracle
    def settled() -> bool:
        if not store_path.exists():
            return False
        with LocalStore(store_path, readonly=True) as s:
            refused = sum(n for r, n in s.rejects().items() if r != "duplicate")
            return s.counters().get("frames") == N_GOOD and refused >= N_BAD

    try:
        wait_until(settled, 120, "every message processed")
    except AssertionError:
        raise AssertionError(agent.log()) from None
    assert agent.proc.poll() is None, agent.log()
    with LocalStore(store_path, readonly=True) as store:
        rejects = assert_survived(store, x)
    with fuzz_in_process(tmp_path / "oracle.sqlite", messages) as oracle:
        expected = oracle.rejects()
    assert rejects == expected
