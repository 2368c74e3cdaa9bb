"""The runs directory of ``fedpm fl``: one folder per federated run, its rounds, curves and card.

Layout (``var/fl-runs`` by default)::

    <runs-dir>/<run-id>/run.json       # RunRecord: status, settings, every round, the model
    <runs-dir>/<run-id>/metrics.json   # the rounds alone (what the curves are drawn from)
    <runs-dir>/<run-id>/curves.png     # loss and accuracy per round, bytes per round
    <runs-dir>/<run-id>/flwr-run.log   # everything ``flwr run --stream`` printed

The run id is also the run's ``run-name`` (the ServerApp's checkpoint folder), so
``fedpm fl run --run-name <run-id>`` resumes a run that was interrupted. Rounds arrive as the
ServerApp's progress lines (:data:`aggregator.rounds.PROGRESS_PREFIX` + JSON), parsed by
:func:`parse_progress`. Files are written atomically (``fedpm.commands.output.write_json``).
Also here: launching ``flwr`` (:func:`flwr_env`, :func:`stream_flwr`), finding the run's
registered model (:func:`registered_model`), the table rows, the curves and the InfluxDB points.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.rounds import PROGRESS_PREFIX
from fedpm.commands.output import write_json
from fedpm.procs import venv_bin

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
LOG_FILE = "flwr-run.log"
DEFAULT_RUNS_DIR = Path("var/fl-runs")
_STARTED = re.compile(r"Successfully started run (\d+)")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_progress(line: str) -> dict[str, Any] | None:
    r"""The round record of a ServerApp progress line, or ``None`` for any other line.

    The line may carry Flower's log prefix (``INFO :      ``, colour codes) before
    :data:`~aggregator.rounds.PROGRESS_PREFIX`.

    Examples
    --------
    >>> parse_progress('\x1b[92mINFO \x1b[0m:      fedpm-round {"round": 2}')
    {'round': 2}
    >>> parse_progress("[ROUND 2/3]") is None
    True
    """
    at = line.find(PROGRESS_PREFIX)
    if at < 0:
        return None
    try:
        record = json.loads(line[at + len(PROGRESS_PREFIX) :])
    except json.JSONDecodeError:
        logger.warning("unreadable progress line: %s", line[:200])
        return None
    return record if isinstance(record, dict) and "round" in record else None


def flower_run_id(line: str) -> str | None:
    """The Flower run id of ``flwr run``'s "Successfully started run N" line, else ``None``."""
    match = _STARTED.search(line)
    return match.group(1) if match else None


def new_run_id(strategy: str, now: datetime | None = None) -> str:
    """A fresh run id: UTC time and strategy, e.g. ``20261128T120501Z-fedprox``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{strategy}"


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a usable folder and ``run-name`` (letters, digits, ``-_.``).

    Raises
    ------
    ValueError
        Anything else.
    """
    if not _RUN_ID.match(run_id) or run_id in (".", ".."):
        raise ValueError(f"run id {run_id!r}: use letters, digits, '-', '_' and '.' only")
    return run_id


@dataclass
class RunRecord:
    """``run.json``: one federated run as the CLI saw it.

    ``status`` is ``running`` (``pid`` is the CLI process driving it), ``finished`` or
    ``failed`` (``error`` says why). ``rounds`` are the progress records in arrival order
    (each with ``received_at``, ISO 8601 UTC); ``model`` summarises the last registered card.
    """

    run_id: str
    kind: str  # "run" (a configured federation) or "simulate" (Simulation Engine)
    status: str = "running"
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    finished_at: str = ""
    pid: int = field(default_factory=os.getpid)
    federation: str = ""
    app: str = ""
    flower_run_id: str = ""
    run_config: dict[str, Any] = field(default_factory=dict)
    sites: int | None = None  # virtual sites of a simulation; None: whoever the SuperLink has
    rounds: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    error: str = ""

    @property
    def strategy(self) -> str:
        """The run's strategy (``fedavg`` when not set)."""
        return str(self.run_config.get("strategy", "fedavg"))

    @property
    def last(self) -> dict[str, Any]:
        """The latest round's record (``{}`` before the first)."""
        return self.rounds[-1] if self.rounds else {}

    def add_round(self, record: dict[str, Any]) -> None:
        """Add a round (a resumed run may repeat a round: the newer record replaces it)."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        record = {**record, "received_at": now}
        self.rounds = [r for r in self.rounds if r.get("round") != record["round"]]
        self.rounds.append(record)
        self.rounds.sort(key=lambda r: int(r["round"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


class RunStore:
    """The runs directory (see the module docstring)."""

    def __init__(self, root: str | Path = DEFAULT_RUNS_DIR) -> None:
        self.root = Path(root)

    def folder(self, run_id: str) -> Path:
        """The folder of ``run_id`` (not created)."""
        return self.root / check_run_id(run_id)

    def save(self, record: RunRecord) -> Path:
        """Write ``run.json`` and ``metrics.json`` of ``record``; returns its folder."""
        folder = self.folder(record.run_id)
        write_json(folder / RUN_FILE, record.to_dict())
        write_json(folder / METRICS_FILE, {"run_id": record.run_id, "rounds": record.rounds})
        return folder

    def load(self, run_id: str) -> RunRecord:
        """Read ``run.json`` of ``run_id``.

        Raises
        ------
        FileNotFoundError
            No such run.
        ValueError
            An unreadable ``run.json``.
        """
        path = self.folder(run_id) / RUN_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: not a JSON object")
        return RunRecord.from_dict(raw)

    def runs(self) -> list[RunRecord]:
        """Every readable run, oldest first (unreadable folders are logged and skipped)."""
        if not self.root.is_dir():
            return []
        out = []
        for entry in sorted(self.root.iterdir()):
            if not (entry / RUN_FILE).is_file():
                continue
            try:
                out.append(self.load(entry.name))
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("skipping run folder %s: %s", entry, exc)
        return sorted(out, key=lambda r: (r.started_at, r.run_id))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_status(record: RunRecord) -> str:
    """``record.status``, but ``interrupted`` for a ``running`` run whose CLI is gone."""
    if record.status == "running" and not pid_alive(record.pid):
        return "interrupted"
    return record.status


# --- Running flwr -----------------------------------------------------------------------------


def flwr_env(flwr_home: Path | None) -> dict[str, str]:
    """Environment for ``flwr``: ``FLWR_HOME`` when given, the venv's scripts first on PATH."""
    scripts = str(Path(venv_bin("flwr")).parent)
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home.resolve())
    return env


def stream_flwr(
    argv: list[str], env: Mapping[str, str], log_path: Path, on_line: Callable[[str], None]
) -> int:
    """Run ``argv`` (an ``flwr run --stream``); returns its exit code.

    Every output line goes to ``log_path`` and to ``on_line`` as it arrives.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "a", encoding="utf-8") as log,
        subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            text=True,
            bufsize=1,
        ) as proc,
    ):
        for line in proc.stdout or ():
            log.write(line)
            log.flush()
            on_line(line.rstrip("\n"))
        return proc.wait()


def registered_model(record: RunRecord, registry_dir: Path) -> dict[str, Any]:
    """Summary of the run's last registered card (``{}`` if none is readable here)."""
    from models.registry import FileRegistry

    if not registry_dir.is_dir() or not record.flower_run_id:
        return {}
    cards = [c for c in FileRegistry(registry_dir).cards() if c.run_id == record.flower_run_id]
    if not cards:
        return {}
    card = max(cards, key=lambda c: (c.server_round, c.version))
    prov = card.metadata.provenance
    extra = prov.model_extra or {}
    return {
        "version": card.version,
        "label": card.label,
        "registry": str(registry_dir),
        "flower_run_id": card.run_id,
        "server_round": card.server_round,
        "sites": list(card.sites),
        "metrics": card.metrics,
        "sha256": card.sha256,
        **{k: extra.get(k) for k in ("run_name", "strategy", "num_server_rounds", "dp_epsilon")},
    }


# --- Human-readable rows ---------------------------------------------------------------------

ROUND_HEADER = (
    f"{'round':>7} {'sites':>7} {'train loss':>10} {'train acc':>9} {'eval loss':>9} "
    f"{'eval acc':>8} {'up MB':>7} {'down MB':>7} {'epsilon':>8} {'model':>6}"
)


def _num(value: object, width: int, digits: int) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:>{width}.{digits}f}"
    return f"{'-':>{width}}"


def round_row(record: dict[str, Any]) -> str:
    """One table row (see :data:`ROUND_HEADER`) for a progress record.

    Examples
    --------
    >>> print(round_row({"round": 1, "num_rounds": 2, "replied": 2, "sampled": 2,
    ...                  "train_loss": 0.9, "bytes_up": 2_000_000, "registry_version": 3}))
        1/2     2/2      0.900         -         -        -    2.00       -        -     v3
    """
    rnd = f"{record.get('round')}/{record.get('num_rounds', '?')}"
    sites = f"{record.get('replied', 0)}/{record.get('sampled', 0)}"
    version = record.get("registry_version")
    model = "skip" if record.get("skipped") else (f"v{version}" if version else "-")
    up = record.get("bytes_up")
    down = record.get("bytes_down")
    return (
        f"{rnd:>7} {sites:>7} {_num(record.get('train_loss'), 10, 3)} "
        f"{_num(record.get('train_accuracy'), 9, 3)} {_num(record.get('eval_loss'), 9, 3)} "
        f"{_num(record.get('eval_accuracy'), 8, 3)} "
        f"{_num(up / 1e6 if isinstance(up, int | float) and up else None, 7, 2)} "
        f"{_num(down / 1e6 if isinstance(down, int | float) and down else None, 7, 2)} "
        f"{_num(record.get('dp_epsilon'), 8, 2)} {model:>6}"
    )


# --- Curves ----------------------------------------------------------------------------------


def plot_curves(record: RunRecord, path: Path) -> Path:
    """Draw loss and accuracy (train, eval) and megabytes moved per round into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [int(r["round"]) for r in record.rounds]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) is not None else float("nan") for r in record.rounds]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for ax, kind in zip(axes[:2], ("loss", "accuracy"), strict=True):
        for phase in ("train", "eval"):
            ax.plot(rounds, series(f"{phase}_{kind}"), marker="o", label=phase)
        ax.set_xlabel("round")
        ax.set_ylabel(kind)
        ax.legend()
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 1.02)
    for key, label in (("bytes_up", "up"), ("bytes_down", "down")):
        axes[2].plot(rounds, [v / 1e6 for v in series(key)], marker="o", label=label)
    axes[2].set_xlabel("round")
    axes[2].set_ylabel("MB per round")
    axes[2].legend()
    axes[2].grid(alpha=0.3)
    fig.suptitle(f"{record.run_id}: {record.strategy}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- InfluxDB --------------------------------------------------------------------------------

INFLUX_MEASUREMENT = "fedpm_fl_round"
_INFLUX_FIELDS = (
    "sampled",
    "replied",
    "failures",
    "rejected",
    "train_loss",
    "train_accuracy",
    "eval_loss",
    "eval_accuracy",
    "dp_epsilon",
    "bytes_up",
    "bytes_down",
)


@dataclass(frozen=True)
class InfluxTarget:
    """Where ``fedpm fl`` writes per-round points (InfluxDB 2 API: url, token, org, bucket)."""

    url: str
    token: str
    org: str
    bucket: str


def influx_lines(record: RunRecord) -> list[str]:
    """One line-protocol point per round: measurement :data:`INFLUX_MEASUREMENT`.

    Tags ``run`` (run id) and ``strategy``; float fields as in the progress record plus
    ``round`` and ``skipped``; the time is when the CLI received the round (ns).
    """
    from influxdb_client.client.write.point import Point

    lines = []
    for r in record.rounds:
        point = Point(INFLUX_MEASUREMENT)  # type: ignore[no-untyped-call]  # untyped library
        point.tag("run", record.run_id)  # type: ignore[no-untyped-call]
        point.tag("strategy", record.strategy)  # type: ignore[no-untyped-call]
        point.field("round", int(r["round"]))  # type: ignore[no-untyped-call]
        point.field("skipped", 1 if r.get("skipped") else 0)  # type: ignore[no-untyped-call]
        for key in _INFLUX_FIELDS:
            value = r.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                point.field(key, float(value))  # type: ignore[no-untyped-call]
        at = datetime.fromisoformat(str(r.get("received_at") or record.started_at))
        point.time(round(at.timestamp() * 1e3) * 1_000_000)  # type: ignore[no-untyped-call]
        lines.append(str(point.to_line_protocol()))  # type: ignore[no-untyped-call]
    return lines


def write_influx(record: RunRecord, target: InfluxTarget, timeout_s: float = 10.0) -> int:
    """Write the run's rounds to InfluxDB; returns the number of points.

    Raises
    ------
    OSError
        InfluxDB unreachable or refusing the write (the message says which).
    """
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS
    from influxdb_client.rest import ApiException

    lines = influx_lines(record)
    if not lines:
        return 0
    with InfluxDBClient(
        url=target.url, token=target.token, org=target.org, timeout=int(timeout_s * 1e3)
    ) as client:
        try:
            client.write_api(write_options=SYNCHRONOUS).write(
                bucket=target.bucket, org=target.org, record=lines
            )
        except ApiException as exc:
            raise OSError(
                f"InfluxDB {target.url} refused the points: {exc.status} {exc.reason}"
            ) from exc
        except Exception as exc:  # urllib3 errors: unreachable, timeouts
            raise OSError(f"InfluxDB {target.url} unreachable: {exc}") from exc
    return len(lines)
