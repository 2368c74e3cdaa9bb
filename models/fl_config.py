"""Typed view of the Flower run config (``[tool.flwr.app.config]``), shared by both apps.

Flower hands the run config over as a flat ``{kebab-case key: scalar}`` mapping; both the
ServerApp and the ClientApp parse it here so they cannot disagree about a default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from models.errors import SignalError
from models.network import NetworkConfig

DEFAULT_CLASSES = ("normal", "inner_race", "outer_race", "ball")


@dataclass(frozen=True)
class RunConfig:
    """Hyper-parameters of a federated run (see pyproject's ``[tool.flwr.app.config]``)."""

    num_server_rounds: int = 3
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-3
    min_sites: int = 2
    fraction_train: float = 1.0
    registry_dir: str = "var/registry"
    sample_rate_hz: float = 12_000.0
    window_samples: int = 2048
    class_names: tuple[str, ...] = DEFAULT_CLASSES
    eval_fraction: float = 0.2
    seed: int = 0
    round_timeout_s: float = 600.0
    signing_key: str = ""  # Ed25519 private key (PEM) that signs published models; "": unsigned

    def __post_init__(self) -> None:
        if self.num_server_rounds < 1 or self.local_epochs < 1 or self.batch_size < 2:
            raise SignalError("num-server-rounds, local-epochs >= 1 and batch-size >= 2")
        if not 0 < self.learning_rate < 1:
            raise SignalError(f"learning-rate must be in (0, 1), got {self.learning_rate}")
        if self.min_sites < 1 or not 0 < self.fraction_train <= 1:
            raise SignalError("min-sites >= 1 and fraction-train in (0, 1]")
        if not 0 < self.eval_fraction < 1:
            raise SignalError(f"eval-fraction must be in (0, 1), got {self.eval_fraction}")
        if not math.isfinite(self.sample_rate_hz) or self.sample_rate_hz <= 0:
            raise SignalError(f"sample-rate-hz must be positive, got {self.sample_rate_hz}")
        if not math.isfinite(self.round_timeout_s) or self.round_timeout_s <= 0:
            raise SignalError(f"round-timeout-s must be positive, got {self.round_timeout_s}")
        names = self.class_names
        if len(names) < 2 or len(set(names)) != len(names):
            raise SignalError(f"class-names needs two or more distinct names, got {names}")
        if "normal" in names and names[0] != "normal":
            raise SignalError("class-names must list 'normal' first")
        self.network  # noqa: B018 - validates window-samples against the network's limits

    @property
    def network(self) -> NetworkConfig:
        """Network shape implied by this run."""
        return NetworkConfig(n_classes=len(self.class_names), window_samples=self.window_samples)

    @classmethod
    def from_run_config(cls, raw: Mapping[str, object]) -> RunConfig:
        """Parse Flower's run config; unknown keys are ignored, wrong types raise."""
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in raw:
                continue
            value = raw[key]
            try:
                if f.name == "class_names":
                    names = tuple(s.strip() for s in str(value).split(",") if s.strip())
                    kwargs[f.name] = names
                elif f.type in ("int", int):
                    kwargs[f.name] = int(str(value))
                elif f.type in ("float", float):
                    kwargs[f.name] = float(str(value))
                else:
                    kwargs[f.name] = str(value)
            except ValueError as exc:
                raise SignalError(f"run config {key}={value!r}: {exc}") from exc
        return cls(**kwargs)  # type: ignore[arg-type]
