"""A site that dies mid-round: its SuperNode SIGKILLed while it handles a train message.

Three runs of a real federation on loopback (a SuperLink, four SuperNodes, ``flwr run``),
each on fresh processes:

- ``clean``: no fault, the reference round wall times;
- ``kill``: during round 2 the victim's SuperNode is SIGKILLed (its whole process group, the
  ClientApp handling its train message too) 1 s after its ClientApp process starts;
  ``round-timeout-s`` stays at the default (600 s), so round 2 ends when the SuperLink
  declares the node offline (no heartbeat for up to 2 x 30 s, Flower's defaults) and
  answers its message with an error;
- ``kill-timeout``: the same kill with ``round-timeout-s`` set to ``--timeout-s`` (by
  default 1.5 x the clean run's slowest train phase, so the healthy sites still make it).

``min-sites = 3`` (later rounds need 3 online SuperNodes, not 4: Flower's sampling waits for
``min-sites`` online nodes) and ``min-reply-fraction = 0.75`` (3 valid replies of 4 sampled
carry the round). The RoundLogs from the checkpoints show who replied in each round.

    .venv/bin/python -m bench.bench_fl_faults [--rounds 4] [--timeout-s T] [--scenarios kill]
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aggregator.rounds import RoundLog
from bench.bench_round_overhead import (
    RoundSpan,
    round_logs,
    round_spans,
    seed_sites,
    wait_for_nodes,
)
from fedpm.demo import app_dir
from fedpm.federation import LocalFederation
from fedpm.procs import Child, ProcessGroup, group_processes

SITES = 4
VICTIM = "site-3"
KILL_ROUND = 2


def clientapp_pids(pgid: int) -> list[int]:
    """``flwr-clientapp`` processes in process group ``pgid``."""
    return group_processes(pgid, b"flwr-clientapp")


class MidRoundKiller:
    """``on_line`` callback: in round ``kill_round``, SIGKILL ``victim`` while it handles its
    train message.

    Waits (in a thread, the log stream keeps flowing) for the victim's ``flwr-clientapp``
    process of that round, then ``delay_s``, and kills the SuperNode's whole process group,
    ClientApp included, as a power cut at the site would. (Waiting for the ClientApp to open
    the store instead missed the fraction of a second it is open under load, and the kill
    then landed after the train reply: see docs/federated-benchmarks.md.)
    """

    def __init__(self, victim: Child, kill_round: int, delay_s: float = 1.0) -> None:
        self.victim = victim
        self.kill_round = kill_round
        self.delay_s = delay_s
        self.killed_at: float | None = None
        self.saw_clientapp = False
        self._thread: threading.Thread | None = None

    def __call__(self, line: str) -> None:
        if self._thread is None and f"[ROUND {self.kill_round}/" in line:
            self._thread = threading.Thread(target=self._kill, daemon=True)
            self._thread.start()

    def _kill(self) -> None:
        pgid = self.victim.proc.pid  # start_new_session: the SuperNode leads its group
        deadline = time.monotonic() + 300.0
        while not self.saw_clientapp and time.monotonic() < deadline:
            self.saw_clientapp = bool(clientapp_pids(pgid))
            time.sleep(0.05)
        time.sleep(self.delay_s)
        os.killpg(pgid, signal.SIGKILL)
        self.killed_at = time.perf_counter()


@dataclass
class Outcome:
    name: str
    spans: list[RoundSpan]
    logs: dict[int, RoundLog]
    killed_at: float | None
    saw_clientapp: bool


def run_scenario(
    work: Path, name: str, rounds: int, windows_per_mode: int, timeout_s: float | None, kill: bool
) -> Outcome:
    root = work / name
    nodes = seed_sites(root, SITES, windows_per_mode)
    marks: list[tuple[float, str]] = []
    with ProcessGroup(root / "logs") as group:
        fed = LocalFederation(group, root)
        fed.start(nodes)
        wait_for_nodes(fed, SITES)
        victim = next(c for c in group.children if c.name == f"supernode-{VICTIM}")
        killer = MidRoundKiller(victim, KILL_ROUND) if kill else None

        def on_line(line: str) -> None:
            marks.append((time.perf_counter(), line))
            if killer is not None:
                killer(line)

        run_config: dict[str, object] = {
            "num-server-rounds": rounds,
            "local-epochs": 2,
            "min-sites": SITES - 1,
            "min-reply-fraction": 0.75,
            "registry-dir": str(root / "registry"),
            "checkpoint-dir": str(root / "checkpoints"),
            "run-name": name,
        }
        if timeout_s is not None:
            run_config["round-timeout-s"] = timeout_s
        code = fed.run(app_dir(), run_config, on_line=on_line, timeout_s=1200)
    if code != 0:
        raise SystemExit(f"{name}: flwr run failed ({code}); see {root}/flwr-run.log")
    return Outcome(
        name,
        round_spans(marks),
        round_logs(root / "checkpoints", name),
        killer.killed_at if killer else None,
        killer.saw_clientapp if killer else False,
    )


def report(out: Outcome, timeout_s: float | None, clean_median: float | None) -> None:
    """Print one scenario's rows as soon as it is done (a long bench keeps what it measured)."""
    for span in out.spans:
        log = out.logs[span.server_round]
        print(
            f"| {out.name} | {timeout_s or 600:g} | {span.server_round} | {span.seconds:.1f} | "
            f"{span.train_phase:.1f} | {len(log.sites)}/{log.sampled} "
            f"({'all' if VICTIM in log.sites else 'no ' + VICTIM}) | {log.failures} | "
            f"{'yes' if log.skipped else 'no'} |",
            flush=True,
        )
    if out.killed_at is None:
        return
    span = next(s for s in out.spans if s.server_round == KILL_ROUND)
    reference = clean_median or out.spans[0].seconds  # else this run's round 1, all sites
    victim_train = out.logs[1].site_metrics[VICTIM]["train-seconds"]
    print(
        f"{out.name}: {VICTIM}'s train() took {victim_train:.1f} s in round 1; killed "
        f"1 s after its round-{KILL_ROUND} ClientApp process started: {out.saw_clientapp}; "
        f"round {KILL_ROUND} {span.seconds:.1f} s = {span.seconds / reference:.1f}x "
        f"{'the clean median round' if clean_median else 'round 1'} ({reference:.1f} s); its "
        f"train phase ended {span.train_end - out.killed_at:.1f} s after the kill",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--windows-per-mode", type=int, default=30)
    parser.add_argument(
        "--timeout-s", type=float, default=0.0, help="0: 1.5 x the clean run's slowest train phase"
    )
    parser.add_argument("--scenarios", default="clean,kill,kill-timeout")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs in this folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"{SITES} SuperNodes x {4 * args.windows_per_mode} simulated windows, 2 local epochs, "
        f"{args.rounds} rounds, min-sites {SITES - 1}, min-reply-fraction 0.75; "
        f"{VICTIM} SIGKILLed in round {KILL_ROUND}"
    )
    print(
        "| run | round-timeout-s | round | wall s | train phase s | replied (train) | "
        "failures | skipped |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    clean_median: float | None = None
    clean_train_max = 0.0
    timeout_s = args.timeout_s or None
    with tempfile.TemporaryDirectory(prefix="fedpm-faults-") as tmp:
        work = args.keep or Path(tmp)
        for name in args.scenarios.split(","):
            if name not in ("clean", "kill", "kill-timeout"):
                raise SystemExit(f"unknown scenario {name!r}")
            timeout = timeout_s if name == "kill-timeout" else None
            if name == "kill-timeout" and timeout is None:
                if not clean_train_max:
                    raise SystemExit("kill-timeout needs --timeout-s or the clean scenario first")
                timeout = timeout_s = float(math.ceil(1.5 * clean_train_max))
            out = run_scenario(
                work, name, args.rounds, args.windows_per_mode, timeout, name != "clean"
            )
            if name == "clean":
                clean_median = statistics.median(s.seconds for s in out.spans)
                # a timeout the healthy sites meet with room to spare (the load here varies)
                clean_train_max = max(s.train_phase for s in out.spans)
            report(out, timeout, clean_median)


if __name__ == "__main__":
    main()
