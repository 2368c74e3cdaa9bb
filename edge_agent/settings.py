"""Typed settings of the edge agent: TOML file, ``FEDPM_EDGE_*`` environment, CLI flags.

Precedence, highest first: keyword arguments (the CLI flags), environment variables
(``FEDPM_EDGE_<FIELD>``; nested values such as ``assets`` as JSON), the TOML file given to
:func:`load_settings` (top-level keys are field names, ``[assets.<asset-id>]`` tables describe
the monitored machines), then the defaults.

Examples
--------
>>> s = AgentSettings(site_id="plant-a", store_path="/tmp/a.sqlite")
>>> s.client_id, s.mqtt_port
('fedpm-edge-plant-a', 1883)
"""

from __future__ import annotations

import re
import tomllib
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edge_agent.errors import ConfigError

SITE_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
MachineGroup = Literal[1, 2, 3, 4]
Mounting = Literal["rigid", "flexible"]

#: TOML file read by the next :class:`AgentSettings` built in this context (load_settings).
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("fedpm_edge_config_file", default=None)


class AssetConfig(BaseModel):
    """What the agent knows of one monitored machine (``[assets.<asset-id>]`` in the TOML).

    Used for the evidence attached to health messages: the bearing's defect frequencies at
    ``rpm`` and the ISO 10816-3 / 20816-3 zone of the velocity RMS for ``machine_group`` and
    ``mounting``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bearing: str | None = Field(
        default=None,
        description="catalogue name (6205, 6203, ...) or 'n=..,d=..,D=..,angle=..'",
    )
    rpm: float | None = Field(default=None, gt=0, le=200_000)
    machine_group: MachineGroup = 2
    mounting: Mounting = "rigid"


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
    mqtt_cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    mqtt_key_file: Path | None = Field(default=None, description="client private key (PEM)")
    client_id: str = Field(
        default_factory=_default_client_id,
        pattern=r"^[A-Za-z0-9_.:-]{1,100}$",
        description="stable MQTT client id base; workers append -ingest, -inference, -status",
    )
    session_expiry_s: int = Field(default=86_400, ge=0, description="broker keeps the session")
    connect_timeout_s: float = Field(default=30.0, gt=0, description="first-connection deadline")
    reconnect_max_delay_s: int = Field(default=30, ge=1)

    sensors: list[str] | None = Field(
        default=None,
        description="accepted 'asset/sensor' pairs; None accepts every sensor of the site",
    )
    max_payload_bytes: int = Field(default=1 << 20, ge=1024, description="larger is refused")
    min_sample_rate_hz: float = Field(default=100.0, gt=0)
    max_sample_rate_hz: float = Field(default=200_000.0, gt=0)

    store_path: Path = Field(default_factory=_default_store_path)
    store_budget_bytes: int = Field(
        default=2 << 30, ge=1 << 20, description="the store's files never exceed this"
    )
    store_min_free_bytes: int = Field(
        default=256 << 20, ge=0, description="below this free disk space ingestion degrades"
    )
    dead_letter_max_rows: int = Field(default=10_000, ge=0)
    dead_letter_max_payload_bytes: int = Field(default=4096, ge=0)

    registry_dir: Path | None = None
    model_url: str | None = Field(
        default=None, description="HTTP(S) base URL of a model registry (instead of a folder)"
    )
    model_verify_key: Path | None = Field(
        default=None, description="Ed25519 public key (PEM): models must carry its signature"
    )
    assets: dict[str, AssetConfig] = Field(default_factory=dict)
    anomaly_false_alarm_rate: float = Field(default=0.01, gt=0.0, lt=0.5)
    baseline_min_windows: int = Field(default=64, ge=8)

    influx_url: str | None = Field(default=None, description="telemetry sink; None: off")
    influx_org: str = "fedpm"
    influx_bucket: str = "fedpm"
    influx_token: SecretStr | None = None
    telemetry_batch: int = Field(default=500, ge=1, le=50_000)
    outbox_max_rows: int = Field(default=1_000_000, ge=1000)

    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus")

    superlink: str | None = Field(default=None, description="HOST:PORT; None: no SuperNode")
    supernode_port: int = Field(default=9094, ge=1, le=65535)
    supernode_insecure: bool = True
    supernode_root_certificates: Path | None = None
    supernode_auth_private_key: Path | None = Field(
        default=None,
        description="ECDSA private key (PEM) the SuperLink knows this node by (flwr supernode"
        " register <public key>); needs TLS",
    )
    supernode_restart_max_delay_s: float = Field(default=60.0, gt=0)
    window_samples: int = Field(default=2048, ge=16, le=1 << 20)
    model_poll_s: float = Field(default=2.0, gt=0)
    inference_batch: int = Field(default=64, ge=1, le=4096)
    inference_nice: int = Field(
        default=10, ge=0, le=19, description="CPU niceness of the inference worker (0: same)"
    )
    alarm_persistence: int = Field(default=3, ge=1, description="consecutive windows")
    fault_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    health_min_interval_s: float = Field(default=1.0, ge=0.0)

    log_level: LogLevel = "INFO"
    log_json: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then environment, then the TOML file of :func:`load_settings`."""
        config_file = _CONFIG_FILE.get()
        if config_file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, config_file))

    @model_validator(mode="after")
    def _enforce_secure_outside_development(self) -> AgentSettings:
        if self.environment != "development":
            if not self.mqtt_tls:
                raise ValueError("mqtt_tls must be enabled outside development")
            if self.mqtt_username is None or self.mqtt_password is None:
                raise ValueError("MQTT credentials are required outside development")
            if self.superlink is not None and self.supernode_insecure:
                raise ValueError(
                    "supernode_insecure must be false outside development"
                    " (set supernode_root_certificates)"
                )
            if self.model_url is not None and (
                not self.model_url.startswith("https://") or self.model_verify_key is None
            ):
                raise ValueError(
                    "an HTTP model registry needs https:// and model_verify_key outside development"
                )
            if self.influx_url is not None and (
                not self.influx_url.startswith("https://") or self.influx_token is None
            ):
                raise ValueError("influx_url needs https:// and influx_token outside development")
        if (self.mqtt_username is None) != (self.mqtt_password is None):
            raise ValueError("set both mqtt_username and mqtt_password, or neither")
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("set both mqtt_cert_file and mqtt_key_file, or neither")
        if self.mqtt_cert_file is not None and not self.mqtt_tls:
            raise ValueError("a client certificate needs mqtt_tls = true")
        if self.min_sample_rate_hz >= self.max_sample_rate_hz:
            raise ValueError("min_sample_rate_hz must be below max_sample_rate_hz")
        if self.registry_dir is not None and self.model_url is not None:
            raise ValueError("set registry_dir or model_url, not both")
        for pair in self.sensors or []:
            asset, _, sensor = pair.partition("/")
            if not (_is_id(asset) and _is_id(sensor)):
                raise ValueError(f"sensors entries must be 'asset/sensor', got {pair!r}")
        for asset in self.assets:
            if not _is_id(asset):
                raise ValueError(f"asset id {asset!r} must match {ID_PATTERN}")
        return self

    @property
    def models_enabled(self) -> bool:
        """Whether a model source (registry folder or URL) is configured."""
        return self.registry_dir is not None or self.model_url is not None

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


def _is_id(value: str) -> bool:
    return re.fullmatch(ID_PATTERN, value) is not None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> AgentSettings:
    """Build settings from ``config_file`` (TOML), the environment and ``overrides``.

    ``None`` overrides are ignored, so optional CLI flags can be passed straight through.

    Raises
    ------
    ConfigError
        The file is missing or not TOML, or the settings are invalid (the message lists every
        problem).
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    path = None if config_file is None else Path(config_file)
    if path is not None:
        try:
            with path.open("rb") as handle:
                tomllib.load(handle)  # a clear error before pydantic sees the file
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    token = _CONFIG_FILE.set(path)
    try:
        return AgentSettings(**given)
    except ValidationError as exc:
        where = f" (file {path})" if path is not None else ""
        raise ConfigError(f"invalid edge agent settings{where}: {exc}") from exc
    finally:
        _CONFIG_FILE.reset(token)


@lru_cache
def get_settings() -> AgentSettings:
    """Settings from the environment, built once (tests call ``get_settings.cache_clear()``)."""
    return load_settings()
