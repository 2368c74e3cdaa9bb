"""HealthTracker's persistence rule and HealthPublisher's rate limit."""

from __future__ import annotations

import json

import pytest

from edge_agent.health import HealthTracker
from edge_agent.messages import Evidence, Health
from edge_agent.publisher import HealthPublisher, MemoryHealthSink

FAULT = ("inner_race", 0.95)
OK = ("normal", 0.05)


def feed(tracker: HealthTracker, windows: list[tuple[str, float]]) -> list[str]:
    return [tracker.update(*w).state for w in windows]


def test_starts_normal_and_stays_normal_on_healthy_windows() -> None:
    # Prepare
    tracker = HealthTracker(3)

    # Execute
    states = feed(tracker, [OK] * 5)

    # Assert
    assert tracker.state == "normal"
    assert states == ["normal"] * 5


def test_alarm_only_after_n_consecutive_faulty_windows() -> None:
    # Prepare
    tracker = HealthTracker(3)

    # Execute
    states = feed(tracker, [FAULT, FAULT, OK, FAULT, FAULT, FAULT])

    # Assert
    assert states == ["warning", "warning", "warning", "warning", "warning", "alarm"]


def test_alarm_clears_only_after_n_consecutive_healthy_windows() -> None:
    # Prepare
    tracker = HealthTracker(3)
    feed(tracker, [FAULT] * 3)

    # Execute
    states = feed(tracker, [OK, OK, FAULT, OK, OK, OK])

    # Assert
    assert states == ["alarm", "alarm", "alarm", "alarm", "alarm", "normal"]


def test_warning_returns_to_normal_after_n_healthy_windows() -> None:
    # Prepare
    tracker = HealthTracker(2)

    # Execute
    states = feed(tracker, [FAULT, OK, OK])

    # Assert
    assert states == ["warning", "warning", "normal"]


def test_changed_flag_marks_transitions_only() -> None:
    # Prepare
    tracker = HealthTracker(2)

    # Execute
    changes = [tracker.update(*w).changed for w in [OK, FAULT, FAULT, FAULT, OK, OK]]

    # Assert
    assert changes == [False, True, True, False, False, True]


def test_persistence_one_follows_every_window() -> None:
    # Prepare
    tracker = HealthTracker(1)

    # Execute
    states = feed(tracker, [FAULT, OK, FAULT])

    # Assert
    assert states == ["alarm", "normal", "alarm"]


@pytest.mark.parametrize(
    ("window", "faulty"),
    [
        (("inner_race", 0.95), True),
        (("ball", 0.55), False),  # below the 0.6 threshold
        (("normal", 0.7), False),  # normal wins even with a high failure probability
    ],
)
def test_faulty_needs_a_fault_class_and_enough_probability(
    window: tuple[str, float], faulty: bool
) -> None:
    # Prepare
    tracker = HealthTracker(1, fault_threshold=0.6)

    # Execute / Assert
    assert tracker.is_faulty(*window) is faulty


@pytest.mark.parametrize(("persistence", "threshold"), [(0, 0.5), (3, 1.5), (3, -0.1)])
def test_invalid_arguments(persistence: int, threshold: float) -> None:
    with pytest.raises(ValueError, match=r"persistence|fault_threshold"):
        HealthTracker(persistence, fault_threshold=threshold)


# --- publisher ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def health(asset: str, state: str, start: int) -> Health:
    return Health(
        site="plant-a",
        asset_id=asset,
        state=state,  # type: ignore[arg-type]
        predicted_class="normal",
        failure_probability=0.1,
        probabilities={"normal": 0.9, "ball": 0.1},
        model_version=1,
        window_start_ns=start,
        ts_ns=start,
    )


def starts(sink: MemoryHealthSink) -> list[int]:
    return [json.loads(p)["window_start_ns"] for _, p in sink.messages]


def test_publisher_rate_limits_same_state_but_not_changes() -> None:
    # Prepare
    sink, clock = MemoryHealthSink(), FakeClock()
    pub = HealthPublisher(sink, "plant-a", 1.0, clock=clock)

    # Execute
    pub.offer(health("p1", "normal", 1), changed=False)  # first: sent
    clock.now = 0.2
    pub.offer(health("p1", "normal", 2), changed=False)  # held
    pub.offer(health("p1", "normal", 3), changed=False)  # replaces the held one
    pub.offer(health("p2", "normal", 10), changed=False)  # other asset: sent
    clock.now = 0.5
    pub.flush()  # too early
    pub.offer(health("p1", "warning", 4), changed=True)  # state change: sent at once
    clock.now = 1.4
    pub.flush()  # nothing held any more
    pub.offer(health("p1", "warning", 5), changed=False)  # held (0.9 s after the last)
    clock.now = 1.6
    pub.flush()  # now due

    # Assert
    assert starts(sink) == [1, 10, 4, 5]
    assert [t for t, _ in sink.messages] == [
        "fedpm/v1/plant-a/p1/health",
        "fedpm/v1/plant-a/p2/health",
        "fedpm/v1/plant-a/p1/health",
        "fedpm/v1/plant-a/p1/health",
    ]


def test_publisher_republishes_latest_per_asset() -> None:
    # Prepare
    sink, clock = MemoryHealthSink(), FakeClock()
    pub = HealthPublisher(sink, "plant-a", 1.0, clock=clock)
    pub.offer(health("p1", "normal", 1), changed=False)
    pub.offer(health("p1", "normal", 2), changed=False)  # held
    pub.offer(health("p2", "alarm", 3), changed=True)
    sink.messages.clear()

    # Execute
    pub.republish_all()

    # Assert
    assert sorted(starts(sink)) == [2, 3]


def test_health_payload_is_the_documented_json() -> None:
    # Execute
    payload = json.loads(health("p1", "alarm", 7).to_payload())

    # Assert
    assert set(payload) == {
        "v",
        "site",
        "asset_id",
        "state",
        "predicted_class",
        "failure_probability",
        "probabilities",
        "model_version",
        "window_start_ns",
        "ts_ns",
        "cause",
        "anomaly_score",
        "anomaly_threshold",
        "evidence",
    }
    assert payload["v"] == 1
    assert [payload[k] for k in ("cause", "anomaly_score", "evidence")] == [None, None, None]


def test_health_payload_carries_the_evidence() -> None:
    # Prepare
    evidence = Evidence(
        rms_g=0.5,
        kurtosis=7.5,
        crest_factor=6.0,
        velocity_rms_mm_s=3.2,
        iso_zone="C",
        defect="outer_race",
        defect_frequency="BPFO",
        defect_hz=107.1,
        defect_score_db=24.0,
        envelope_window_start_ns=5,
    )
    message = health("p1", "alarm", 7).model_copy(
        update={
            "cause": "model",
            "anomaly_score": 9.5,
            "anomaly_threshold": 4.0,
            "evidence": evidence,
        }
    )

    # Execute
    payload = json.loads(message.to_payload())

    # Assert
    assert payload["evidence"]["defect_frequency"] == "BPFO"
    assert payload["evidence"]["iso_zone"] == "C"
    assert (payload["cause"], payload["anomaly_score"]) == ("model", 9.5)
    assert Health.model_validate_json(message.to_payload()) == message


# --- anomaly rule -----------------------------------------------------------------------------


def feed_anomalies(tracker: HealthTracker, flags: list[bool]) -> list[str]:
    return [tracker.update("normal", 0.05, anomalous=flag).state for flag in flags]


def test_anomalous_normal_windows_warn_after_n_and_alarm_after_2n() -> None:
    # Prepare
    tracker = HealthTracker(3)

    # Execute
    states = feed_anomalies(tracker, [True] * 6)

    # Assert
    assert states == ["normal", "normal", "warning", "warning", "warning", "alarm"]
    assert tracker.cause == "anomaly"


def test_isolated_anomalies_never_warn() -> None:
    # Prepare: a calibrated threshold flags a few healthy windows now and then
    tracker = HealthTracker(3)

    # Execute
    states = feed_anomalies(tracker, [True, True, False] * 10)

    # Assert
    assert set(states) == {"normal"}


def test_anomaly_alarm_clears_after_n_healthy_windows() -> None:
    # Prepare
    tracker = HealthTracker(2)
    feed_anomalies(tracker, [True] * 4)

    # Execute
    states = feed_anomalies(tracker, [False, True, False, False])

    # Assert
    assert states == ["alarm", "alarm", "alarm", "normal"]
    assert tracker.cause is None


def test_a_faulty_window_makes_the_model_the_cause() -> None:
    # Prepare
    tracker = HealthTracker(3)
    feed_anomalies(tracker, [True] * 3)

    # Execute
    update = tracker.update(*FAULT)

    # Assert
    assert (update.state, update.cause) == ("warning", "model")


def test_mixed_faulty_and_anomalous_windows_count_together() -> None:
    # Prepare
    tracker = HealthTracker(2)

    # Execute: F A F A -> faulty runs of 1, abnormal run of 4 = 2P
    states = [
        tracker.update(*FAULT).state,
        tracker.update(*OK, anomalous=True).state,
        tracker.update(*FAULT).state,
        tracker.update(*OK, anomalous=True).state,
    ]

    # Assert
    assert states == ["warning", "warning", "warning", "alarm"]


def test_tracker_resumes_a_recorded_state() -> None:
    # Prepare
    tracker = HealthTracker(2, state="alarm")

    # Execute
    states = feed(tracker, [OK, OK])

    # Assert
    assert states == ["alarm", "normal"]
