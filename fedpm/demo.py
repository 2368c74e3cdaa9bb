"""``fedpm demo``: the whole chain on one machine, on embedded defaults.

simulated sensors -> Mosquitto -> three edge agents (stores, inference, health) -> a real
Flower federation (SuperLink + one SuperNode per site, started with ``flwr run``) -> model
registry -> serving API -> an ERP-style client that checks held-out predictions.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType

import httpx

from edge_agent.errors import StoreError
from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker
from fedpm.erp_client import HeldOutReport, check_held_out
from fedpm.federation import LocalFederation, SiteNode
from fedpm.health_watch import HealthWatch
from fedpm.netutil import free_port
from fedpm.procs import ProcessGroup
from fedpm.scenario import DEMO_SITES, SiteSpec
from fedpm.sensors import FRAME_SAMPLES, backlog_frames
from models.fl_config import RunConfig
from models.registry import FileRegistry, ModelCard


@dataclass(frozen=True)
class DemoOptions:
    """Knobs of the demo (defaults finish in a few minutes on two cores)."""

    rounds: int = 3
    local_epochs: int = 2
    backlog_s: float = 24.0
    held_out_windows: int = 24
    workdir: Path | None = None
    json_path: Path | None = None
    sites: tuple[SiteSpec, ...] = DEMO_SITES

    def __post_init__(self) -> None:
        if not 1 <= self.rounds <= 100 or not 1 <= self.local_epochs <= 50:
            raise ValueError("--rounds must be in 1..100 and --local-epochs in 1..50")
        if not 5.0 <= self.backlog_s <= 600.0:
            # below ~5 s a site's time split leaves too few windows per class to train on
            raise ValueError(f"--backlog-s must be in 5..600 s, got {self.backlog_s:g}")
        if not 3 <= self.held_out_windows <= 256:
            raise ValueError("--held-out-windows must be in 3..256 (per class, one request)")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Progress:
    """Prints timestamped progress lines."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        """Print ``message`` with the elapsed time."""
        print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", flush=True)

    @property
    def elapsed(self) -> float:
        """Seconds since the demo started."""
        return time.monotonic() - self.t0


class _TerminatedError(Exception):
    """SIGTERM turned into an exception so that cleanup runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _TerminatedError


def app_dir() -> Path:
    """The Flower app folder (the project root, holding ``[tool.flwr.app]``)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise RuntimeError(
            f"{root} has no pyproject.toml: run the demo from a source checkout "
            "(pip install -e .), where the Flower app is built from"
        )
    return root


def _expected_windows(site: SiteSpec, backlog_s: float, window_samples: int, fs: float) -> int:
    samples = backlog_frames(backlog_s, fs) * FRAME_SAMPLES
    return len(site.assets) * (samples // window_samples)


def _wait_for_backlogs(
    opts: DemoOptions,
    stores: dict[str, Path],
    cfg: RunConfig,
    group: ProcessGroup,
    say: Progress,
    timeout_s: float = 180.0,
) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    expected = {
        s.site_id: _expected_windows(s, opts.backlog_s, cfg.window_samples, cfg.sample_rate_hz)
        for s in opts.sites
    }
    last_report = 0.0
    while True:
        group.check_alive()
        counts: dict[str, tuple[int, int]] = {}
        for site in opts.sites:
            path = stores[site.site_id]
            if not path.exists():
                counts[site.site_id] = (0, 0)
                continue
            try:
                with LocalStore(path, readonly=True) as store:
                    counts[site.site_id] = (store.count_windows(), store.count_labels())
            except StoreError:  # the agent has not initialised its store yet
                counts[site.site_id] = (0, 0)
        done = all(
            counts[s.site_id][0] >= expected[s.site_id] and counts[s.site_id][1] >= len(s.assets)
            for s in opts.sites
        )
        if done or time.monotonic() - last_report > 5:
            say(
                "edge stores: "
                + ", ".join(
                    f"{k} {w}/{expected[k]} windows, {n} labels" for k, (w, n) in counts.items()
                )
            )
            last_report = time.monotonic()
        if done:
            return {k: w for k, (w, _) in counts.items()}
        if time.monotonic() > deadline:
            raise TimeoutError("edge agents did not store the sensors' backlog in time")
        time.sleep(0.5)


def _print_round_table(cards: list[ModelCard], sites: list[str]) -> None:
    print()
    head = f"{'round':>5} {'version':>7} " + " ".join(f"{s + ' loss/acc':>20}" for s in sites)
    print(head + f" {'mean eval acc':>14}")
    print("-" * len(head + " " * 15))
    for card in cards:
        cells = []
        for site in sites:
            m = card.site_metrics.get(site, {})
            if "eval-loss" in m:
                cells.append(f"{m['eval-loss']:>9.3f} / {100 * m['eval-accuracy']:5.1f} %")
            else:
                cells.append(f"{'did not reply':>20}")
        acc = card.metrics.get("eval-accuracy", float("nan"))
        print(
            f"{card.server_round:>5} {card.label:>7} " + " ".join(cells) + f" {100 * acc:12.1f} %"
        )
    print()


def _erp_key(state_path: Path) -> str:
    """An API key for the demo's ERP client (tenant ``demo``, predictions only)."""
    from serving.state import Permission, SqliteStateStore

    store = SqliteStateStore(state_path)
    try:
        _, key = store.create_key("demo", [Permission.PREDICT], label="demo ERP client")
    finally:
        store.close()
    return key


def _print_held_out(report: HeldOutReport) -> None:
    print()
    print(f"ERP client, held-out machine (model {report.model_version}):")
    print(f"  {'true class':<12} {'windows':>7} {'correct':>7} {'mean p(failure)':>16}  predicted")
    for r in report.results:
        mix: dict[str, int] = {}
        for p in r.predicted:
            mix[p] = mix.get(p, 0) + 1
        mean_pf = sum(r.failure_probability) / max(len(r.failure_probability), 1)
        spread = ", ".join(f"{k} x{v}" for k, v in sorted(mix.items(), key=lambda kv: -kv[1]))
        print(
            f"  {r.true_class:<12} {len(r.predicted):>7} {r.correct:>7} {mean_pf:>16.3f}  {spread}"
        )
    by_severity = ", ".join(
        f"{100 * acc:.0f} % at {sev:g}" for sev, acc in report.accuracy_by_severity().items()
    )
    print(f"  faulty windows recognised by fault severity: {by_severity}")
    print(f"  example response item: {json.dumps(report.example)[:300]}")
    print()


def run_demo(opts: DemoOptions) -> int:
    """Run the demo; returns the process exit code."""
    say = Progress()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = (opts.workdir or Path("var") / "demo" / stamp).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    registry_dir = workdir / "registry"
    cfg = RunConfig(num_server_rounds=opts.rounds, local_epochs=opts.local_epochs)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    say(f"FedPM demo: {len(opts.sites)} sites, {opts.rounds} rounds; work dir {workdir}")
    group = ProcessGroup(workdir / "logs")
    broker = MosquittoBroker()
    watch: HealthWatch | None = None
    summary: dict[str, object] = {"workdir": str(workdir)}
    try:
        broker.start()
        say(f"mosquitto on {broker.host}:{broker.port}")
        stores = {s.site_id: workdir / "sites" / s.site_id / "store.sqlite" for s in opts.sites}
        for site in opts.sites:
            stores[site.site_id].parent.mkdir(parents=True, exist_ok=True)
            group.start(
                f"agent-{site.site_id}",
                [
                    sys.executable,
                    "-m",
                    "edge_agent",
                    "--site",
                    site.site_id,
                    "--mqtt-host",
                    broker.host,
                    "--mqtt-port",
                    str(broker.port),
                    "--store",
                    str(stores[site.site_id]),
                    "--registry",
                    str(registry_dir),
                ],
            )
        watch = HealthWatch(broker.host, broker.port)
        watch.start()
        watch.wait_online([s.site_id for s in opts.sites], timeout_s=60)
        for site in opts.sites:
            group.start(
                f"sensors-{site.site_id}",
                [
                    sys.executable,
                    "-m",
                    "fedpm",
                    "sensors",
                    "--site",
                    site.site_id,
                    "--mqtt-host",
                    broker.host,
                    "--mqtt-port",
                    str(broker.port),
                    "--backlog-s",
                    str(opts.backlog_s),
                    "--live",
                ],
            )
        say(
            f"{len(opts.sites)} edge agents and sensor gateways started "
            f"({sum(len(s.assets) for s in opts.sites)} assets, {opts.backlog_s:g} s backlog each)"
        )
        windows = _wait_for_backlogs(opts, stores, cfg, group, say)
        summary["stored_windows"] = windows

        federation = LocalFederation(group, workdir)
        federation.start([SiteNode(s.site_id, stores[s.site_id]) for s in opts.sites])
        say(
            f"Flower SuperLink on 127.0.0.1:{federation.port}, {len(opts.sites)} SuperNodes; "
            "starting the run with `flwr run`"
        )

        def on_line(raw: str) -> None:
            line = _ANSI.sub("", raw).split(":", 1)[-1].strip()
            if line.startswith("[ROUND"):
                say("federation: " + line.strip("[]").lower())
            elif "Received" in line and "failures" in line:
                phase = "training" if line.startswith("aggregate_train") else "evaluation"
                say(f"federation: {phase} replies: {line.split(': ', 1)[-1]}")

        code = federation.run(
            app_dir(),
            {
                "num-server-rounds": opts.rounds,
                "local-epochs": opts.local_epochs,
                "min-sites": len(opts.sites),
                "registry-dir": str(registry_dir),
            },
            on_line=on_line,
        )
        registry = FileRegistry(registry_dir)
        cards = registry.cards()
        if code != 0 or len(cards) < opts.rounds:
            raise RuntimeError(
                f"flwr run exited {code} with {len(cards)} of {opts.rounds} rounds published; "
                f"see {workdir / 'flwr-run.log'} and {workdir / 'logs'}"
            )
        _print_round_table(cards, [s.site_id for s in opts.sites])
        summary["rounds"] = [c.model_dump(mode="json", exclude={"metadata"}) for c in cards]

        port = free_port()
        state_path = workdir / "serving-state.sqlite"
        api_key = _erp_key(state_path)
        group.start(
            "serving",
            [
                sys.executable,
                "-m",
                "serving",
                "--registry",
                str(registry_dir),
                "--state",
                str(state_path),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
        )
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, group)
        say(f"serving API ready at {base} (model {cards[-1].label})")
        report = check_held_out(
            base,
            cfg.class_names,
            windows_per_class=opts.held_out_windows,
            window_samples=cfg.window_samples,
            api_key=api_key,
        )
        _print_held_out(report)
        summary["held_out_accuracy"] = report.accuracy
        summary["held_out_accuracy_by_severity"] = {
            str(k): v for k, v in report.accuracy_by_severity().items()
        }
        summary["model_version"] = report.model_version

        health = watch.wait_for_version(
            cards[-1].version,
            [(s.site_id, a.asset_id) for s in opts.sites for a in s.assets],
            timeout_s=30,
        )
        print("Edge health (latest retained message per asset):")
        for (site_id, asset_id), msg in sorted(health.items()):
            print(
                f"  {site_id}/{asset_id:<11} {msg.get('state', '?'):<8} "
                f"{msg.get('predicted_class', '?'):<11} "
                f"p(failure)={msg.get('failure_probability', float('nan')):.2f} "
                f"model v{msg.get('model_version', '-')}"
            )
        summary["edge_health"] = {f"{k[0]}/{k[1]}": v.get("state") for k, v in health.items()}
        print()
        say(
            f"held-out accuracy {100 * report.accuracy:.1f} % "
            f"({sum(len(r.predicted) for r in report.results)} windows from an unseen machine)"
        )
        summary["elapsed_s"] = round(say.elapsed, 1)
        if opts.json_path is not None:
            opts.json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return 0
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        return 130
    except _TerminatedError:
        say("terminated: stopping everything")
        return 143
    finally:
        if watch is not None:
            watch.stop()
        group.stop()
        broker.stop()
        signal.signal(signal.SIGTERM, previous)
        say("all demo processes stopped")


def _wait_ready(base: str, group: ProcessGroup, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        group.check_alive()
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"serving at {base} not ready after {timeout_s} s")
