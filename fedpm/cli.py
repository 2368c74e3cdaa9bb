"""``fedpm``: the command line (demo, sensor gateway simulator, and the roles' entry points)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import threading
from pathlib import Path
from types import ModuleType


def _demo(args: argparse.Namespace) -> int:
    from fedpm.demo import DemoOptions, run_demo

    opts = DemoOptions(
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        backlog_s=args.backlog_s,
        held_out_windows=args.held_out_windows,
        workdir=args.workdir,
        json_path=args.json,
    )
    return run_demo(opts)


def _sensors(args: argparse.Namespace) -> int:
    import signal

    from fedpm.scenario import site_by_id
    from fedpm.sensors import SiteSensors

    try:
        site = site_by_id(args.site)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if (args.tls_cert is None) != (args.tls_key is None) or (
        args.tls_cert is not None and args.tls_ca is None
    ):
        print("error: --tls-cert and --tls-key go together, with --tls-ca", file=sys.stderr)
        return 2
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"error: cannot read {args.password_file}: {exc.strerror}", file=sys.stderr)
            return 2
    sensors = SiteSensors(
        site,
        args.mqtt_host,
        args.mqtt_port,
        username=args.username,
        password=password,
        ca_file=args.tls_ca,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
    )
    try:
        sensors.connect()
    except OSError as exc:
        print(
            f"error: cannot reach MQTT broker {args.mqtt_host}:{args.mqtt_port}: {exc}",
            file=sys.stderr,
        )
        return 12
    try:
        end_ns = sensors.backlog(args.backlog_s)
        if args.live:
            sensors.live(end_ns, stop)
    except KeyboardInterrupt:
        pass
    finally:
        sensors.close()
    return 0


def _agent(argv: list[str]) -> int:
    from edge_agent.__main__ import main as agent_main

    return agent_main(argv)


def _serve(argv: list[str]) -> int:
    from serving.__main__ import main as serve_main

    return serve_main(argv)


COMMANDS = (
    "train",
    "evaluate",
    "quantize",
    "diagnose",
    "health",
    "simulate_history",
    "edge",
    "edge_labels",
    "keys",
)


def _command_modules() -> list[ModuleType]:
    """The analytics subcommands (see :mod:`fedpm.commands` for their protocol)."""
    return [importlib.import_module(f"fedpm.commands.{name}") for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    """The ``fedpm`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="fedpm",
        description="FedPM: federated predictive maintenance (demo, analytics, role entry points).",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole chain on this machine (embedded defaults)")
    demo.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    demo.add_argument("--local-epochs", type=int, default=1, help="epochs per round per site")
    demo.add_argument(
        "--backlog-s",
        type=float,
        default=24.0,
        help="seconds of labelled history each sensor sends first (default 24)",
    )
    demo.add_argument(
        "--held-out-windows",
        type=int,
        default=24,
        help="held-out windows per class sent to the API (default 24, over 3 severities)",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where stores, registry and logs go (default var/demo/<time>)",
    )
    demo.add_argument("--json", type=Path, default=None, help="write a JSON summary here")
    demo.set_defaults(func=_demo)

    sensors = sub.add_parser("sensors", help="simulate one demo site's sensor gateway over MQTT")
    sensors.add_argument("--site", required=True, help="demo site id (site-a, site-b, site-c)")
    sensors.add_argument("--mqtt-host", default="127.0.0.1")
    sensors.add_argument("--mqtt-port", type=int, default=1883)
    sensors.add_argument("--backlog-s", type=float, default=24.0)
    sensors.add_argument("--live", action="store_true", help="keep streaming in real time")
    sensors.add_argument("--username", default=None, help="MQTT user name")
    sensors.add_argument("--password-file", type=Path, default=None, help="file of the password")
    sensors.add_argument("--tls-ca", type=Path, default=None, help="broker CA (PEM): TLS on")
    sensors.add_argument("--tls-cert", type=Path, default=None, help="client certificate (PEM)")
    sensors.add_argument("--tls-key", type=Path, default=None, help="its private key (PEM)")
    sensors.set_defaults(func=_sensors)

    for module in _command_modules():
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(func=module.run)

    from fedpm.fl_cli import add_fl_commands

    add_fl_commands(sub)  # fedpm fl run | simulate | status | history

    sub.add_parser("agent", help="run an edge agent (see `fedpm agent --help`)", add_help=False)
    sub.add_parser(
        "serve", help="run the prediction API (see `fedpm serve --help`)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedpm`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "agent":
        return _agent(args_list[1:])
    if args_list and args_list[0] == "serve":
        return _serve(args_list[1:])
    args = build_parser().parse_args(args_list)
    logging.basicConfig(
        level=(args.log_level or "WARNING").upper(),  # None: `edge` sets its own from settings
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except Exception as exc:  # a CLI reports failures in one line, details are in the logs
        logging.getLogger("fedpm").debug("command failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
