"""Typed settings of the edge agent (environment variables ``FEDPM_EDGE_*``, then CLI flags).

Examples
--------
>>> s = AgentSettings(site_id="plant-a", store_path="/tmp/a.sqlite")
>>> s.client_id, s.mqtt_port
('fedpm-edge-plant-a', 1883)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge_agent.errors import ConfigError

SITE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _default_client_id(data: dict[str, Any]) -> str:
    return f"fedpm-edge-{data.get('site_id', 'unknown')}"


def _default_store_path(data: dict[str, Any]) -> Path:
    return Path("var") / "edge" / str(data.get("site_id", "unknown")) / "store.sqlite"


class AgentSettings(BaseSettings):
    """Settings of one edge agent (one site).

    Every field can be set as ``FEDPM_EDGE_<NAME>`` (e.g. ``FEDPM_EDGE_SITE_ID``); keyword
    arguments (the CLI flags) override the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix="FEDPM_EDGE_", extra="forbid", frozen=True, validate_default=True
    )

    site_id: str = Field(pattern=SITE_PATTERN, description="this site's id (MQTT topic level)")
    environment: Literal["development", "production"] = "development"

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    client_id: str = Field(
        default_factory=_default_client_id,
        pattern=r"^[A-Za-z0-9_.:-]{1,100}$",
        description="stable MQTT client id base; workers append -ingest, -inference, -status",
    )
    session_expiry_s: int = Field(default=86_400, ge=0, description="broker keeps the session")
    connect_timeout_s: float = Field(default=30.0, gt=0, description="first-connection deadline")
    reconnect_max_delay_s: int = Field(default=30, ge=1)

    store_path: Path = Field(default_factory=_default_store_path)
    registry_dir: Path | None = None
    window_samples: int = Field(default=2048, ge=16, le=1 << 20)
    model_poll_s: float = Field(default=2.0, gt=0)
    inference_batch: int = Field(default=64, ge=1, le=4096)
    alarm_persistence: int = Field(default=3, ge=1, description="consecutive windows")
    fault_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    health_min_interval_s: float = Field(default=1.0, ge=0.0)

    log_level: LogLevel = "INFO"
    log_json: bool = False

    @model_validator(mode="after")
    def _enforce_secure_outside_development(self) -> AgentSettings:
        if self.environment != "development":
            if not self.mqtt_tls:
                raise ValueError("mqtt_tls must be enabled outside development")
            if self.mqtt_username is None or self.mqtt_password is None:
                raise ValueError("MQTT credentials are required outside development")
        if (self.mqtt_username is None) != (self.mqtt_password is None):
            raise ValueError("set both mqtt_username and mqtt_password, or neither")
        return self

    @property
    def ingest_client_id(self) -> str:
        """Client id of the ingest worker (persistent session)."""
        return f"{self.client_id}-ingest"

    @property
    def inference_client_id(self) -> str:
        """Client id of the inference worker (publishes health)."""
        return f"{self.client_id}-inference"

    @property
    def status_client_id(self) -> str:
        """Client id of the supervisor (agent status and last will)."""
        return f"{self.client_id}-status"


def load_settings(**overrides: Any) -> AgentSettings:
    """Build settings from the environment with ``overrides`` (CLI flags) on top.

    ``None`` overrides are ignored, so optional CLI flags can be passed straight through.

    Raises
    ------
    ConfigError
        The settings are invalid (the message lists every problem).
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return AgentSettings(**given)
    except ValidationError as exc:
        raise ConfigError(f"invalid edge agent settings: {exc}") from exc


@lru_cache
def get_settings() -> AgentSettings:
    """Settings from the environment, built once (tests call ``get_settings.cache_clear()``)."""
    return load_settings()
