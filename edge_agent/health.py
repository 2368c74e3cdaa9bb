"""Per-asset health state from a stream of scored windows, with a persistence rule.

A window is *faulty* when the model predicts a class other than the normal one with a failure
probability of at least ``fault_threshold``. One faulty window moves a normal asset to
``warning``; ``persistence`` consecutive faulty windows raise ``alarm``; ``persistence``
consecutive healthy windows bring it back to ``normal``. Between those, the state holds, so one
noisy window neither raises nor clears an alarm (hysteresis). Pure: no I/O, no clock.

Examples
--------
>>> t = HealthTracker(persistence=2)
>>> [t.update("inner_race", 0.9).state for _ in range(2)]
['warning', 'alarm']
>>> [t.update("normal", 0.1).state for _ in range(2)]
['alarm', 'normal']
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.messages import HealthState
from models.metadata import NORMAL_CLASS


@dataclass(frozen=True)
class HealthUpdate:
    """The state after one window, and whether that window changed it."""

    state: HealthState
    changed: bool


class HealthTracker:
    """Health state machine of one asset.

    Parameters
    ----------
    persistence
        Consecutive faulty windows that raise an alarm, and consecutive healthy windows that
        clear a warning or an alarm (>= 1).
    normal_class
        Name of the healthy class.
    fault_threshold
        Minimum failure probability (0..1) for a non-normal prediction to count as faulty.
    """

    def __init__(
        self,
        persistence: int = 3,
        *,
        normal_class: str = NORMAL_CLASS,
        fault_threshold: float = 0.5,
    ) -> None:
        if persistence < 1:
            raise ValueError(f"persistence must be >= 1, got {persistence}")
        if not 0.0 <= fault_threshold <= 1.0:
            raise ValueError(f"fault_threshold must be in [0, 1], got {fault_threshold}")
        self.persistence = persistence
        self.normal_class = normal_class
        self.fault_threshold = fault_threshold
        self.state: HealthState = "normal"
        self._faulty_run = 0
        self._healthy_run = 0

    def is_faulty(self, predicted_class: str, failure_probability: float) -> bool:
        """Whether one window counts as faulty."""
        return predicted_class != self.normal_class and failure_probability >= self.fault_threshold

    def update(self, predicted_class: str, failure_probability: float) -> HealthUpdate:
        """Feed the next scored window of this asset and return the resulting state."""
        before = self.state
        if self.is_faulty(predicted_class, failure_probability):
            self._faulty_run += 1
            self._healthy_run = 0
            if self._faulty_run >= self.persistence:
                self.state = "alarm"
            elif self.state == "normal":
                self.state = "warning"
        else:
            self._healthy_run += 1
            self._faulty_run = 0
            if self._healthy_run >= self.persistence:
                self.state = "normal"
        return HealthUpdate(self.state, self.state != before)
