"""Settings from the environment, the cached accessor, and the CLI's argument handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.__main__ import EXIT_BAD_SETTINGS, main
from serving.app import create_app
from serving.settings import ServeSettings, get_settings


@pytest.fixture
def fresh_settings_cache():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults():
    # Execute
    settings = ServeSettings(_env_file=None)

    # Assert
    assert settings.registry_dir == Path("var/registry")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.max_windows_per_request == 256
    assert settings.max_body_bytes == 32 * 1024 * 1024
    assert settings.onnx_threads == 1


def test_environment_prefix(monkeypatch, tmp_path: Path):
    # Prepare
    monkeypatch.setenv("FEDPM_SERVE_REGISTRY_DIR", str(tmp_path))
    monkeypatch.setenv("FEDPM_SERVE_PORT", "9123")
    monkeypatch.setenv("FEDPM_SERVE_MAX_WINDOWS_PER_REQUEST", "8")

    # Execute
    settings = ServeSettings()

    # Assert
    assert settings.registry_dir == tmp_path
    assert settings.port == 9123
    assert settings.max_windows_per_request == 8


@pytest.mark.usefixtures("fresh_settings_cache")
def test_get_settings_is_cached_and_used_by_the_factory(monkeypatch, tmp_path: Path):
    # Prepare
    monkeypatch.setenv("FEDPM_SERVE_REGISTRY_DIR", str(tmp_path))

    # Execute
    first = get_settings()
    app = create_app()

    # Assert
    assert get_settings() is first
    assert app.state.settings is first
    assert first.registry_dir == tmp_path


def test_cli_refuses_invalid_settings(capsys):
    # Execute
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "70000"])

    # Assert
    assert exit_info.value.code == EXIT_BAD_SETTINGS
    assert "invalid settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.20.0.0/16, 192.168.7.0/24", ("10.20.0.0/16", "192.168.7.0/24")),
        ('["fd00::/8"]', ("fd00::/8",)),
        ("", ()),
    ],
)
def test_webhook_networks_from_the_environment(monkeypatch, value: str, expected: tuple[str, ...]):
    # Prepare
    monkeypatch.setenv("FEDPM_SERVE_WEBHOOK_ALLOWED_NETWORKS", value)

    # Execute
    settings = ServeSettings()

    # Assert
    assert settings.webhook_allowed_networks == expected


@pytest.mark.parametrize("value", ["10.0.0.0/33", "[10.0.0.0/8", "plant-a"])
def test_the_cli_refuses_bad_webhook_networks_with_a_message(monkeypatch, capsys, value: str):
    # Prepare
    monkeypatch.setenv("FEDPM_SERVE_WEBHOOK_ALLOWED_NETWORKS", value)

    # Execute
    with pytest.raises(SystemExit) as exit_info:
        main([])

    # Assert: a sentence naming the setting, not a traceback
    assert exit_info.value.code == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err
    assert "invalid settings" in err
    assert "webhook_allowed_networks" in err
