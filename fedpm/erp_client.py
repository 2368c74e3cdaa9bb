"""An ERP-style client of the prediction API, used by the demo to check the served model."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import numpy as np
import numpy.typing as npt

from fedpm.scenario import HELD_OUT_PROFILE, HELD_OUT_SEED
from models.simulator import FAULT_MODES, BearingSignalStream, FaultMode
from models.windows import windows_from_record


@dataclass
class ClassResult:
    """Predictions for the windows of one true class."""

    true_class: str
    predicted: list[str] = field(default_factory=list)
    failure_probability: list[float] = field(default_factory=list)
    severity: list[float] = field(default_factory=list)

    @property
    def correct(self) -> int:
        """How many windows were predicted as their true class."""
        return sum(p == self.true_class for p in self.predicted)


@dataclass
class HeldOutReport:
    """The held-out check: per-class results and the model version that served them."""

    model_version: str
    results: list[ClassResult]
    example: dict[str, object]

    @property
    def accuracy(self) -> float:
        """Window-level accuracy over every class."""
        total = sum(len(r.predicted) for r in self.results)
        return sum(r.correct for r in self.results) / total if total else float("nan")

    def accuracy_by_severity(self) -> dict[float, float]:
        """Accuracy on faulty windows, per simulated fault severity."""
        hits: dict[float, list[bool]] = {}
        for r in self.results:
            for predicted, severity in zip(r.predicted, r.severity, strict=True):
                if severity > 0:
                    hits.setdefault(severity, []).append(predicted == r.true_class)
        return {s: sum(h) / len(h) for s, h in sorted(hits.items())}


HELD_OUT_SEVERITIES = (0.3, 0.5, 0.8)


def held_out_windows(
    mode: str, n_windows: int, window_samples: int, severity: float = 0.5
) -> npt.NDArray[np.float32]:
    """Fresh windows of ``mode`` from a machine no site has (other rpm, resonance, seed)."""
    if mode not in FAULT_MODES:
        raise ValueError(f"the simulator has no fault mode {mode!r}")
    fault: FaultMode = mode
    seed = HELD_OUT_SEED + FAULT_MODES.index(fault)
    stream = BearingSignalStream(HELD_OUT_PROFILE, np.random.default_rng(seed))
    record = stream.next(n_windows * window_samples, fault, 0.0 if mode == "normal" else severity)
    return windows_from_record(record, window_samples)


def check_held_out(
    base_url: str,
    class_names: tuple[str, ...],
    *,
    windows_per_class: int,
    window_samples: int,
    severities: tuple[float, ...] = HELD_OUT_SEVERITIES,
    timeout_s: float = 60.0,
    api_key: str,
) -> HeldOutReport:
    """POST held-out windows of each class to ``/v1/predictions`` and collect the answers.

    ``api_key`` needs the ``predict`` permission (``python -m serving keys create``).

    Faulty windows are spread over ``severities`` (the sites trained on 0.4-0.7), so the
    report also says how early in a fault's growth the model recognises it.
    """
    results: list[ClassResult] = []
    version = ""
    example: dict[str, object] = {}
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, timeout=timeout_s, headers=headers) as client:
        for name in class_names:
            levels = (0.0,) if name == "normal" else severities
            per_level = max(1, windows_per_class // len(levels))
            windows = np.concatenate(
                [held_out_windows(name, per_level, window_samples, s) for s in levels]
            )
            body = {
                "sample_rate_hz": HELD_OUT_PROFILE.sample_rate_hz,
                "units": "g",
                "windows": windows.tolist(),
            }
            response = client.post("/v1/predictions", json=body)
            response.raise_for_status()
            payload = response.json()
            version = payload["model_version"]
            result = ClassResult(name, severity=[s for s in levels for _ in range(per_level)])
            for p in payload["predictions"]:
                result.predicted.append(p["predicted_class"])
                result.failure_probability.append(float(p["failure_probability"]))
            if not example and name != class_names[0]:
                example = {"model_version": version, "prediction": payload["predictions"][0]}
            results.append(result)
    return HeldOutReport(version, results, example)
