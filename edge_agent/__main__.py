"""Command line: ``python -m edge_agent --config edge.toml`` (or flags alone).

Settings come from the flags, then ``FEDPM_EDGE_*`` environment variables, then the TOML file
given with ``--config``, then the defaults; ``--help`` lists the flags. ``fedpm edge run``
takes the same flags (:func:`add_agent_arguments`). Exit codes are in
:class:`edge_agent.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.errors import ConfigError, ExitCode
from edge_agent.logs import configure_logging
from edge_agent.settings import AgentSettings, load_settings


def add_agent_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--config`` and the setting flags (each overrides its ``FEDPM_EDGE_*`` variable)."""
    p.add_argument(
        "--config", type=Path, default=None, help="TOML settings file (keys are field names)"
    )
    p.add_argument("--site", dest="site_id", help="site id (FEDPM_EDGE_SITE_ID)")
    p.add_argument("--mqtt-host", dest="mqtt_host")
    p.add_argument("--mqtt-port", dest="mqtt_port", type=int)
    p.add_argument("--client-id", dest="client_id", help="MQTT client id base (stable)")
    p.add_argument("--store", dest="store_path", type=Path, help="SQLite store path")
    p.add_argument("--registry", dest="registry_dir", type=Path, help="model registry folder")
    p.add_argument("--window-samples", dest="window_samples", type=int)
    p.add_argument("--model-poll-s", dest="model_poll_s", type=float)
    p.add_argument("--alarm-persistence", dest="alarm_persistence", type=int)
    p.add_argument("--metrics-host", dest="metrics_host", help="Prometheus endpoint address")
    p.add_argument(
        "--metrics-port", dest="metrics_port", type=int, help="Prometheus endpoint port (0: any)"
    )
    p.add_argument("--superlink", dest="superlink", help="SuperLink HOST:PORT (runs a SuperNode)")
    p.add_argument("--supernode-port", dest="supernode_port", type=int)
    p.add_argument("--log-level", dest="log_level", type=str.upper)
    p.add_argument("--log-json", dest="log_json", action="store_const", const=True)


#: argparse destinations of :func:`add_agent_arguments` that are not settings fields
_NOT_SETTINGS = frozenset({"config"})


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """Settings from parsed :func:`add_agent_arguments` flags (unset flags are ignored).

    Raises
    ------
    ConfigError
        The file cannot be read or the settings are invalid.
    """
    fields = set(AgentSettings.model_fields)
    overrides = {k: v for k, v in vars(args).items() if k in fields and k not in _NOT_SETTINGS}
    return load_settings(args.config, **overrides)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge_agent",
        description="FedPM edge agent: MQTT ingest, local store, ONNX inference, health topics, "
        "Flower SuperNode supervision, Prometheus metrics.",
    )
    add_agent_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, configure logging once, run the agent; return the exit code."""
    from edge_agent.agent import run_agent

    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        parser.exit(int(ExitCode.CONFIG_ERROR), f"{parser.prog}: {exc}\n")
    configure_logging(settings.log_level, json_lines=settings.log_json)
    logging.getLogger(__name__).debug("settings: %s", settings)
    return run_agent(settings)


if __name__ == "__main__":
    sys.exit(main())
