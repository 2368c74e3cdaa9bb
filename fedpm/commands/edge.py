"""``fedpm edge``: run a site's edge agent on the device, or check its configuration first.

``fedpm edge run --config edge.toml`` runs the agent (MQTT ingest, store, inference, status)
and, when configured, the Flower SuperNode beside it (restarted when it exits) and the
Prometheus endpoint; it exits on SIGTERM or SIGINT. ``fedpm edge check-config --config
edge.toml`` prints the effective settings as JSON with secrets masked. Both first check what
can be checked offline (the settings validate, the TLS files load, the SuperNode command line
can be built) and exit 10 with one ``error: ...`` line on stderr on any problem. Both take the
flags of ``python -m edge_agent``, which override the ``FEDPM_EDGE_*`` environment, which
overrides the file. See ``docs/edge-operations.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edge_agent.__main__ import add_agent_arguments, settings_from_args
from edge_agent.errors import ConfigError, ExitCode
from edge_agent.settings import AgentSettings

NAME = "edge"
HELP = "run the edge agent on a device (with its Flower SuperNode and metrics), or check its config"

MASK = "**********"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``edge run`` and ``edge check-config`` subcommands to `parser`."""
    sub = parser.add_subparsers(dest="edge_command", required=True, metavar="{run,check-config}")
    run_cmd = sub.add_parser(
        "run",
        help="run the agent until SIGTERM/SIGINT",
        description="Run the edge agent, its SuperNode (if superlink is set) and its metrics "
        "endpoint (if metrics_port is set). Exit codes: 0 clean stop, 10 configuration, "
        "11 store, 12 broker unreachable, 13 registry, 14 worker failed.",
    )
    add_agent_arguments(run_cmd)
    check = sub.add_parser(
        "check-config",
        help="print the effective settings (secrets masked); exit 10 if invalid",
        description="Validate the settings from --config, FEDPM_EDGE_* and the flags, check the "
        "TLS files and the SuperNode options, and print the result as JSON with secrets masked.",
    )
    add_agent_arguments(check)


def run(args: argparse.Namespace) -> int:
    """Dispatch to ``run`` or ``check-config``; returns the exit code."""
    try:
        settings = settings_from_args(args)
        check_offline(settings)  # one clear line on stderr, before anything starts
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return int(ExitCode.CONFIG_ERROR)
    if args.edge_command == "check-config":
        sys.stdout.write(json.dumps(masked_settings(settings), indent=2) + "\n")
        return 0
    from edge_agent.agent import run_agent
    from edge_agent.logs import configure_logging

    configure_logging(settings.log_level, json_lines=settings.log_json)
    return run_agent(settings)


def check_offline(settings: AgentSettings) -> None:
    """Check what needs no network: TLS files load, the SuperNode command line is valid.

    Raises
    ------
    ConfigError
        A file cannot be read or used, or the SuperNode options contradict each other.
    """
    from edge_agent.mqtt import tls_context
    from edge_agent.supernode import supernode_argv

    if settings.mqtt_tls:
        tls_context(settings)
    if settings.superlink is not None:
        supernode_argv(settings)


def masked_settings(settings: AgentSettings) -> dict[str, Any]:
    """The settings as JSON-ready values; secrets and passwords inside URLs are masked."""
    values: dict[str, Any] = settings.model_dump(mode="json")  # SecretStr dumps as ********
    for key in ("influx_url", "model_url"):
        if isinstance(values.get(key), str):
            values[key] = mask_url(values[key])
    return values


def mask_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by :data:`MASK`.

    Examples
    --------
    >>> mask_url("https://ops:hunter2@influx.local:8086")
    'https://ops:**********@influx.local:8086'
    >>> mask_url("http://registry.local/models")
    'http://registry.local/models'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{host}"))
