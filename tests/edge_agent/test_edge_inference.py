"""ModelSlot (verified hot swap) and Scorer (windows -> scores -> health) with real models."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_helpers import (
    CLASSES,
    FS_HZ,
    T0_NS,
    AgentProcess,
    Exported,
    MqttProbe,
    cwru_or_synthetic,
    make_frames,
    wait_online,
    wait_until,
)

from edge_agent.errors import ExitCode
from edge_agent.inference import Scorer
from edge_agent.model_slot import ModelSlot
from edge_agent.outbox import Outbox
from edge_agent.publisher import HealthPublisher, MemoryHealthSink
from edge_agent.results import state_changes
from edge_agent.settings import AgentSettings, AssetConfig
from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker
from models.frame import encode_binary, frame_topic
from models.registry import FileRegistry
from models.simulator import BearingSignalStream, FaultMode, MachineProfile
from models.windows import Window, windows_from_record

SITE = "plant-a"


def publish(registry: FileRegistry, model: Exported) -> int:
    return registry.publish(model.data, model.metadata, run_id="edge-test").version


def tamper(registry: FileRegistry, version: int) -> None:
    path = registry.root / "versions" / f"{version:06d}" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def add_cwru_windows(store: LocalStore, asset: str, count: int, fs: float = FS_HZ) -> list[int]:
    n = round(2048 * fs / FS_HZ)
    x = windows_from_record(cwru_or_synthetic(count * n), n)
    step = round(n * 1e9 / fs)
    return store.add_windows(asset, "acc-1", 0, [Window(i * step, fs, w) for i, w in enumerate(x)])


def test_slot_waits_then_loads_and_refuses_a_tampered_version(
    registry: FileRegistry,
    faulty_model: Exported,
    healthy_model: Exported,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare
    slot = ModelSlot(registry.root)

    # Execute
    with caplog.at_level(logging.INFO, logger="edge_agent.model_slot"):
        empty = [slot.poll(), slot.poll()]
        publish(registry, faulty_model)
        loaded_v1 = slot.poll()
        v2 = publish(registry, healthy_model)
        tamper(registry, v2)
        loaded_v2 = slot.poll()
        again = slot.poll()
        v3 = publish(registry, healthy_model)
        loaded_v3 = slot.poll()

    # Assert
    assert empty == [False, False]
    waiting = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waiting) == 1  # said once
    assert loaded_v1 is True
    assert (loaded_v2, again) == (False, False)
    assert slot.refused == {v2}
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 1
    assert "keeping v1" in refusals[0].getMessage()
    assert loaded_v3 is True
    assert slot.current is not None
    assert slot.current.version == v3


def test_slot_falls_back_to_the_newest_valid_version_at_start(
    registry: FileRegistry, faulty_model: Exported
) -> None:
    # Prepare
    publish(registry, faulty_model)
    tamper(registry, publish(registry, faulty_model))

    # Execute
    slot = ModelSlot(registry.root)
    slot.poll()

    # Assert
    assert slot.current is not None
    assert slot.current.version == 1


def make_scorer(
    store: LocalStore, registry: FileRegistry, **overrides: Any
) -> tuple[Scorer, ModelSlot, MemoryHealthSink]:
    settings = AgentSettings(
        site_id=SITE,
        store_path=store.path,
        alarm_persistence=3,
        health_min_interval_s=0.0,
        **overrides,
    )
    slot = ModelSlot(registry.root)
    slot.poll()
    sink = MemoryHealthSink()
    return Scorer(store, slot, HealthPublisher(sink, SITE, 0.0), settings), slot, sink


def test_scorer_stores_scores_and_raises_an_alarm(
    store: LocalStore, registry: FileRegistry, faulty_model: Exported
) -> None:
    # Prepare
    publish(registry, faulty_model)
    ids = add_cwru_windows(store, "pump-1", 5)
    scorer, _, sink = make_scorer(store, registry)

    # Execute
    consumed = scorer.step()
    idle = scorer.step()

    # Assert
    assert (consumed, idle) == (5, 0)
    assert store.count_scores() == 5
    score = store.scores(ids[0])[0]
    assert score.model_version == 1
    assert score.predicted == "inner_race"
    assert set(score.probabilities) == set(CLASSES)
    assert score.failure_probability == pytest.approx(1 - score.probabilities["normal"])
    states = [json.loads(p)["state"] for _, p in sink.messages]
    assert states == ["warning", "warning", "alarm", "alarm", "alarm"]
    assert {t for t, _ in sink.messages} == {f"fedpm/v1/{SITE}/pump-1/health"}


def test_scorer_resamples_windows_and_tracks_assets_apart(
    store: LocalStore, registry: FileRegistry, healthy_model: Exported
) -> None:
    # Prepare: pump-1 at 12 kHz, pump-2 at 48 kHz (8192-sample windows)
    publish(registry, healthy_model)
    add_cwru_windows(store, "pump-1", 2)
    add_cwru_windows(store, "pump-2", 2, fs=48_000.0)
    scorer, _, sink = make_scorer(store, registry)

    # Execute
    scorer.step()

    # Assert
    assert store.count_scores() == 4
    by_asset: dict[str, list[dict[str, object]]] = {}
    for topic, payload in sink.messages:
        by_asset.setdefault(topic.split("/")[3], []).append(json.loads(payload))
    assert sorted(by_asset) == ["pump-1", "pump-2"]
    assert all(m["state"] == "normal" for msgs in by_asset.values() for m in msgs)


def test_scorer_resumes_after_the_last_scored_window(
    tmp_path: Path, registry: FileRegistry, healthy_model: Exported
) -> None:
    # Prepare
    publish(registry, healthy_model)
    with LocalStore(tmp_path / "s.sqlite") as store:
        add_cwru_windows(store, "pump-1", 3)
        scorer, _, _ = make_scorer(store, registry)
        scorer.step()
        later = add_cwru_windows(store, "pump-1", 2)

    # Execute: a restarted worker
    with LocalStore(tmp_path / "s.sqlite") as store:
        scorer, _, sink = make_scorer(store, registry)
        cursor = scorer.cursor
        consumed = scorer.step()

    # Assert
    assert cursor == later[0] - 1
    assert consumed == 2
    assert len(sink.messages) == 2


def test_scorer_without_a_model_does_nothing(store: LocalStore, registry: FileRegistry) -> None:
    # Prepare
    add_cwru_windows(store, "pump-1", 2)
    scorer, slot, sink = make_scorer(store, registry)

    # Execute
    consumed = scorer.step()

    # Assert
    assert slot.current is None
    assert consumed == 0
    assert sink.messages == []
    assert store.count_scores() == 0
    assert np.isfinite(store.unscored_windows(0)[0].samples).all()


# --- evidence, baselines, alarms, telemetry ---------------------------------------------------

PUMP = AssetConfig(bearing="6205", rpm=1797.0, machine_group=2, mounting="rigid")


def add_simulated_windows(
    store: LocalStore,
    stream: BearingSignalStream,
    count: int,
    mode: FaultMode = "normal",
    severity: float = 0.0,
    *,
    first: int = 0,
) -> list[int]:
    step = round(2048 * 1e9 / FS_HZ)
    windows = [
        Window(T0_NS + (first + k) * step, FS_HZ, stream.next(2048, mode, severity))
        for k in range(count)
    ]
    return store.add_windows("pump-1", "acc-1", 0, windows)


def drain(scorer: Scorer) -> None:
    while scorer.step():
        pass


def test_alarm_carries_the_envelope_evidence_and_is_recorded(
    store: LocalStore, registry: FileRegistry, faulty_model: Exported
) -> None:
    # Prepare: a pump with a 6205 at 1797 rpm and an outer-race defect
    publish(registry, faulty_model)
    stream = BearingSignalStream(MachineProfile(rpm=1797.0), np.random.default_rng(0))
    ids = add_simulated_windows(store, stream, 8, "outer_race", 0.4)
    scorer, _, sink = make_scorer(store, registry, assets={"pump-1": PUMP})

    # Execute
    drain(scorer)

    # Assert: the latest message names BPFO; the store holds features and the changes
    last = json.loads(sink.messages[-1][1])
    assert last["state"] == "alarm"
    assert last["cause"] == "model"
    assert last["evidence"]["defect"] == "outer_race"
    assert last["evidence"]["defect_frequency"] == "BPFO"
    assert last["evidence"]["iso_zone"] in {"A", "B", "C", "D"}
    assert last["anomaly_score"] is None  # too few windows for a baseline
    with store.reader() as conn:
        changes = state_changes(conn, "pump-1")
        n_features = conn.execute("SELECT count(*) FROM features").fetchone()[0]
        features = json.loads(
            conn.execute(
                "SELECT values_json FROM features WHERE window_id = ?", (ids[-1],)
            ).fetchone()[0]
        )
    assert [state for state, _ in changes] == ["warning", "alarm"]
    assert changes[-1][1]["previous_state"] == "warning"
    assert changes[-1][1]["evidence"]["velocity_rms_mm_s"] > 0
    assert n_features == 8
    assert {"rms_g", "kurtosis", "crest_factor", "velocity_rms_mm_s"} <= set(features)


def test_inference_counters_form_a_cumulative_histogram(
    store: LocalStore, registry: FileRegistry, healthy_model: Exported
) -> None:
    # Prepare
    publish(registry, healthy_model)
    add_cwru_windows(store, "pump-1", 5)
    scorer, _, _ = make_scorer(store, registry, inference_batch=2)

    # Execute
    drain(scorer)

    # Assert
    counters = store.counters()
    assert counters["inference_batches"] == 3
    assert counters["inference_windows"] == 5
    assert counters["inference_latency_le_inf"] == 3
    assert counters["inference_latency_us_sum"] > 0
    buckets = [
        counters.get(f"inference_latency_le_{ms}", 0)
        for ms in (5, 10, 25, 50, 100, 250, 500, 1000, 2500)
    ]
    assert buckets == sorted(buckets)
    assert buckets[-1] <= 3


def test_telemetry_goes_to_the_outbox_only_when_a_sink_is_configured(
    tmp_path: Path, registry: FileRegistry, faulty_model: Exported
) -> None:
    # Prepare
    publish(registry, faulty_model)
    with LocalStore(tmp_path / "off.sqlite") as off, LocalStore(tmp_path / "on.sqlite") as on:
        add_cwru_windows(off, "pump-1", 4)
        add_cwru_windows(on, "pump-1", 4)
        quiet, _, _ = make_scorer(off, registry)
        telemetry, _, _ = make_scorer(on, registry, influx_url="http://127.0.0.1:1")

        # Execute
        drain(quiet)
        drain(telemetry)

        # Assert
        assert Outbox(off, 1000).depth() == 0
        lines = [line for _, line in Outbox(on, 1000).peek(100)]
    measurements = [line.split(",", 1)[0] for line in lines]
    assert measurements.count("fedpm_features") == 4
    assert measurements.count("fedpm_scores") == 4
    assert measurements.count("fedpm_health") == 2  # normal -> warning -> alarm
    assert any('state="alarm"' in line for line in lines)


def test_normal_class_with_a_persistent_anomaly_raises_an_alarm(
    store: LocalStore, registry: FileRegistry, healthy_model: Exported
) -> None:
    # Prepare: the model always says normal; 80 healthy windows fit the baseline, then a defect
    publish(registry, healthy_model)
    stream = BearingSignalStream(MachineProfile(rpm=1797.0), np.random.default_rng(0))
    add_simulated_windows(store, stream, 80)
    scorer, _, sink = make_scorer(
        store, registry, anomaly_false_alarm_rate=0.05, baseline_min_windows=64
    )
    drain(scorer)
    healthy_states = {json.loads(p)["state"] for _, p in sink.messages}
    sink.messages.clear()
    add_simulated_windows(store, stream, 8, "outer_race", 1.0, first=80)

    # Execute
    drain(scorer)

    # Assert
    messages = [json.loads(p) for _, p in sink.messages]
    assert healthy_states == {"normal"}
    assert [m["predicted_class"] for m in messages] == ["normal"] * 8
    assert all(m["anomaly_score"] > m["anomaly_threshold"] for m in messages)
    assert [m["state"] for m in messages] == ["normal", "normal"] + ["warning"] * 3 + ["alarm"] * 3
    assert messages[-1]["cause"] == "anomaly"


def test_restarted_scorer_resumes_the_recorded_state(
    tmp_path: Path, registry: FileRegistry, faulty_model: Exported
) -> None:
    # Prepare: an alarm recorded by a first worker
    publish(registry, faulty_model)
    with LocalStore(tmp_path / "s.sqlite") as store:
        add_cwru_windows(store, "pump-1", 3)
        first, _, _ = make_scorer(store, registry)
        drain(first)

    # Execute: a restarted worker sees one more faulty window
    with LocalStore(tmp_path / "s.sqlite") as store:
        step = round(2048 * 1e9 / FS_HZ)
        x = cwru_or_synthetic(2048)
        store.add_windows("pump-1", "acc-1", 0, [Window(10 * step, FS_HZ, x)])
        scorer, _, sink = make_scorer(store, registry)
        drain(scorer)
        with store.reader() as conn:
            changes = state_changes(conn, "pump-1")

    # Assert: still an alarm, and no new state change recorded
    assert json.loads(sink.messages[-1][1])["state"] == "alarm"
    assert [state for state, _ in changes] == ["warning", "alarm"]


# --- the whole agent --------------------------------------------------------------------------


@pytest.mark.integration
def test_agent_publishes_a_retained_alarm_with_bpfo_evidence(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    faulty_model: Exported,
) -> None:
    # Prepare: a pump with a 6205 at 1797 rpm whose outer race is damaged; a model that
    # always says inner_race; 8 windows of 2048 samples sent as 512-sample frames
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(faulty_model.data, faulty_model.metadata, run_id="edge-test")
    config = tmp_path / "agent.toml"
    config.write_text('[assets.pump-7]\nbearing = "6205"\nrpm = 1797.0\n', encoding="utf-8")
    store_path = tmp_path / "store.sqlite"
    stream = BearingSignalStream(MachineProfile(rpm=1797.0), np.random.default_rng(0))
    frames = make_frames(stream.next(8 * 2048, "outer_race", 0.4), 512, asset="pump-7")
    topic = frame_topic(SITE, "pump-7", "acc-1")
    health_topic = f"fedpm/v1/{SITE}/pump-7/health"
    last_window_ns = frames[-4].timestamp_ns
    probe = mqtt_probe()
    agent = start_agent(
        "--config", str(config),
        "--site", SITE,
        "--mqtt-port", str(broker.port),
        "--store", str(store_path),
        "--registry", str(registry.root),
        "--model-poll-s", "0.5",
    )  # fmt: skip
    wait_online(probe, agent, SITE)

    probe.subscribe(health_topic)

    # Execute
    for f in frames:
        probe.publish(topic, encode_binary(f), wait=False)
    try:
        wait_until(
            lambda: any(
                json.loads(m.payload)["window_start_ns"] == last_window_ns
                for m in probe.received(health_topic)
            ),
            60,
            "the health of the last window",
        )
    except AssertionError:
        raise AssertionError(agent.log()) from None
    late = mqtt_probe()  # subscribes after the fact: gets the retained message
    late.subscribe(health_topic)
    wait_until(lambda: bool(late.received(health_topic)), 10, "retained health")

    # Assert
    retained = late.received(health_topic)[0]
    message = json.loads(retained.payload)
    assert retained.retain is True
    assert message["window_start_ns"] == last_window_ns
    assert message["state"] == "alarm"
    assert message["cause"] == "model"
    assert message["evidence"]["defect_frequency"] == "BPFO"
    assert message["evidence"]["defect"] == "outer_race"
    assert message["evidence"]["iso_zone"] in {"A", "B", "C", "D"}
    with LocalStore(store_path, readonly=True) as store, store.reader() as conn:
        changes = state_changes(conn, "pump-7")
    assert [state for state, _ in changes] == ["warning", "alarm"]
    assert agent.stop() == ExitCode.SUCCESS
