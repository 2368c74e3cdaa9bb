"""Group commit of frames: deferred partial windows and positions, per-frame budget refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edge_helpers import FS_HZ, T0_NS, make_frames

from edge_agent.errors import StoreFullError
from edge_agent.ingest import Ingestor
from edge_agent.store import LocalStore, SensorState
from models.frame import encode_binary, frame_topic
from models.windows import Window

SITE = "plant-a"
WINDOW = 2048
ASSETS = ("pump-1", "pump-2", "pump-3")


def streams(frames_each: int, frame_samples: int = 768) -> tuple[np.ndarray, list[list[bytes]]]:
    """Three sensors' contiguous ramps, cut into frames (one list of payloads per sensor)."""
    n = frames_each * frame_samples
    x = np.stack([np.arange(n, dtype=np.float32) + 1e6 * k for k in range(len(ASSETS))])
    payloads = [
        [encode_binary(f) for f in make_frames(x[k], frame_samples, asset=asset)]
        for k, asset in enumerate(ASSETS)
    ]
    return x, payloads


def interleave(payloads: list[list[bytes]], start: int, stop: int) -> list[tuple[str, bytes]]:
    """Frames ``start..stop-1`` of every sensor, in arrival order."""
    return [
        (frame_topic(SITE, asset, "acc-1"), payloads[k][i])
        for i in range(start, stop)
        for k, asset in enumerate(ASSETS)
    ]


def ingest_batch(store: LocalStore, ingestor: Ingestor, msgs: list[tuple[str, bytes]]) -> None:
    with store.batch():
        for topic, payload in msgs:
            ingestor.handle(topic, payload)


def stored_streams(store: LocalStore) -> dict[str, np.ndarray]:
    found: dict[str, list[np.ndarray]] = {a: [] for a in ASSETS}
    for w in store.unscored_windows(0, limit=10_000):
        found[w.asset_id].append(w.samples)
    return {a: np.concatenate(ws) if ws else np.zeros(0, np.float32) for a, ws in found.items()}


def test_partials_written_once_per_batch_resume_after_a_restart(tmp_path: Path) -> None:
    # Prepare: 16 frames of 768 samples per sensor = 6 windows of 2048 each
    path = tmp_path / "store.sqlite"
    x, payloads = streams(16)
    store = LocalStore(path)
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute: 7 frames per sensor committed (3 windows' worth and an unfinished one), then
    # the process "restarts" (new store connection and ingestor) and gets the rest
    ingest_batch(store, ingestor, interleave(payloads, 0, 7))
    partials = store.partial_windows()
    store.close()
    store = LocalStore(path)
    ingestor = Ingestor(store, SITE, WINDOW)
    for start in range(7, 16, 4):
        ingest_batch(store, ingestor, interleave(payloads, start, min(start + 4, 16)))
    got, counters, rejects = stored_streams(store), store.counters(), store.rejects()
    store.close()

    # Assert: the unfinished windows were saved, and every sample is stored once, in order
    assert {key: len(w.samples) for key, w in partials.items()} == {
        (a, "acc-1", 0): 7 * 768 - 2 * WINDOW for a in ASSETS
    }
    for k, asset in enumerate(ASSETS):
        np.testing.assert_array_equal(got[asset], x[k])
    assert counters == {"frames": 48}
    assert rejects == {}


def test_a_rolled_back_batch_leaves_the_last_committed_partials_and_positions(
    tmp_path: Path,
) -> None:
    # Prepare: one committed batch
    path = tmp_path / "store.sqlite"
    x, payloads = streams(8)
    store = LocalStore(path)
    ingestor = Ingestor(store, SITE, WINDOW)
    ingest_batch(store, ingestor, interleave(payloads, 0, 3))
    before = (store.partial_windows(), store.sensor_states(), store.counters())

    # Execute: the next batch dies half-way (as a crash before COMMIT would), then the batch
    # is redelivered to a restarted ingestor
    def crash_half_way() -> None:
        with store.batch():
            for topic, payload in interleave(payloads, 3, 6):
                ingestor.handle(topic, payload)
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        crash_half_way()
    after = (store.partial_windows(), store.sensor_states(), store.counters())
    ingestor = Ingestor(store, SITE, WINDOW)
    ingest_batch(store, ingestor, interleave(payloads, 3, 8))
    got = stored_streams(store)
    store.close()

    # Assert
    assert after[1] == before[1]
    assert {state.last_seq for state in after[1].values()} == {2}
    assert after[2] == before[2] == {"frames": 9}
    assert {k: (w.start_ns, len(w.samples)) for k, w in after[0].items()} == {
        k: (w.start_ns, len(w.samples)) for k, w in before[0].items()
    }
    for k, asset in enumerate(ASSETS):
        np.testing.assert_array_equal(got[asset], x[k][: 8 * 768 // WINDOW * WINDOW])


def test_reads_inside_a_batch_see_the_deferred_rows(tmp_path: Path) -> None:
    # Prepare
    store = LocalStore(tmp_path / "store.sqlite")
    part = Window(T0_NS, FS_HZ, np.arange(100, dtype=np.float32))

    # Execute
    with store.batch():
        store.record_frame(
            "pump-1", "acc-1", seq=4, end_ns=T0_NS + 1, windows={}, partials={0: part},
            counters={"frames": 1},
        )  # fmt: skip
        inside = (store.partial_windows(), store.sensor_states(), store.counters())
    store.close()

    # Assert
    partials, positions, counters = inside
    np.testing.assert_array_equal(partials[("pump-1", "acc-1", 0)].samples, part.samples)
    assert positions == {("pump-1", "acc-1"): SensorState(4, T0_NS + 1)}
    assert counters == {"frames": 1}


def test_a_frame_refused_by_the_budget_leaves_the_rest_of_its_batch(tmp_path: Path) -> None:
    # Prepare: a 1 MiB budget (about 110 database pages) and a frame whose window cannot fit
    store = LocalStore(tmp_path / "store.sqlite", budget_bytes=1 << 20)
    first = Window(T0_NS, FS_HZ, np.full(300, 1.0, np.float32))
    second = Window(T0_NS, FS_HZ, np.full(600, 2.0, np.float32))
    huge = Window(T0_NS, FS_HZ, np.zeros(200_000, np.float32))  # 800 kB

    # Execute
    with store.batch():
        store.record_frame(
            "pump-1", "acc-1", seq=0, end_ns=T0_NS + 1, windows={}, partials={0: first},
            counters={"frames": 1},
        )  # fmt: skip
        with pytest.raises(StoreFullError):
            store.record_frame(
                "pump-2", "acc-1", seq=0, end_ns=T0_NS + 2, windows={0: [huge]},
                partials={0: None}, counters={"frames": 1, "big": 1},
            )  # fmt: skip
        store.record_frame(
            "pump-1", "acc-1", seq=1, end_ns=T0_NS + 3, windows={}, partials={0: second},
            counters={"frames": 1},
        )  # fmt: skip
    partials, positions = store.partial_windows(), store.sensor_states()
    counters, windows = store.counters(), store.count_windows()
    store.close()

    # Assert: the refused frame left nothing; the frames around it are committed
    assert list(partials) == [("pump-1", "acc-1", 0)]
    np.testing.assert_array_equal(partials[("pump-1", "acc-1", 0)].samples, second.samples)
    assert positions == {("pump-1", "acc-1"): SensorState(1, T0_NS + 3)}
    assert counters == {"frames": 2}
    assert windows == 0


def test_a_failed_nested_batch_drops_the_rows_it_deferred(tmp_path: Path) -> None:
    # Prepare
    store = LocalStore(tmp_path / "store.sqlite")
    kept = Window(T0_NS, FS_HZ, np.ones(10, np.float32))
    lost = Window(T0_NS, FS_HZ, np.zeros(20, np.float32))

    def fail_inside() -> None:
        with store.batch():
            store.record_frame(
                "pump-1", "acc-1", seq=1, end_ns=T0_NS + 2, windows={}, partials={0: lost},
                counters={"frames": 1},
            )  # fmt: skip
            raise RuntimeError("inner")

    # Execute: the inner batch (a savepoint) fails and the caller handles it
    with store.batch():
        store.record_frame(
            "pump-1", "acc-1", seq=0, end_ns=T0_NS + 1, windows={}, partials={0: kept},
            counters={"frames": 1},
        )  # fmt: skip
        with pytest.raises(RuntimeError, match="inner"):
            fail_inside()
    partials, positions, counters = (
        store.partial_windows(),
        store.sensor_states(),
        store.counters(),
    )
    store.close()

    # Assert: what the outer batch deferred is committed, the inner one's is not
    np.testing.assert_array_equal(partials[("pump-1", "acc-1", 0)].samples, kept.samples)
    assert positions == {("pump-1", "acc-1"): SensorState(0, T0_NS + 1)}
    assert counters == {"frames": 1}
