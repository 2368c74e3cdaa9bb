"""``fedpm fl``: the data scientist's federated runs (run, simulate, status, history).

``fedpm fl run`` starts the FedPM Flower app on a configured SuperLink with Flower's own
``flwr run --stream`` (connection from ``$FLWR_HOME/config.toml``, ``--federation`` picks one),
prints one table row per round from the ServerApp's progress lines, then saves the run
(:mod:`fedpm.fl_runs`: ``run.json``, ``metrics.json``, ``curves.png``), writes the rounds to
InfluxDB when configured, and reports the registered model. ``fedpm fl simulate`` runs the same
ServerApp and ClientApp on Flower's Simulation Engine (a local ``flower-superlink
--simulation`` with N virtual SuperNodes on Ray), each virtual site reading its partition of a
manifest (``edge_agent.fl_data``). ``fedpm fl status`` and ``fedpm fl history`` read the runs
directory (and ``flwr ls`` when the SuperLink answers). See docs/fl-workflow.md.

Exit codes: 0 success, 1 the run failed or completed no round, 2 bad input.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpm.fl_status import history_command, status_command

if TYPE_CHECKING:
    from fedpm.fl_runs import InfluxTarget, RunRecord, RunStore

BAD_INPUT = 2
RUN_FAILED = 1
SIM_CONNECTION = "fedpm-sim"
DEFAULT_REGISTRY = Path("var/registry")
DEFAULT_CHECKPOINTS = Path("var/checkpoints")
# CLI option -> run-config key, for the options that map one to one
_RUN_OPTIONS = {
    "strategy": "strategy",
    "rounds": "num-server-rounds",
    "local_epochs": "local-epochs",
    "min_sites": "min-sites",
    "fraction_train": "fraction-train",
    "learning_rate": "learning-rate",
    "round_lr_schedule": "round-lr-schedule",
    "batch_size": "batch-size",
    "proximal_mu": "proximal-mu",
    "compression": "update-compression",
    "dp_noise_multiplier": "dp-noise-multiplier",
    "dp_clipping_norm": "dp-clipping-norm",
    "dp_delta": "dp-delta",
    "round_timeout_s": "round-timeout-s",
    "evaluate_every": "evaluate-every",
    "seed": "seed",
}


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


# --- Parser ----------------------------------------------------------------------------------


def _training_options(p: argparse.ArgumentParser) -> None:
    # no choices= here: importing models.fl_config pulls in torch, and `fedpm --help` should
    # stay fast; RunConfig refuses a bad value before anything starts, listing the choices
    g = p.add_argument_group("training (run-config keys; unset: the app's defaults)")
    g.add_argument(
        "--strategy",
        default=None,
        help="fedavg, fedprox, fedadam, fedmedian, fedtrimmedavg, krum, multikrum or bulyan",
    )
    g.add_argument("--rounds", type=int, default=None, help="federated rounds")
    g.add_argument("--local-epochs", type=int, default=None, help="epochs per round per site")
    g.add_argument("--min-sites", type=int, default=None, help="sites a round needs")
    g.add_argument("--fraction-train", type=float, default=None, help="share of sites sampled")
    g.add_argument("--learning-rate", type=float, default=None, help="local Adam step")
    g.add_argument(
        "--round-lr-schedule",
        default=None,
        help="the local step over the rounds: constant, or cosine (decays to lr-floor)",
    )
    g.add_argument("--batch-size", type=int, default=None, help="local batch size")
    g.add_argument("--proximal-mu", type=float, default=None, help="FedProx's proximal weight")
    g.add_argument("--compression", default=None, help="update codec: none or int8")
    g.add_argument("--dp-noise-multiplier", type=float, default=None, help="DP noise z; 0: off")
    g.add_argument("--dp-clipping-norm", type=float, default=None, help="DP clipping norm C")
    g.add_argument("--dp-delta", type=float, default=None, help="delta the epsilon is given at")
    g.add_argument("--round-timeout-s", type=float, default=None, help="seconds per round")
    g.add_argument(
        "--evaluate-every",
        type=int,
        default=None,
        help="federated evaluation every N rounds and in the last (each costs every site a "
        "ClientApp process)",
    )
    g.add_argument("--seed", type=int, default=None, help="training seed")
    g.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run-config key of the app (repeatable), e.g. --config trimmed-fraction=0.1",
    )
    o = p.add_argument_group("where things go")
    o.add_argument("--app", type=Path, default=None, help="Flower app folder (default: FedPM's)")
    o.add_argument(
        "--run-name",
        default=None,
        help="run id and checkpoint name (default: time and strategy); "
        "an interrupted run's id resumes it",
    )
    o.add_argument(
        "--registry-dir",
        type=Path,
        default=DEFAULT_REGISTRY,
        help="model registry the ServerApp publishes to (default var/registry; on a remote "
        "SuperLink this path is on the server)",
    )
    o.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINTS, help="checkpoints")
    _runs_dir(o)
    o.add_argument("--json", type=Path, default=None, help="write the run's record as JSON here")
    o.add_argument("--show-log", action="store_true", help="also print flwr's own output")
    o.add_argument("--timeout-s", type=float, default=24 * 3600.0, help="give up after (s)")
    i = p.add_argument_group("InfluxDB (per-round points; env FEDPM_INFLUX_URL, ...)")
    for name in ("url", "token", "org", "bucket"):
        i.add_argument(
            f"--influx-{name}",
            default=os.environ.get(f"FEDPM_INFLUX_{name.upper()}"),
            help=f"InfluxDB {name} (env FEDPM_INFLUX_{name.upper()})",
        )


def _runs_dir(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--runs-dir", type=Path, default=Path("var/fl-runs"), help="runs folder (var/fl-runs)"
    )


def _flwr_home(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--federation",
        default=None,
        help="SuperLink connection in $FLWR_HOME/config.toml (default: its default)",
    )
    p.add_argument(
        "--flwr-home", type=Path, default=None, help="Flower's config folder (default $FLWR_HOME)"
    )


def add_fl_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fl`` and its subcommands to the ``fedpm`` parser."""
    fl = sub.add_parser("fl", help="federated runs: run, simulate, status, history")
    fl_sub = fl.add_subparsers(dest="fl_command", required=True)

    run = fl_sub.add_parser(
        "run",
        help="train on a configured federation (flwr run), live progress, saved curves",
        description="Start the FedPM Flower app on a SuperLink and follow it round by round.",
    )
    _flwr_home(run)
    _training_options(run)
    run.set_defaults(func=run_command)

    sim = fl_sub.add_parser(
        "simulate",
        help="the same apps on Flower's Simulation Engine, many virtual sites",
        description="Run the FedPM ServerApp and ClientApp on N virtual sites (Ray), each "
        "training on its partition of a manifest.",
    )
    sim.add_argument("--sites", type=int, required=True, help="virtual sites (SuperNodes)")
    sim.add_argument("--manifest", type=Path, required=True, help="records the sites share")
    sim.add_argument(
        "--partition",
        default="iid",
        help="iid, dirichlet:ALPHA (label skew, e.g. dirichlet:0.3) or by:COLUMN (default iid)",
    )
    sim.add_argument("--channel", default="de", help="manifest channel the model reads (de)")
    sim.add_argument(
        "--cpus",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="CPUs Ray may use (default min(2, cores))",
    )
    sim.add_argument("--cpus-per-site", type=int, default=1, help="CPUs per ClientApp (1)")
    _training_options(sim)
    sim.set_defaults(func=simulate_command)

    status = fl_sub.add_parser("status", help="runs in progress and finished; the SuperLink's")
    _flwr_home(status)
    _runs_dir(status)
    status.add_argument("--no-superlink", action="store_true", help="do not ask the SuperLink")
    status.set_defaults(func=status_command)

    history = fl_sub.add_parser("history", help="table of past runs")
    _runs_dir(history)
    history.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    history.set_defaults(func=history_command)

    from fedpm.fl_exporter import add_exporter_command

    add_exporter_command(fl_sub)  # fedpm fl exporter: the runs folder as Prometheus metrics


# --- Run config ------------------------------------------------------------------------------


def app_config(app: Path) -> dict[str, Any]:
    """The app's ``[tool.flwr.app.config]`` (its run-config keys and defaults)."""
    path = app / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: not a readable Flower app ({exc})") from exc
    config = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    if not isinstance(config, dict):
        raise UsageError(f"{path} has no [tool.flwr.app.config]")
    return config


def _scalar(text: str) -> object:
    """A ``--config`` value: a TOML number or boolean, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def run_config(args: argparse.Namespace, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--run-config`` overrides from the options; validated against the app's keys.

    Raises
    ------
    UsageError
        A ``--config`` that is not ``KEY=VALUE`` or names no key of the app, or values the
        run config refuses (:class:`models.fl_config.RunConfig`).
    """
    from models.errors import SignalError
    from models.fl_config import RunConfig

    out: dict[str, Any] = {}
    for item in args.config:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--config {item!r}: use KEY=VALUE")
        if key not in defaults:
            raise UsageError(f"--config {key}: the app has no such run-config key")
        out[key] = _scalar(value.strip())
    for option, key in _RUN_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            out[key] = value
    out["run-name"] = args.run_id
    out["registry-dir"] = str(args.registry_dir.resolve())
    out["checkpoint-dir"] = str(args.checkpoint_dir.resolve())
    try:
        RunConfig.from_run_config({**defaults, **out})
    except SignalError as exc:
        raise UsageError(str(exc)) from exc
    return out


def _influx(args: argparse.Namespace) -> InfluxTarget | None:
    from fedpm.fl_runs import InfluxTarget

    given = {n: getattr(args, f"influx_{n}") for n in ("url", "token", "org", "bucket")}
    if not given["url"]:
        return None
    missing = [f"--influx-{n}" for n, v in given.items() if not v]
    if missing:
        raise UsageError(f"--influx-url needs {', '.join(missing)} too")
    return InfluxTarget(given["url"], given["token"], given["org"], given["bucket"])


# --- Running ---------------------------------------------------------------------------------


def _follow(
    record: RunRecord, store: RunStore, show_log: bool, out: Callable[[str], None]
) -> Callable[[str], None]:
    """The ``on_line`` of a run: parse progress lines, print a row each, save the record."""
    from fedpm.fl_runs import ROUND_HEADER, flower_run_id, parse_progress, round_row

    def on_line(line: str) -> None:
        if show_log:
            out(f"  | {line}")
        run_id = flower_run_id(line)
        if run_id is not None and not record.flower_run_id:
            record.flower_run_id = run_id
            out(f"Flower run {run_id} started; rounds as they finish:")
            out(ROUND_HEADER)
            store.save(record)
        progress = parse_progress(line)
        if progress is not None:
            record.add_round(progress)
            out(round_row(progress))
            store.save(record)

    return on_line


def _finish(
    record: RunRecord,
    store: RunStore,
    code: int,
    args: argparse.Namespace,
    influx: InfluxTarget | None,
) -> int:
    """Close a run: status, card, curves, InfluxDB, summary; returns the exit code."""
    from fedpm.commands.output import write_json
    from fedpm.fl_runs import CURVES_FILE, plot_curves, registered_model, write_influx

    record.exit_code = code
    record.finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    record.model = registered_model(record, args.registry_dir.resolve())
    folder = store.folder(record.run_id)
    done = [r for r in record.rounds if not r.get("skipped")]
    if code != 0:
        record.status, record.error = "failed", f"flwr run exited with code {code}"
    elif not record.rounds:
        record.status, record.error = "failed", "no round completed (see flwr-run.log)"
    else:
        record.status = "finished"
    store.save(record)
    if record.rounds:
        plot_curves(record, folder / CURVES_FILE)
    if influx is not None and record.rounds:
        try:
            points = write_influx(record, influx)
            print(f"InfluxDB: {points} round points written to {influx.url} ({influx.bucket})")
        except OSError as exc:
            print(f"warning: {exc}", file=sys.stderr)
    if args.json is not None:
        write_json(args.json, {**record.to_dict(), "folder": str(folder)})
    last = record.last
    print()
    print(f"run {record.run_id}: {record.status}, {len(done)} of {len(record.rounds)} rounds "
          f"aggregated (Flower run {record.flower_run_id or '?'})")  # fmt: skip
    if last:
        eps = last.get("dp_epsilon")
        acc = last.get("eval_accuracy")
        print(f"  final eval accuracy {acc:.3f}" if isinstance(acc, float) else "  no eval metrics")
        print(f"  DP epsilon {eps:.3g} at delta {record.run_config.get('dp-delta', 1e-5)}"
              if isinstance(eps, float) else "  DP: off")  # fmt: skip
    if record.model:
        print(f"  registered model {record.model['label']} in {record.model['registry']}")
    saved = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
    print(f"  saved in {folder} ({saved})")
    if record.status != "finished":
        print(f"error: {record.error}", file=sys.stderr)
        return RUN_FAILED
    return 0


def _prepare(
    args: argparse.Namespace, kind: str
) -> tuple[RunRecord, RunStore, InfluxTarget | None]:
    """Check the options, build the run config and the run's record (status running)."""
    from fedpm.demo import app_dir
    from fedpm.fl_runs import RunRecord, RunStore, check_run_id, new_run_id

    app = (args.app or app_dir()).resolve()
    defaults = app_config(app)
    strategy = args.strategy or str(defaults.get("strategy", "fedavg"))
    try:
        args.run_id = check_run_id(args.run_name or new_run_id(strategy))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    args.app_path = app
    config = run_config(args, defaults)
    store = RunStore(args.runs_dir)
    record = RunRecord(run_id=args.run_id, kind=kind, app=str(app), run_config=config)
    if (store.folder(args.run_id) / "run.json").is_file():
        previous = store.load(args.run_id)
        record.rounds = previous.rounds  # resuming: keep the rounds seen so far
    return record, store, _influx(args)


def run_command(args: argparse.Namespace) -> int:
    """``fedpm fl run``."""
    from fedpm.federation import config_arg
    from fedpm.fl_runs import LOG_FILE, flwr_env, stream_flwr
    from fedpm.procs import venv_bin

    try:
        record, store, influx = _prepare(args, "run")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    record.federation = args.federation or "(default)"
    argv = [venv_bin("flwr"), "run", str(args.app_path)]
    if args.federation:
        argv.append(args.federation)
    argv += ["--stream", "--run-config", config_arg(record.run_config)]
    folder = store.save(record)
    print(f"run {record.run_id} on {record.federation}: {record.strategy}, "
          f"{record.run_config.get('num-server-rounds', 'default')} rounds")  # fmt: skip
    try:
        code = stream_flwr(
            argv,
            flwr_env(args.flwr_home),
            folder / LOG_FILE,
            _follow(record, store, args.show_log, print),
        )
    except KeyboardInterrupt:
        return _interrupted(record, store)
    return _finish(record, store, code, args, influx)


def simulate_command(args: argparse.Namespace) -> int:
    """``fedpm fl simulate``."""
    from fedpm.federation import config_arg, toml_value
    from fedpm.fl_runs import flwr_env
    from fedpm.netutil import free_port
    from fedpm.procs import venv_bin
    from models.partition import PartitionError, parse_partition

    try:
        if args.sites < 1:
            raise UsageError(f"--sites must be >= 1, got {args.sites}")
        if args.cpus < 1 or args.cpus_per_site < 1:
            raise UsageError("--cpus and --cpus-per-site must be >= 1")
        try:
            parse_partition(args.partition)
        except PartitionError as exc:
            raise UsageError(f"--partition: {exc}") from exc
        if not args.manifest.is_file():
            raise UsageError(f"--manifest {args.manifest} does not exist")
        fraction = args.fraction_train or 1.0
        if args.min_sites is None:
            args.min_sites = max(1, math.ceil(fraction * args.sites))
        if args.min_sites > args.sites:
            raise UsageError(f"--min-sites {args.min_sites} exceeds --sites {args.sites}")
        args.config = [
            *args.config,
            f"data-manifest={toml_value(str(args.manifest.resolve()))}",
            f"data-partition={toml_value(args.partition)}",
            f"data-channel={toml_value(args.channel)}",
        ]
        record, store, influx = _prepare(args, "simulate")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    record.sites = args.sites
    record.federation = f"simulation ({args.sites} virtual sites, {args.partition})"
    folder = store.save(record)
    home = folder / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{SIM_CONNECTION}"\n\n'
        f'[superlink.{SIM_CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    env = flwr_env(home)
    federation = {
        "num-supernodes": args.sites,
        "client-resources-num-cpus": args.cpus_per_site,
        "init-args-num-cpus": args.cpus,
    }
    argv = [
        venv_bin("flwr"),
        "run",
        str(args.app_path),
        SIM_CONNECTION,
        "--stream",
        "--federation-config",
        config_arg(federation),
        "--run-config",
        config_arg(record.run_config),
    ]
    rounds = record.run_config.get("num-server-rounds", "default")
    print(
        f"simulation {record.run_id}: {args.sites} virtual sites, partition {args.partition}, "
        f"{record.strategy}, {rounds} rounds"
    )
    try:
        code = _simulate(args, record, store, argv, env, port)
    except KeyboardInterrupt:
        return _interrupted(record, store)
    return _finish(record, store, code, args, influx)


def _simulate(
    args: argparse.Namespace,
    record: RunRecord,
    store: RunStore,
    argv: list[str],
    env: dict[str, str],
    port: int,
) -> int:
    """Start the simulation SuperLink, run ``argv`` against it, stop it; ``flwr``'s exit code."""
    from fedpm.fl_runs import LOG_FILE, stream_flwr
    from fedpm.netutil import wait_for_port
    from fedpm.procs import ProcessGroup, venv_bin

    folder = store.folder(record.run_id)
    with ProcessGroup(folder / "logs") as group:
        superlink = group.start(
            "superlink",
            [
                venv_bin("flower-superlink"),
                "--insecure",
                "--simulation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            env={"FLWR_HOME": env["FLWR_HOME"], "PATH": env["PATH"]},
            cwd=folder,
        )
        wait_for_port("127.0.0.1", port, timeout_s=60, alive=superlink.alive)
        return stream_flwr(
            argv, env, folder / LOG_FILE, _follow(record, store, args.show_log, print)
        )


def _interrupted(record: RunRecord, store: RunStore) -> int:
    """Record a run stopped with Ctrl-C; say how to resume it. Exit code 130."""
    record.status, record.error = "interrupted", "stopped with Ctrl-C"
    store.save(record)
    print(
        f"\ninterrupted after {len(record.rounds)} rounds; resume with the same options and "
        f"--run-name {record.run_id}",
        file=sys.stderr,
    )
    return 130
