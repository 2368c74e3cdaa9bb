"""Per-asset health state from a stream of scored windows, with a persistence rule.

Each window is one of three kinds:

* *faulty*: the model predicts a class other than the normal one with a failure probability of
  at least ``fault_threshold``;
* *anomalous*: not faulty, but its anomaly score is above the asset's baseline threshold (the
  window is unlike the asset's own healthy windows, whatever the model's class);
* *healthy*: neither.

The rule, with ``P = persistence``:

========================================================  ==========================
windows                                                   state
========================================================  ==========================
one faulty window (from normal)                           ``warning``
``P`` consecutive faulty windows                          ``alarm``
``P`` consecutive faulty-or-anomalous windows (normal)    ``warning``
``2 P`` consecutive faulty-or-anomalous windows           ``alarm``
``P`` consecutive healthy windows                         ``normal``
========================================================  ==========================

Between those the state holds, so one noisy window neither raises nor clears an alarm
(hysteresis). Anomalies need ``P`` windows in a row even for a warning because the threshold
is calibrated to flag a share ``r`` (``anomaly_false_alarm_rate``) of healthy windows: about
``r**P`` of healthy windows would start a false warning if they were independent (1e-6 for
``r = 0.01``, ``P = 3``), against ``r`` with a one-window rule. ``cause`` says what holds the
asset out of normal: ``model`` once a faulty window has counted since the asset was last
normal, else ``anomaly``.
Pure: no I/O, no clock.

Examples
--------
>>> t = HealthTracker(persistence=2)
>>> [t.update("inner_race", 0.9).state for _ in range(2)]
['warning', 'alarm']
>>> [t.update("normal", 0.1).state for _ in range(2)]
['alarm', 'normal']
>>> [t.update("normal", 0.1, anomalous=True).state for _ in range(4)]
['normal', 'warning', 'warning', 'alarm']
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.messages import HealthCause, HealthState
from models.metadata import NORMAL_CLASS


@dataclass(frozen=True)
class HealthUpdate:
    """The state after one window, whether that window changed it, and what holds it."""

    state: HealthState
    changed: bool
    cause: HealthCause | None = None


class HealthTracker:
    """Health state machine of one asset (see the module docstring for the rule).

    Parameters
    ----------
    persistence
        Consecutive faulty windows that raise an alarm, and consecutive healthy windows that
        clear a warning or an alarm (>= 1).
    normal_class
        Name of the healthy class.
    fault_threshold
        Minimum failure probability (0..1) for a non-normal prediction to count as faulty.
    state
        Starting state (a restarted worker resumes the state it last recorded).
    """

    def __init__(
        self,
        persistence: int = 3,
        *,
        normal_class: str = NORMAL_CLASS,
        fault_threshold: float = 0.5,
        state: HealthState = "normal",
    ) -> None:
        if persistence < 1:
            raise ValueError(f"persistence must be >= 1, got {persistence}")
        if not 0.0 <= fault_threshold <= 1.0:
            raise ValueError(f"fault_threshold must be in [0, 1], got {fault_threshold}")
        if state not in ("normal", "warning", "alarm"):
            raise ValueError(f"state must be normal, warning or alarm, got {state!r}")
        self.persistence = persistence
        self.normal_class = normal_class
        self.fault_threshold = fault_threshold
        self.state: HealthState = state
        self.cause: HealthCause | None = None if state == "normal" else "model"
        self._faulty_run = 0
        self._abnormal_run = 0  # faulty or anomalous
        self._healthy_run = 0

    def is_faulty(self, predicted_class: str, failure_probability: float) -> bool:
        """Whether one window counts as faulty (by the model's verdict alone)."""
        return predicted_class != self.normal_class and failure_probability >= self.fault_threshold

    def update(
        self, predicted_class: str, failure_probability: float, *, anomalous: bool = False
    ) -> HealthUpdate:
        """Feed the next scored window of this asset and return the resulting state.

        ``anomalous`` is whether the window's anomaly score is above the asset's threshold
        (``False`` while no baseline is fitted).
        """
        before = self.state
        faulty = self.is_faulty(predicted_class, failure_probability)
        if faulty or anomalous:
            self._abnormal_run += 1
            self._faulty_run = self._faulty_run + 1 if faulty else 0
            self._healthy_run = 0
            p = self.persistence
            if self._faulty_run >= p or self._abnormal_run >= 2 * p:
                self.state = "alarm"
            elif self.state == "normal" and (faulty or self._abnormal_run >= p):
                self.state = "warning"
            if faulty and self.state != "normal":
                self.cause = "model"
            elif self.state != "normal" and self.cause is None:
                self.cause = "anomaly"
        else:
            self._healthy_run += 1
            self._faulty_run = 0
            self._abnormal_run = 0
            if self._healthy_run >= self.persistence:
                self.state = "normal"
                self.cause = None
        return HealthUpdate(self.state, self.state != before, self.cause)
