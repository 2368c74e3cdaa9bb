"""Telemetry: the outbox drained into a real VictoriaMetrics through outages, once, in order."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from victoria_helpers import (
    InfluxWriteStub,
    Series,
    VictoriaMetrics,
    require_victoria_metrics,
    stop_process,
    wait_for,
)

from edge_agent.errors import ExitCode
from edge_agent.outbox import Outbox, feature_point, health_point, score_point
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore
from edge_agent.telemetry import (
    Backoff,
    InfluxSink,
    MemorySink,
    SinkRefusedError,
    SinkUnavailableError,
    TelemetryForwarder,
    telemetry_main,
)

REPO = Path(__file__).resolve().parents[2]
SITE = "plant-a"
ASSETS = ("pump-1", "pump-2", "fan-1")
# distinct milliseconds (VictoriaMetrics keeps ms), an hour back so nothing is in the future
BASE_MS = time.time_ns() // 1_000_000 - 3_600_000


def points(first: int, count: int) -> list[str]:
    """``count`` feature points (one field each), numbered from ``first``."""
    return [
        feature_point(
            site=SITE,
            asset=ASSETS[i % len(ASSETS)],
            sensor="acc-1",
            channel=0,
            features={"rms": i / 1000},
            ts_ns=(BASE_MS + i) * 1_000_000,
        )
        for i in range(first, first + count)
    ]


def expected(count: int) -> dict[Series, list[int]]:
    """What VictoriaMetrics must hold once points 0..count-1 arrived exactly once."""
    out: dict[Series, list[int]] = {}
    for i in range(count):
        labels = {
            "__name__": "fedpm_features_rms",
            "asset": ASSETS[i % len(ASSETS)],
            "channel": "0",
            "sensor": "acc-1",
            "site": SITE,
        }
        out.setdefault(tuple(sorted(labels.items())), []).append(BASE_MS + i)
    return out


def sorted_samples(got: dict[Series, list[int]]) -> dict[Series, list[int]]:
    return {series: sorted(ts) for series, ts in got.items()}


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    require_victoria_metrics()
    server = VictoriaMetrics(tmp_path / "vm-data", tmp_path / "vm.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def vm_stopped(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics with its port and folder chosen, not started."""
    require_victoria_metrics()
    server = VictoriaMetrics(tmp_path / "vm-data", tmp_path / "vm.log")
    yield server
    server.stop()


class ForwarderThread:
    """A forwarder with its own store connection and InfluxSink, running in a thread."""

    def __init__(self, store_path: Path, url: str, *, batch: int, token: str = "") -> None:
        self._store_path = store_path
        self._url = url
        self._token = token
        self._batch = batch
        self._ready = threading.Event()
        self.forwarder: TelemetryForwarder | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sink = InfluxSink(self._url, "fedpm", "fedpm", self._token, timeout_s=5)
        with LocalStore(self._store_path) as store:
            self.forwarder = TelemetryForwarder(
                Outbox(store, 1_000_000),
                sink,
                batch=self._batch,
                backoff=Backoff(0.05, 0.5),
                idle_s=0.05,
            )
            self._ready.set()
            try:
                self.forwarder.run()
            finally:
                sink.close()

    def __enter__(self) -> ForwarderThread:
        self._thread.start()
        assert self._ready.wait(10), "forwarder did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.forwarder is not None
        self.forwarder.stop()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "forwarder did not stop"


def start_worker(tmp_path: Path, store_path: Path, url: str, batch: int) -> subprocess.Popen[bytes]:
    """The real telemetry worker process (``run_telemetry``), configured from the environment."""
    env = {
        **os.environ,
        "FEDPM_EDGE_SITE_ID": SITE,
        "FEDPM_EDGE_STORE_PATH": str(store_path),
        "FEDPM_EDGE_INFLUX_URL": url,
        "FEDPM_EDGE_TELEMETRY_BATCH": str(batch),
        "FEDPM_EDGE_LOG_LEVEL": "DEBUG",
    }
    code = (
        "from edge_agent.settings import load_settings\n"
        "from edge_agent.telemetry import run_telemetry\n"
        "run_telemetry(load_settings(), max_backoff_s=0.5)\n"
    )
    log = open(tmp_path / "telemetry-worker.log", "ab")  # noqa: SIM115 - the child owns it
    with log:
        return subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


# --- points and the outbox ----------------------------------------------------------------


def test_point_builders_write_the_documented_schema() -> None:
    # Execute
    feature = feature_point(
        site=SITE,
        asset="pump-1",
        sensor="acc-1",
        channel=2,
        features={"rms": 0.5, "kurtosis": float("nan"), "velocity_rms_mm_s": 2.25},
        ts_ns=7,
    )
    score = score_point(
        site=SITE,
        asset="pump-1",
        sensor="acc-1",
        model_version=3,
        predicted="inner_race",
        failure_probability=0.75,
        anomaly_score=4.5,
        probabilities={"normal": 0.25, "inner_race": 0.75},
        ts_ns=8,
    )
    health = health_point(
        site=SITE,
        asset="pump-1",
        state="alarm",
        previous_state="warning",
        evidence={"iso_zone": "C", "velocity_rms_mm_s": 7.5, "defect": None},
        ts_ns=9,
    )

    # Assert
    assert feature == (
        "fedpm_features,asset=pump-1,channel=2,sensor=acc-1,site=plant-a"
        " rms=0.5,velocity_rms_mm_s=2.25 7"
    )
    assert score == (
        "fedpm_scores,asset=pump-1,model_version=3,sensor=acc-1,site=plant-a"
        " anomaly_score=4.5,failure_probability=0.75,p_inner_race=0.75,p_normal=0.25,"
        'predicted="inner_race" 8'
    )
    assert health == (
        'fedpm_health,asset=pump-1,site=plant-a iso_zone="C",previous_state="warning",'
        'state="alarm",state_code=2i,velocity_rms_mm_s=7.5 9'
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": {"rms": float("nan")}}, "no finite field"),
        ({"features": {}}, "no finite field"),
        ({"sensor": ""}, "empty tag"),
        ({"ts_ns": -1}, "negative timestamp"),
    ],
)
def test_feature_point_refuses_what_cannot_be_written(
    kwargs: dict[str, object], message: str
) -> None:
    # Prepare
    args: dict[str, object] = {
        "site": SITE,
        "asset": "pump-1",
        "sensor": "acc-1",
        "channel": 0,
        "features": {"rms": 1.0},
        "ts_ns": 1,
    }

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        feature_point(**{**args, **kwargs})  # type: ignore[arg-type]


def test_health_point_refuses_unknown_states_and_clashing_evidence() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="health state"):
        health_point(site=SITE, asset="p", state="broken", ts_ns=1)
    with pytest.raises(ValueError, match="state_code"):
        health_point(site=SITE, asset="p", state="alarm", ts_ns=1, evidence={"state_code": 1})
    with pytest.raises(ValueError, match="line break"):
        health_point(site=SITE, asset="p", state="alarm", ts_ns=1, evidence={"note": "a\nb"})


def test_outbox_refuses_a_line_that_is_not_one_point(store: LocalStore) -> None:
    # Prepare
    box = Outbox(store, 1000)
    box.append(points(0, 2))

    # Execute
    with pytest.raises(ValueError, match="one non-empty point"):
        box.append([*points(2, 1), "a x=1 1\nb x=2 2"])
    with pytest.raises(ValueError, match="one non-empty point"):
        box.append([" "])

    # Assert
    assert [line for _, line in box.peek(10)] == points(0, 2)


# --- the forwarder against its in-memory twin ----------------------------------------------


def test_outage_keeps_every_point_and_the_order(store: LocalStore) -> None:
    # Prepare
    box = Outbox(store, 10_000)
    sink = MemorySink(down=True)
    forwarder = TelemetryForwarder(box, sink, batch=7)
    box.append(points(0, 30))

    # Execute
    with pytest.raises(SinkUnavailableError):
        forwarder.step()
    depth_while_down = box.depth()
    sink.down = False
    box.append(points(30, 20))
    while forwarder.step():
        pass

    # Assert
    assert depth_while_down == 30
    assert sink.lines == points(0, 50)
    assert box.depth() == 0
    assert store.counters()["telemetry_sent"] == 50


def test_refused_point_is_isolated_and_kept_aside(store: LocalStore) -> None:
    # Prepare
    box = Outbox(store, 10_000)
    bad = "fedpm_features,site=plant-a rms=1 not-a-time"
    sink = MemorySink(rejects=lambda line: line == bad)
    forwarder = TelemetryForwarder(box, sink, batch=16)
    box.append([*points(0, 21), bad, *points(21, 20)])

    # Execute
    while forwarder.step():
        pass

    # Assert
    assert sink.lines == points(0, 41)
    assert box.depth() == 0
    assert [line for line, _ in box.rejected()] == [bad]
    assert store.rejects()["telemetry_rejected"] == 1


def test_backoff_doubles_up_to_its_cap() -> None:
    # Prepare
    backoff = Backoff(0.5, 8.0)

    # Execute
    delays = [backoff.next_delay() for _ in range(40)]
    backoff.reset()
    after_reset = backoff.next_delay()

    # Assert
    assert 0.25 <= delays[0] <= 0.5
    assert 2.0 <= delays[3] <= 4.0
    assert all(4.0 <= d <= 8.0 for d in delays[5:])
    assert after_reset <= 0.5


def test_worker_without_influx_url_is_off(tmp_path: Path) -> None:
    # Prepare
    settings = AgentSettings(site_id=SITE, store_path=tmp_path / "s.sqlite")

    # Execute
    code = telemetry_main(settings)

    # Assert
    assert code == ExitCode.SUCCESS
    assert not (tmp_path / "s.sqlite").exists()


# --- against InfluxDB's answers (a stub: VictoriaMetrics accepts bad lines) -----------------


@pytest.mark.integration
def test_malformed_point_does_not_block_the_rest(store: LocalStore) -> None:
    # Prepare
    box = Outbox(store, 10_000)
    bad = "fedpm_features,site=plant-a rms=1 not-a-time"
    box.append([*points(0, 10), bad, *points(10, 10)])

    with InfluxWriteStub("secret") as stub:
        sink = InfluxSink(stub.url, "fedpm", "fedpm", "secret")
        forwarder = TelemetryForwarder(box, sink, batch=8)

        # Execute
        while forwarder.step():
            pass
        sink.close()

    # Assert
    assert stub.lines == points(0, 20)
    assert box.depth() == 0
    [(line, reason)] = box.rejected()
    assert line == bad
    assert "HTTP 400" in reason
    assert "unable to parse" in reason
    assert store.rejects()["telemetry_rejected"] == 1


@pytest.mark.integration
def test_overloaded_sink_is_retried_as_it_asks(store: LocalStore) -> None:
    # Prepare
    box = Outbox(store, 10_000)
    box.append(points(0, 12))

    with InfluxWriteStub("secret") as stub:
        sink = InfluxSink(stub.url, "fedpm", "fedpm", "secret")
        forwarder = TelemetryForwarder(box, sink, batch=5)
        stub.overloaded = True

        # Execute
        with pytest.raises(SinkUnavailableError, match="HTTP 503") as raised:
            forwarder.step()
        depth_while_overloaded = box.depth()
        stub.overloaded = False
        while forwarder.step():
            pass
        sink.close()

    # Assert
    assert raised.value.retry_after_s == 1.0
    assert depth_while_overloaded == 12
    assert stub.lines == points(0, 12)


@pytest.mark.integration
def test_refused_token_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    store_path = tmp_path / "store.sqlite"
    with LocalStore(store_path) as store:
        Outbox(store, 10_000).append(points(0, 30))
        with InfluxWriteStub("rotated") as stub:
            probe = InfluxSink(stub.url, "fedpm", "fedpm", "old")
            with pytest.raises(SinkRefusedError, match="HTTP 401"):
                probe.write(points(0, 1))
            probe.close()

            # Execute
            with (
                caplog.at_level(logging.ERROR),
                ForwarderThread(store_path, stub.url, batch=8, token="old"),
            ):
                wait_for(lambda: stub.statuses.count(401) >= 3, 30, "retries with the old token")
                stub.token = "old"  # the operator fixes it on the server side
                wait_for(lambda: Outbox(store, 10_000).depth() == 0, 30, "the outbox to drain")

    # Assert
    assert stub.lines == points(0, 30)
    assert any("refuses our credentials" in r.getMessage() for r in caplog.records)


# --- against a real VictoriaMetrics ---------------------------------------------------------


@pytest.mark.integration
def test_points_arrive_once_while_the_sink_runs(tmp_path: Path, vm: VictoriaMetrics) -> None:
    # Prepare
    store_path = tmp_path / "store.sqlite"
    with LocalStore(store_path) as store:
        box = Outbox(store, 1_000_000)

        # Execute
        with ForwarderThread(store_path, vm.url, batch=50):
            for first in range(0, 600, 100):
                box.append(points(first, 100))
            wait_for(lambda: box.depth() == 0, 60, "the outbox to drain")

    # Assert
    assert sorted_samples(vm.export()) == expected(600)


@pytest.mark.integration
def test_sink_stopped_mid_stream_then_restarted(tmp_path: Path, vm: VictoriaMetrics) -> None:
    # Prepare
    store_path = tmp_path / "store.sqlite"
    with LocalStore(store_path) as store:
        box = Outbox(store, 1_000_000)

        with ForwarderThread(store_path, vm.url, batch=25) as running:
            forwarder = running.forwarder
            assert forwarder is not None

            # Execute
            for first in range(0, 400, 20):
                box.append(points(first, 20))
            wait_for(lambda: forwarder.delivered > 0, 30, "the first deliveries")
            vm.stop()
            for first in range(400, 1000, 20):
                box.append(points(first, 20))
            wait_for(lambda: forwarder.failed_attempts > 0, 30, "a write to meet the outage")
            depth_while_down = box.depth()
            vm.start()
            wait_for(lambda: box.depth() == 0, 60, "the outbox to drain")

    # Assert
    assert depth_while_down >= 600
    assert sorted_samples(vm.export()) == expected(1000)


@pytest.mark.integration
def test_sink_down_for_the_whole_run_then_back(tmp_path: Path, vm_stopped: VictoriaMetrics) -> None:
    # Prepare
    store_path = tmp_path / "store.sqlite"
    with LocalStore(store_path) as store:
        box = Outbox(store, 1_000_000)
        worker = start_worker(tmp_path, store_path, vm_stopped.url, batch=100)
        try:
            # Execute
            for first in range(0, 1500, 100):
                box.append(points(first, 100))
            wait_for(
                lambda: "unavailable" in (tmp_path / "telemetry-worker.log").read_text(),
                30,
                "the worker to meet the missing sink",
            )
            depth_while_down = box.depth()
            alive_while_down = worker.poll() is None
            vm_stopped.start()
            wait_for(lambda: box.depth() == 0, 60, "the outbox to drain")
        finally:
            code = stop_process(worker)

    # Assert
    assert alive_while_down
    assert depth_while_down == 1500
    assert code == 0
    assert sorted_samples(vm_stopped.export()) == expected(1500)


@pytest.mark.integration
def test_worker_killed_mid_drain_loses_nothing(tmp_path: Path, vm: VictoriaMetrics) -> None:
    # Prepare
    total, batch = 6000, 5
    store_path = tmp_path / "store.sqlite"
    with LocalStore(store_path) as store:
        box = Outbox(store, 1_000_000)
        box.append(points(0, total))
        worker = start_worker(tmp_path, store_path, vm.url, batch=batch)

        # Execute
        wait_for(lambda: box.depth() < total, 30, "the drain to start")
        stop_process(worker, signal.SIGKILL)
        depth_at_kill = box.depth()
        worker = start_worker(tmp_path, store_path, vm.url, batch=batch)
        try:
            wait_for(lambda: box.depth() == 0, 120, "the restarted worker to drain")
        finally:
            code = stop_process(worker)

    # Assert: nothing lost; at most the one batch in flight at the kill arrived twice
    got = vm.export()
    want = expected(total)
    assert 0 < depth_at_kill < total
    assert code == 0
    assert {s: sorted(set(ts)) for s, ts in got.items()} == want
    resent = sum(len(ts) for ts in got.values()) - total
    assert 0 <= resent <= batch
