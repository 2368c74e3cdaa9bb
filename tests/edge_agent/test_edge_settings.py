"""AgentSettings: environment, defaults derived from the site, overrides, security rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError, ExitCode
from edge_agent.logs import Throttle
from edge_agent.settings import AgentSettings, get_settings, load_settings


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FEDPM_EDGE_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setenv("FEDPM_EDGE_SITE_ID", "plant-a")
    monkeypatch.setenv("FEDPM_EDGE_MQTT_PORT", "1999")
    monkeypatch.setenv("FEDPM_EDGE_REGISTRY_DIR", "/srv/registry")

    # Execute
    s = get_settings()

    # Assert
    assert (s.site_id, s.mqtt_port, s.registry_dir) == ("plant-a", 1999, Path("/srv/registry"))
    assert get_settings() is s  # cached
    get_settings.cache_clear()


def test_defaults_derive_from_the_site() -> None:
    # Execute
    s = AgentSettings(site_id="plant_b")

    # Assert
    assert s.client_id == "fedpm-edge-plant_b"
    assert s.ingest_client_id == "fedpm-edge-plant_b-ingest"
    assert s.store_path == Path("var/edge/plant_b/store.sqlite")
    assert (s.window_samples, s.model_poll_s, s.alarm_persistence) == (2048, 2.0, 3)
    assert (s.mqtt_host, s.mqtt_port, s.registry_dir) == ("127.0.0.1", 1883, None)


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setenv("FEDPM_EDGE_SITE_ID", "plant-a")
    monkeypatch.setenv("FEDPM_EDGE_MQTT_PORT", "1999")

    # Execute
    s = load_settings(mqtt_port=2001, store_path=None, client_id="edge-7")

    # Assert
    assert (s.site_id, s.mqtt_port, s.client_id) == ("plant-a", 2001, "edge-7")


@pytest.mark.parametrize("site", ["", "a/b", "a+b", "#", "plant a", "x" * 65])
def test_site_ids_that_break_topics_are_refused(site: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(site_id=site)
    assert info.value.exit_code == ExitCode.CONFIG_ERROR


def test_missing_site_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDPM_EDGE_SITE_ID", raising=False)
    with pytest.raises(ConfigError, match="site_id"):
        load_settings()


def test_production_requires_tls_and_credentials() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="tls"):
        load_settings(site_id="a", environment="production")
    with pytest.raises(ConfigError, match="credentials"):
        load_settings(site_id="a", environment="production", mqtt_tls=True)
    ok = load_settings(
        site_id="a",
        environment="production",
        mqtt_tls=True,
        mqtt_username="edge-a",
        mqtt_password="s3cret",
    )
    assert ok.mqtt_password is not None
    assert "s3cret" not in repr(ok)


def test_settings_survive_pickling_for_spawned_workers() -> None:
    import pickle

    # Prepare
    s = load_settings(site_id="a", mqtt_username="u", mqtt_password="p")

    # Execute
    back = pickle.loads(pickle.dumps(s))

    # Assert
    assert back == s


def test_throttle_lets_one_event_per_interval_through() -> None:
    # Prepare
    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])

    # Execute
    first = [throttle.allow("bad_magic") for _ in range(3)]
    now[0] = 11.0
    later = throttle.allow("bad_magic")

    # Assert
    assert first == [0, None, None]
    assert later == 2  # two suppressed since the last one let through


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"superlink": "cloud:9092"}, "supernode_insecure"),
        ({"model_url": "http://registry.example/models"}, "model_verify_key"),
        (
            {"model_url": "https://registry.example/models"},
            "model_verify_key",
        ),
        ({"influx_url": "http://influx.example:8086", "influx_token": "t"}, "influx_token"),
        ({"influx_url": "https://influx.example:8086"}, "influx_token"),
    ],
)
def test_production_refuses_unauthenticated_links(extra: dict[str, str], problem: str) -> None:
    # Prepare
    secure = {"mqtt_tls": True, "mqtt_username": "u", "mqtt_password": "p"}

    # Execute / Assert
    with pytest.raises(ConfigError, match=problem):
        load_settings(site_id="a", environment="production", **secure, **extra)


def test_production_accepts_authenticated_links(tmp_path: Path) -> None:
    # Execute
    s = load_settings(
        site_id="a",
        environment="production",
        mqtt_tls=True,
        mqtt_username="u",
        mqtt_password="p",
        superlink="cloud:9092",
        supernode_insecure=False,
        model_url="https://registry.example/models",
        model_verify_key=tmp_path / "signing.pub",
        influx_url="https://influx.example:8086",
        influx_token="t",
    )

    # Assert
    assert s.models_enabled
    assert s.influx_token is not None
