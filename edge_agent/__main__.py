"""Command line: ``python -m edge_agent --site plant-a --store var/a.db --registry var/registry``.

Flags override ``FEDPM_EDGE_*`` environment variables; ``--help`` lists them. Exit codes are in
:class:`edge_agent.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.agent import run_agent
from edge_agent.errors import ConfigError, ExitCode
from edge_agent.logs import configure_logging
from edge_agent.settings import load_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edge_agent",
        description="FedPM edge agent: MQTT ingest, local store, ONNX inference, health topics.",
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
    p.add_argument("--log-level", dest="log_level", type=str.upper)
    p.add_argument("--log-json", dest="log_json", action="store_const", const=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, configure logging once, run the agent; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(**vars(args))
    except ConfigError as exc:
        parser.exit(int(ExitCode.CONFIG_ERROR), f"{parser.prog}: {exc}\n")
    configure_logging(settings.log_level, json_lines=settings.log_json)
    logging.getLogger(__name__).debug("settings: %s", settings)
    return run_agent(settings)


if __name__ == "__main__":
    sys.exit(main())
