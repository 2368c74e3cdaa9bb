"""Disk budget under a flood: the store's files never pass it, the oldest raw windows go first."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import FS_HZ, T0_NS, make_frames

from edge_agent.budget import files_bytes
from edge_agent.errors import StoreFullError
from edge_agent.ingest import Ingestor
from edge_agent.store import LocalStore, Score
from models.frame import encode_binary, frame_topic

SITE = "plant-a"
WINDOW = 2048
FRAME = 512
BUDGET = 4 << 20  # 4 MiB: about 370 raw windows of 2048 float32 samples
TOPIC = frame_topic(SITE, "pump-1", "acc-1")


def flood_frames(n_frames: int, *, seed: int = 0) -> tuple[np.ndarray, list[bytes]]:
    """Random samples (incompressible, so pages really fill up) cut into binary frames."""
    x = np.random.default_rng(seed).standard_normal(n_frames * FRAME).astype(np.float32)
    return x, [encode_binary(f) for f in make_frames(x, FRAME)]


@contextmanager
def size_sampler(path: Path) -> Iterator[list[int]]:
    """Sample the store's total file size from another thread while the block runs."""
    sizes: list[int] = []
    done = threading.Event()

    def run() -> None:
        while not done.wait(0.001):
            sizes.append(files_bytes(path))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sizes
    finally:
        done.set()
        thread.join()
        sizes.append(files_bytes(path))


def keepers(store: LocalStore) -> None:
    """Rows the design promises to keep: labels, features, an asset alarm, a baseline."""
    store.add_label("pump-1", "normal", T0_NS, T0_NS + 10**12)
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO features (window_id, asset_id, sensor_id, channel, start_ns,"
            " values_json) VALUES (?, 'pump-1', 'acc-1', 0, ?, ?)",
            [(-i, T0_NS + i, json.dumps({"rms": i})) for i in range(1, 51)],
        )
        conn.execute(
            "INSERT INTO alarms (ts_ns, source, subject, state, detail)"
            " VALUES (1, 'asset', 'pump-1', 'alarm', '{}')"
        )
        conn.execute(
            "INSERT INTO baselines (asset_id, model_version, fitted_ns, n_windows, payload)"
            " VALUES ('pump-1', 1, 1, 64, ?)",
            (bytes(2000),),
        )


def kept_rows(store: LocalStore) -> tuple[int, ...]:
    """Row counts of labels, features, asset alarms and baselines."""
    with store.reader() as conn:
        return tuple(
            int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("labels", "features", "alarms WHERE source = 'asset'", "baselines")
        )


def test_a_flood_never_passes_the_budget_and_evicts_only_the_oldest_raw_windows(
    tmp_path: Path,
) -> None:
    # Prepare: 3,000 frames = 750 windows (6 MiB of samples) into a 4 MiB budget
    path = tmp_path / "store.sqlite"
    x, frames = flood_frames(3000)
    store = LocalStore(path, budget_bytes=BUDGET)
    keepers(store)
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute: group commits of 64 frames, as the ingest worker makes them
    with size_sampler(path) as sizes:
        for i in range(0, len(frames), 64):
            with store.batch():
                for payload in frames[i : i + 64]:
                    ingestor.handle(TOPIC, payload)
    stored = store.unscored_windows(0, limit=10_000)
    counters, rejects, kept = store.counters(), store.rejects(), kept_rows(store)
    store.close()

    # Assert: never over budget, and it really was under pressure
    assert max(sizes) <= BUDGET
    assert max(sizes) > BUDGET // 2
    total = len(frames) * FRAME // WINDOW
    evicted = counters["windows_evicted"]
    assert 0 < evicted < total
    # every acknowledged frame's windows are either stored or counted as evicted, oldest first
    assert len(stored) + evicted == total
    assert [w.id for w in stored] == list(range(evicted + 1, total + 1))
    assert stored[-1].start_ns == T0_NS + round((total - 1) * WINDOW * 1e9 / FS_HZ)
    first = evicted * WINDOW
    np.testing.assert_array_equal(np.concatenate([w.samples for w in stored]), x[first:])
    assert counters["frames"] == len(frames)
    assert rejects == {}
    assert kept == (1, 50, 1, 1)


def test_a_reader_holding_an_old_snapshot_cannot_push_the_wal_past_the_budget(
    tmp_path: Path,
) -> None:
    # Prepare: a reader opens a read transaction and keeps it (checkpoints cannot pass it)
    path = tmp_path / "store.sqlite"
    x, frames = flood_frames(600, seed=1)
    store = LocalStore(path, budget_bytes=BUDGET)
    ingestor = Ingestor(store, SITE, WINDOW)
    reader = LocalStore(path, readonly=True)
    with reader.reader() as conn:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM windows").fetchone()

    # Execute: frames until the store refuses one (its frame would not be acknowledged)
    refused_at = None
    with size_sampler(path) as sizes:
        for k, payload in enumerate(frames):
            try:
                ingestor.handle(TOPIC, payload)
            except StoreFullError:
                refused_at = k
                break
    with reader.reader() as conn:
        conn.execute("COMMIT")  # the reader lets go
    reader.close()
    assert refused_at is not None
    # the worker restarts (a new Ingestor from the store) and the broker redelivers the rest
    ingestor = Ingestor(store, SITE, WINDOW)
    with size_sampler(path) as sizes_after:
        for payload in frames[refused_at:]:
            ingestor.handle(TOPIC, payload)
    stored = store.unscored_windows(0, limit=10_000)
    evicted = store.counters().get("windows_evicted", 0)
    store.close()

    # Assert
    assert max(sizes + sizes_after) <= BUDGET
    assert len(stored) + evicted == len(frames) * FRAME // WINDOW
    np.testing.assert_array_equal(stored[-1].samples, x[-WINDOW:])


def test_low_disk_space_degrades_to_a_small_ring_and_raises_an_agent_alarm(
    tmp_path: Path,
) -> None:
    # Prepare: "nearly full" = less free space than a threshold no disk can meet
    path = tmp_path / "store.sqlite"
    _, frames = flood_frames(400, seed=2)
    store = LocalStore(path, budget_bytes=BUDGET, min_free_bytes=1 << 62, degraded_windows=8)
    keepers(store)
    ingestor = Ingestor(store, SITE, WINDOW)

    # Execute: ingest, score what arrives (inference keeps running), ingest more
    for payload in frames[:200]:
        ingestor.handle(TOPIC, payload)
    ring = store.unscored_windows(0)
    store.add_scores([Score(w.id, 1, "normal", 0.1, {"normal": 0.9}, 1) for w in ring[4:]])
    oldest_unscored = {w.id for w in ring[:4]}
    for payload in frames[200:204]:  # one more window: a scored one goes, not the oldest
        ingestor.handle(TOPIC, payload)
    left = {w.id for w in store.unscored_windows(0)}
    for payload in frames[204:]:
        ingestor.handle(TOPIC, payload)
    degraded, count, alarms = store.degraded, store.count_windows(), store.active_agent_alarms()
    kept = kept_rows(store)
    store.close()
    with LocalStore(path, budget_bytes=BUDGET, min_free_bytes=0) as recovered:
        after = (recovered.degraded, recovered.active_agent_alarms(), recovered.agent_alarms())

    # Assert
    assert degraded == "low_disk"
    assert count == 8
    assert len(ring) == 8
    assert oldest_unscored <= left  # the scored windows went first
    assert alarms["store"].detail["condition"] == "low_disk"
    assert kept == (1, 50, 1, 1)
    assert after[0] is None
    assert after[1] == {}
    assert [(a.subject, a.state) for a in after[2]] == [("store", "raised"), ("store", "cleared")]


def test_a_full_disk_degrades_ingestion_instead_of_stopping_it(tmp_path: Path) -> None:
    # Prepare: SQLite's own page limit makes it report SQLITE_FULL as a full disk would
    path = tmp_path / "store.sqlite"
    x, frames = flood_frames(400, seed=3)
    store = LocalStore(path, budget_bytes=BUDGET, degraded_windows=16)
    ingestor = Ingestor(store, SITE, WINDOW)
    for payload in frames[:100]:
        ingestor.handle(TOPIC, payload)
    with store.reader() as conn:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {pages + 8}")

    # Execute
    for payload in frames[100:]:
        ingestor.handle(TOPIC, payload)
    stored = store.unscored_windows(0, limit=1000)
    degraded, alarms, counters = store.degraded, store.active_agent_alarms(), store.counters()
    store.close()

    # Assert: every frame stored, the newest windows kept, the condition raised
    assert degraded == "disk_full"
    assert alarms["store"].detail["condition"] == "disk_full"
    assert counters["frames"] == len(frames)
    assert len(stored) + counters["windows_evicted"] == len(frames) * FRAME // WINDOW
    np.testing.assert_array_equal(stored[-1].samples, x[-WINDOW:])


def test_the_budget_must_hold_a_usable_store(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="1 MiB"):
        LocalStore(tmp_path / "s.sqlite", budget_bytes=1000)


def test_a_store_written_under_a_larger_budget_stops_growing(tmp_path: Path) -> None:
    # Prepare: 6 MiB of windows under an 8 MiB budget, then the budget is cut to 4 MiB
    path = tmp_path / "store.sqlite"
    _, frames = flood_frames(3000, seed=4)
    with LocalStore(path, budget_bytes=8 << 20) as store:
        ingestor = Ingestor(store, SITE, WINDOW)
        for payload in frames[:2600]:
            ingestor.handle(TOPIC, payload)
    size_before = files_bytes(path)

    # Execute
    with LocalStore(path, budget_bytes=BUDGET) as store:
        ingestor = Ingestor(store, SITE, WINDOW)
        with size_sampler(path) as sizes:
            for payload in frames[2600:]:
                ingestor.handle(TOPIC, payload)
        frames_seen = store.counters()["frames"]

    # Assert: still ingesting, and the file did not grow (the pages freed are reused)
    assert size_before > BUDGET
    assert frames_seen == len(frames)
    assert max(sizes) <= size_before + (1 << 20)  # the WAL allowance of the old budget
