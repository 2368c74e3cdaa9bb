"""Typed settings of the serving API, read from ``FEDPM_SERVE_*`` environment variables.

Reach them through :func:`get_settings` (cached) rather than a module-level instance, so tests
and the CLI can build their own :class:`ServeSettings` and hand it to
:func:`serving.app.create_app`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serving.egress import EgressPolicy, parse_networks

MiB = 1024 * 1024

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ServeSettings(BaseSettings):
    """Settings of one serving process.

    Parameters
    ----------
    registry_dir
        Root of the :class:`~models.registry.FileRegistry` to serve models from.
    host, port
        Address uvicorn binds to (loopback by default; put a TLS proxy in front otherwise).
    max_windows_per_request
        Largest batch one prediction request may carry.
    max_body_bytes
        Largest request body accepted, in bytes; larger bodies get ``413``.
    onnx_threads
        onnxruntime intra-op threads per inference.
    log_level, log_json
        Logging level, and one JSON object per line instead of plain text.
    state_path
        SQLite file of the service's state (API keys, assets); created if missing.
    rate_limit_per_minute
        Requests a minute an API key may make unless the key sets its own (0: no limit).
    model_poll_s
        Seconds between checks of the registry for a new version (0: load once at start).
    model_verify_key
        Ed25519 public key (PEM) every served model's card signature must verify against;
        None serves unsigned models (sha256 is always checked).
    delivery_enabled
        Run the webhook delivery worker in this process (docs/erp-integration.md).
    delivery_timeout_s
        Seconds one webhook POST may take, connecting included.
    delivery_backoff_base_s, delivery_backoff_cap_s
        Retry ``n`` waits ``min(cap, base * 2**(n-1))`` times a random factor in [0.5, 1].
    delivery_max_attempts, delivery_max_age_s
        A delivery is dead-lettered after this many attempts, or this long after it was queued.
    delivery_poll_s
        Longest time between looks at the outbox when it is idle: a request queued in this
        process wakes the worker at once, and a retry wakes it when it falls due; this bounds
        how late rows another replica left behind are picked up.
    delivery_lease_s
        How long a claimed outbox row is held by this process before another may take it.
    webhook_allowed_networks
        Networks (CIDR) besides public addresses that webhooks may be delivered to, e.g. the
        plant network of an on-premises SAP or Maximo: ``10.20.0.0/16,10.30.0.0/16`` (or a
        JSON list) in the environment. Loopback, private, link-local and reserved addresses
        are refused unless listed (:mod:`serving.egress`).
    workers
        uvicorn worker processes. Above 1, ``/metrics`` sums every worker's figures
        (prometheus_client's multiprocess mode, in ``PROMETHEUS_MULTIPROC_DIR`` or a temporary
        folder); each worker keeps its own rate-limit buckets (a key gets up to ``workers``
        times its rate), model poller and delivery worker (outbox rows are leased).
    """

    model_config = SettingsConfigDict(env_prefix="FEDPM_SERVE_", extra="ignore", frozen=True)

    registry_dir: Path = Path("var/registry")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_windows_per_request: int = Field(default=256, ge=1, le=100_000)
    max_body_bytes: int = Field(default=32 * MiB, ge=1024)
    onnx_threads: int = Field(default=1, ge=1, le=256)
    log_level: LogLevel = "INFO"
    log_json: bool = False
    state_path: Path = Path("var/serving/state.sqlite")
    rate_limit_per_minute: int = Field(default=6000, ge=0, le=10_000_000)
    model_poll_s: float = Field(default=10.0, ge=0, le=86_400)
    model_verify_key: Path | None = None
    delivery_enabled: bool = True
    delivery_timeout_s: float = Field(default=10.0, gt=0, le=300)
    delivery_backoff_base_s: float = Field(default=2.0, gt=0, le=3600)
    delivery_backoff_cap_s: float = Field(default=600.0, gt=0, le=86_400)
    delivery_max_attempts: int = Field(default=1000, ge=1, le=100_000)
    delivery_max_age_s: float = Field(default=3 * 86_400.0, gt=0, le=90 * 86_400)
    delivery_poll_s: float = Field(default=10.0, gt=0, le=3600)
    delivery_lease_s: float = Field(default=60.0, gt=0, le=3600)
    webhook_allowed_networks: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), max_length=256
    )
    workers: int = Field(default=1, ge=1, le=64)

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _network_list(cls, value: object) -> object:
        """From the environment: a JSON list, or networks separated by commas."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not a JSON list of networks: {exc}") from exc
        return tuple(part.strip() for part in text.split(",") if part.strip())

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)  # a clear error at start, not at the first delivery
        return value

    def egress_policy(self) -> EgressPolicy:
        """Where webhooks may be delivered (:mod:`serving.egress`)."""
        return EgressPolicy(parse_networks(self.webhook_allowed_networks))


@lru_cache
def get_settings() -> ServeSettings:
    """Return the process's settings, read once from the environment."""
    return ServeSettings()
