"""LocalStore: round trips, label matching, resampling, WAL, schema, concurrent processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import SchemaError, StoreError
from edge_agent.schema import SCHEMA_VERSION
from edge_agent.store import LocalStore, Score, SensorState
from models.windows import Window

FS = 12_000.0
N = 2048
WIN_NS = round(N * 1e9 / FS)  # 170_666_667 ns


def windows(
    count: int, *, t0: int = 0, fs: float = FS, n: int = N, value: float = 0.0
) -> list[Window]:
    step = round(n * 1e9 / fs)
    return [
        Window(t0 + i * step, fs, np.full(n, value + i, dtype=np.float32)) for i in range(count)
    ]


def test_windows_round_trip(store: LocalStore) -> None:
    # Prepare
    rng = np.random.default_rng(1)
    samples = rng.standard_normal((3, N)).astype(np.float32)
    batch = [Window(i * WIN_NS, FS, samples[i]) for i in range(3)]

    # Execute
    ids = store.add_windows("pump-1", "acc-1", 2, batch)
    got = store.unscored_windows(after_id=0)

    # Assert
    assert ids == [1, 2, 3]
    assert store.count_windows() == 3
    assert [w.id for w in got] == ids
    for w, original in zip(got, batch, strict=True):
        assert (w.asset_id, w.sensor_id, w.channel) == ("pump-1", "acc-1", 2)
        assert (w.start_ns, w.end_ns, w.sample_rate_hz) == (
            original.start_ns,
            original.end_ns,
            FS,
        )
        assert w.samples.dtype == np.float32
        np.testing.assert_array_equal(w.samples, original.samples)


def test_unscored_windows_pages_by_id_and_skips_scored(store: LocalStore) -> None:
    # Prepare
    ids = store.add_windows("pump-1", "acc-1", 0, windows(5))
    score = Score(ids[1], 7, "ball", 0.9, {"normal": 0.1, "ball": 0.9}, 123)

    # Execute
    store.add_scores([score])
    first_page = store.unscored_windows(after_id=0, limit=2)
    after = store.unscored_windows(after_id=ids[2])

    # Assert
    assert [w.id for w in first_page] == [ids[0], ids[2]]
    assert [w.id for w in after] == ids[3:]
    assert store.last_scored_window_id() == ids[1]
    assert store.scores(ids[1]) == [score]
    assert store.count_scores() == 1


def test_empty_store_has_no_scores_or_data(store: LocalStore) -> None:
    # Execute
    data = store.labelled_windows(["normal", "ball"], FS, N)

    # Assert
    assert store.last_scored_window_id() == 0
    assert store.count_windows() == store.count_labels() == 0
    assert data.x.shape == (0, 1, N)
    assert data.y.dtype == data.group.dtype == data.start_ns.dtype == np.int64
    assert len(data) == 0


def test_labelled_windows_matching_rules(store: LocalStore) -> None:
    # Prepare: 10 windows on two sensors of pump-1, 10 on pump-2
    for sensor in ("acc-1", "acc-2"):
        store.add_windows("pump-1", sensor, 0, windows(10, value=0.0))
    store.add_windows("pump-2", "acc-1", 0, windows(10, value=100.0))
    # whole-asset label over windows 0..3 (window 4 only partly inside: excluded)
    store.add_label("pump-1", "ball", 0, 4 * WIN_NS + WIN_NS // 2)
    # sensor-specific label over windows 6..7 of acc-2 only
    store.add_label("pump-1", "inner_race", 6 * WIN_NS, 8 * WIN_NS, sensor_id="acc-2")
    # a class the model does not know, and a conflicting label over window 9
    store.add_label("pump-1", "misaligned", 0, 10 * WIN_NS)
    store.add_label("pump-1", "normal", 9 * WIN_NS, 10 * WIN_NS + 1)
    store.add_label("pump-1", "ball", 9 * WIN_NS, 10 * WIN_NS + 1, sensor_id="acc-1")

    # Execute
    data = store.labelled_windows(["normal", "inner_race", "outer_race", "ball"], FS, N)

    # Assert
    ball, inner, normal = 3, 1, 0
    # windows 0..3 of both pump-1 sensors are ball; 6..7 of acc-2 inner_race;
    # window 9: acc-1 is ambiguous (normal and ball), acc-2 is normal
    assert data.x.shape == (4 + 4 + 2 + 1, 1, N)
    assert sorted(data.y.tolist()) == sorted([ball] * 8 + [inner] * 2 + [normal])
    assert not np.any(data.x >= 100.0)  # nothing from pump-2
    starts_by_class = {c: sorted(set(data.start_ns[data.y == c].tolist())) for c in (0, 1, 3)}
    assert starts_by_class[ball] == [i * WIN_NS for i in range(4)]
    assert starts_by_class[inner] == [6 * WIN_NS, 7 * WIN_NS]
    assert starts_by_class[normal] == [9 * WIN_NS]
    # one group per (label event, sensor, channel)
    assert len(np.unique(data.group)) == 4
    for g in np.unique(data.group):
        assert len(np.unique(data.y[data.group == g])) == 1


def test_duplicate_label_event_is_stored_once(store: LocalStore) -> None:
    # Execute
    first = store.add_label("pump-1", "ball", 10, 20, source="cmms")
    again = store.add_label("pump-1", "ball", 10, 20, source="cmms")
    per_sensor = store.add_label("pump-1", "ball", 10, 20, sensor_id="acc-1")

    # Assert
    assert first == again
    assert per_sensor != first
    assert store.count_labels() == 2


def test_label_with_empty_span_is_refused(store: LocalStore) -> None:
    with pytest.raises(StoreError, match="positive"):
        store.add_label("pump-1", "ball", 20, 20)


def test_labelled_windows_resamples_other_rates(store: LocalStore) -> None:
    # Prepare: a 1 kHz sine of amplitude 0.5 g recorded at 48 kHz in windows of 8192 samples
    fs_in, n_in, f0, amp = 48_000.0, 8192, 1000.0, 0.5
    t = np.arange(n_in) / fs_in
    x = (amp * np.sin(2 * np.pi * f0 * t)).astype(np.float32)
    store.add_windows("pump-1", "acc-9", 0, [Window(0, fs_in, x)])
    store.add_windows("pump-1", "acc-1", 0, windows(1))  # already at 12 kHz
    store.add_label("pump-1", "normal", 0, 10**9)

    # Execute
    data = store.labelled_windows(["normal"], FS, N)

    # Assert: 8192 @ 48 kHz -> 2048 @ 12 kHz, same tone, same RMS
    assert data.x.shape == (2, 1, N)
    resampled = data.x[0, 0]
    spectrum = np.abs(np.fft.rfft(resampled))
    peak_hz = np.argmax(spectrum) * FS / N
    assert abs(peak_hz - f0) <= FS / N
    core = resampled[100:-100]  # away from the filter's edge effects
    assert np.sqrt(np.mean(core**2)) == pytest.approx(amp / np.sqrt(2), rel=0.02)


def test_labelled_windows_pads_short_windows(store: LocalStore) -> None:
    # Prepare
    store.add_windows("pump-1", "acc-1", 0, windows(1, n=1024, value=1.0))
    store.add_label("pump-1", "normal", 0, 10**9)

    # Execute
    data = store.labelled_windows(["normal"], FS, N)

    # Assert
    assert data.x.shape == (1, 1, N)
    assert np.count_nonzero(data.x) == 1024


def test_counters_rejects_and_sensor_positions(store: LocalStore) -> None:
    # Prepare
    top_seq = (1 << 64) - 1

    # Execute
    store.add_rejects({"bad_magic": 2, "truncated": 1})
    store.add_rejects({"bad_magic": 1})
    ids = store.record_frame(
        "pump-1",
        "acc-1",
        seq=top_seq,
        end_ns=42,
        windows={0: windows(1), 1: windows(2)},
        counters={"frames": 1, "seq_gaps": 0},
    )
    store.add_counters({"frames": 2})

    # Assert
    assert store.rejects() == {"bad_magic": 3, "truncated": 1}
    assert store.counters() == {"frames": 3}
    assert len(ids) == 3
    assert store.sensor_states() == {("pump-1", "acc-1"): SensorState(top_seq, 42)}


def test_store_is_wal_and_schema_versioned(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "s.sqlite"

    # Execute
    with LocalStore(path) as s:
        mode, version = s.journal_mode(), s.schema_version()
    with LocalStore(path) as s:  # reopening keeps everything
        mode_again = s.journal_mode()

    # Assert
    assert mode == mode_again == "wal"
    assert version == SCHEMA_VERSION
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "s.sqlite"
    LocalStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()

    # Execute / Assert
    with pytest.raises(SchemaError, match=r"newer|knows"):
        LocalStore(path)


def test_bad_files_are_store_errors(tmp_path: Path) -> None:
    # Prepare
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)

    # Execute / Assert
    with pytest.raises(StoreError):
        LocalStore(garbage)
    with pytest.raises(StoreError, match="no store"):
        LocalStore(tmp_path / "missing.sqlite", readonly=True)


def test_readonly_store_reads_but_refuses_writes(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "s.sqlite"
    with LocalStore(path) as s:
        s.add_windows("pump-1", "acc-1", 0, windows(2))
        s.add_label("pump-1", "normal", 0, 10**10)

    # Execute
    with LocalStore(path, readonly=True) as ro:
        data = ro.labelled_windows(["normal"], FS, N)
        with pytest.raises(StoreError, match="read-only"):
            ro.add_label("pump-1", "ball", 0, 1)

    # Assert
    assert data.y.tolist() == [0, 0]


WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from edge_agent.store import LocalStore
    from models.windows import Window
    with LocalStore(sys.argv[1]) as s:
        for i in range(int(sys.argv[2])):
            batch = [Window(i * 10**9 + k, 12000.0, np.full(2048, i, np.float32)) for k in range(5)]
            s.add_windows("pump-1", "acc-1", 0, batch)
            time.sleep(0.003)
    """
)


def test_reader_process_while_another_process_writes(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "s.sqlite"
    LocalStore(path).close()
    batches = 150

    # Execute: read continuously while a separate process writes 150 transactions
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(batches)])
    seen = []
    try:
        with LocalStore(path, readonly=True) as ro:
            while writer.poll() is None:
                seen.append(ro.count_windows())
                rows = ro.unscored_windows(0, limit=10_000)
                assert len(rows) % 5 == 0  # never half a transaction
                time.sleep(0.002)
            final = ro.count_windows()
    finally:
        writer.wait(30)

    # Assert
    assert writer.returncode == 0
    assert seen == sorted(seen)
    assert len(set(seen)) > 3  # the reads really overlapped the writes
    assert final == batches * 5


def test_a_version_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    # Prepare: a store as the first agent release left it, with one window in it
    from edge_agent.schema import MIGRATIONS

    path = tmp_path / "v1.sqlite"
    raw = sqlite3.connect(path)
    raw.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    raw.execute(
        "INSERT INTO windows (asset_id, sensor_id, channel, start_ns, end_ns, sample_rate_hz,"
        " n_samples, samples, created_ns) VALUES ('p', 's', 0, 0, 1, 1000.0, 1, ?, 0)",
        (np.zeros(1, "<f4").tobytes(),),
    )
    raw.commit()
    raw.close()

    # Execute
    with LocalStore(path) as store:
        version, windows, partials = (
            store.schema_version(),
            store.count_windows(),
            store.partial_windows(),
        )

    # Assert
    assert version == SCHEMA_VERSION == 3
    assert windows == 1
    assert partials == {}


# --- batch ------------------------------------------------------------------------------------


def test_batch_commits_its_writes_together_at_exit(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "s.sqlite"
    store = LocalStore(path)
    seen_inside = []

    # Execute: a second connection sees nothing until the batch ends
    with LocalStore(path, readonly=True) as ro:
        with store.batch():
            store.add_windows("pump-1", "acc-1", 0, windows(2))
            with store.batch():  # nested: joins the outer batch
                store.add_counters({"frames": 2})
            store.add_label("pump-1", "normal", 0, 10)
            seen_inside.append((ro.count_windows(), ro.counters(), ro.count_labels()))
        after = (ro.count_windows(), ro.counters(), ro.count_labels())
    store.close()

    # Assert
    assert seen_inside == [(0, {}, 0)]
    assert after == (2, {"frames": 2}, 1)


def test_an_error_leaving_the_batch_rolls_all_of_it_back(store: LocalStore) -> None:
    # Prepare
    store.add_counters({"before": 1})

    def fill_then_fail() -> None:
        with store.batch():
            store.add_windows("pump-1", "acc-1", 0, windows(3))
            store.add_counters({"frames": 3})
            raise RuntimeError("boom")

    # Execute
    with pytest.raises(RuntimeError, match="boom"):
        fill_then_fail()

    # Assert
    assert store.count_windows() == 0
    assert store.counters() == {"before": 1}


def test_a_failed_write_handled_inside_the_batch_leaves_the_rest(store: LocalStore) -> None:
    def half_written() -> None:
        with store.transaction() as conn:
            conn.execute("INSERT INTO counters (name, value) VALUES ('half', 1)")
            conn.execute("INSERT INTO no_such_table VALUES (1)")

    # Execute: the middle write fails half-way and the caller handles it
    with store.batch():
        store.add_windows("pump-1", "acc-1", 0, windows(1))
        with pytest.raises(StoreError):
            half_written()
        store.add_windows("pump-1", "acc-1", 0, windows(1, t0=WIN_NS))

    # Assert: the failed write left nothing behind, the others are committed
    assert store.count_windows() == 2
    assert store.counters() == {}


# --- dead letters and agent alarms -----------------------------------------------------------


def test_dead_letters_are_truncated_bounded_and_listed_newest_first(tmp_path: Path) -> None:
    # Prepare
    store = LocalStore(
        tmp_path / "s.sqlite", dead_letter_max_rows=3, dead_letter_max_payload_bytes=8
    )

    # Execute
    for i in range(5):
        store.record_reject("bad_magic", topic=f"t/{i}", detail=f"d{i}", payload=bytes(20))
    store.record_reject("duplicate")  # counted only
    letters = store.dead_letters(10)
    magic = store.dead_letters(10, reason="bad_magic")
    store.close()

    # Assert
    assert [d.topic for d in letters] == ["t/4", "t/3", "t/2"]
    assert letters == magic
    assert {(d.reason, d.payload, d.payload_bytes) for d in letters} == {
        ("bad_magic", bytes(8), 20)
    }


def test_agent_alarms_are_recorded_on_change_only(store: LocalStore) -> None:
    # Execute
    raised = store.raise_agent_alarm("store", {"condition": "low_disk"})
    again = store.raise_agent_alarm("store", {"condition": "low_disk"})
    active = store.active_agent_alarms()
    cleared = store.clear_agent_alarm("store")
    cleared_again = store.clear_agent_alarm("store")
    rows = store.agent_alarms()

    # Assert
    assert (raised, again, cleared, cleared_again) == (True, False, True, False)
    assert list(active) == ["store"]
    assert active["store"].detail == {"condition": "low_disk"}
    assert [(r.source, r.subject, r.state) for r in rows] == [
        ("agent", "store", "raised"),
        ("agent", "store", "cleared"),
    ]
    assert store.active_agent_alarms() == {}
    assert store.agent_alarms(after_id=rows[0].id) == rows[1:]


# --- integrity --------------------------------------------------------------------------------


def corrupt(path: Path) -> None:
    """Overwrite the middle of the file's B-tree pages with garbage (a real corruption)."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        for offset in range(4096, size - 4096, 3 * 4096):
            f.seek(offset + 100)
            f.write(b"\xa5" * 700)


def test_a_corrupt_store_is_quarantined_and_replaced_at_start_up(tmp_path: Path) -> None:
    # Prepare: a store with data, closed (WAL checkpointed), then damaged on disk
    path = tmp_path / "s.sqlite"
    with LocalStore(path) as s:
        s.add_windows("pump-1", "acc-1", 0, windows(50))
        s.add_label("pump-1", "normal", 0, 10**12)
    corrupt(path)

    # Execute
    with LocalStore.open_checked(path) as s:
        fresh = (s.count_windows(), s.count_labels(), s.schema_version())
        alarms = s.active_agent_alarms()
    quarantined = list(tmp_path.glob("s.sqlite.corrupt-*"))

    # Assert
    assert fresh == (0, 0, SCHEMA_VERSION)
    assert [p.name for p in quarantined if not p.name.endswith("-wal")] == [
        Path(alarms["store_integrity"].detail["quarantined"]).name
    ]
    assert alarms["store_integrity"].detail["condition"] == "corrupt"
    assert alarms["store_integrity"].detail["problems"]


def test_a_healthy_store_passes_the_start_up_check_untouched(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "s.sqlite"
    with LocalStore(path) as s:
        s.add_windows("pump-1", "acc-1", 0, windows(3))

    # Execute
    with LocalStore.open_checked(path) as s:
        count, alarms = s.count_windows(), s.active_agent_alarms()

    # Assert
    assert count == 3
    assert alarms == {}
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_a_file_that_is_not_a_database_is_quarantined_too(tmp_path: Path) -> None:
    # Prepare: an older quarantined copy exists; only the newest is kept
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"not a database at all " * 500)
    (tmp_path / "s.sqlite.corrupt-20200101T000000Z").write_bytes(b"old")

    # Execute
    with LocalStore.open_checked(path) as s:
        alarms = s.active_agent_alarms()

    # Assert
    assert "store_integrity" in alarms
    (kept,) = tmp_path.glob("s.sqlite.corrupt-*")
    assert kept.read_bytes().startswith(b"not a database")


def test_the_supervisor_opens_a_checked_store_from_its_settings(tmp_path: Path) -> None:
    # Prepare
    from edge_agent.settings import AgentSettings

    settings = AgentSettings(
        site_id="plant-a", store_path=tmp_path / "s.sqlite", store_budget_bytes=4 << 20
    )
    settings.store_path.write_bytes(b"garbage, not SQLite " * 300)

    # Execute
    with LocalStore.from_settings(settings, checked=True) as s:
        plan, alarms = s.budget, s.active_agent_alarms()

    # Assert
    assert plan is not None
    assert plan.budget_bytes == 4 << 20
    assert list(alarms) == ["store_integrity"]
