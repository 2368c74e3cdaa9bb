"""ModelSlot (verified hot swap) and Scorer (windows -> scores -> health) with real models."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import CLASSES, FS_HZ, Exported, cwru_or_synthetic

from edge_agent.inference import Scorer
from edge_agent.model_slot import ModelSlot
from edge_agent.publisher import HealthPublisher, MemoryHealthSink
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore
from models.registry import FileRegistry
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
    store: LocalStore, registry: FileRegistry
) -> tuple[Scorer, ModelSlot, MemoryHealthSink]:
    settings = AgentSettings(
        site_id=SITE, store_path=store.path, alarm_persistence=3, health_min_interval_s=0.0
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
