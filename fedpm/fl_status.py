"""``fedpm fl status`` and ``fedpm fl history``: the runs folder and the SuperLink's own list.

``status`` lists the latest runs of the runs folder with their state (``running``,
``finished``, ``failed``, ``interrupted``) and the round they reached, then the SuperLink's
runs (``flwr ls --format json``) when it answers. ``history`` is the table of past runs
(:func:`history_rows`), also as JSON. See docs/fl-workflow.md.
"""

from __future__ import annotations

import argparse
import subprocess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedpm.fl_runs import RunRecord


def superlink_runs(args: argparse.Namespace) -> list[dict[str, Any]] | str:
    """The SuperLink's runs (``flwr ls --format json``), or why they could not be listed."""
    import json

    from fedpm.fl_runs import flwr_env
    from fedpm.procs import venv_bin

    argv = [venv_bin("flwr"), "ls"]
    if args.federation:
        argv.append(args.federation)
    argv += ["--format", "json"]
    try:
        result = subprocess.run(
            argv,
            env=flwr_env(args.flwr_home),
            capture_output=True,
            text=True,
            timeout=60,  # the flwr CLI alone takes seconds to start on a busy machine
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"flwr ls failed: {exc}"
    text = result.stdout
    start = text.find("{")
    try:
        reply = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        reply = {}
    if result.returncode != 0 or not reply.get("success", False):
        why = (reply.get("error") or (result.stdout + result.stderr)).strip().splitlines()
        return f"not reachable ({why[-1] if why else f'exit {result.returncode}'})"
    runs = reply.get("runs", [])
    return runs if isinstance(runs, list) else []


def status_command(args: argparse.Namespace) -> int:
    """``fedpm fl status``."""
    from fedpm.fl_runs import RunStore, live_status

    runs = RunStore(args.runs_dir).runs()
    active = [r for r in runs if live_status(r) == "running"]
    print(f"runs in {args.runs_dir}: {len(runs)} ({len(active)} in progress)")
    for r in runs[-10:]:
        last = r.last
        where = f"round {last.get('round')}/{last.get('num_rounds')}" if last else "no round yet"
        print(f"  {r.run_id:<32} {live_status(r):<11} {r.kind:<8} {where}")
    if args.no_superlink:
        return 0
    listed = superlink_runs(args)
    name = args.federation or "default connection"
    if isinstance(listed, str):
        print(f"SuperLink ({name}): {listed}")
        return 0
    print(f"SuperLink ({name}): {len(listed)} runs")
    for run in listed:
        print("  " + ", ".join(f"{k} {v}" for k, v in run.items() if k in _LS_KEYS))
    return 0


_LS_KEYS = ("run-id", "fab-name", "status", "elapsed", "running-at", "finished-at")


def history_rows(runs: list[RunRecord]) -> list[dict[str, Any]]:
    """One summary row per run (what ``fedpm fl history`` shows)."""
    from fedpm.fl_runs import live_status

    rows = []
    for r in runs:
        last = r.last
        sites = r.sites if r.sites is not None else len(last.get("sites", [])) or None
        rows.append(
            {
                "run_id": r.run_id,
                "date": r.started_at,
                "kind": r.kind,
                "status": live_status(r),
                "strategy": r.strategy,
                "rounds": len(r.rounds),
                "planned_rounds": last.get("num_rounds"),
                "sites": sites,
                "final_accuracy": last.get("eval_accuracy"),
                "dp_epsilon": last.get("dp_epsilon"),
                "registered_version": r.model.get("version"),
                "flower_run_id": r.flower_run_id,
            }
        )
    return rows


def history_command(args: argparse.Namespace) -> int:
    """``fedpm fl history``."""
    from fedpm.commands.output import write_json
    from fedpm.fl_runs import RunStore

    rows = history_rows(RunStore(args.runs_dir).runs())
    if not rows:
        print(f"no runs in {args.runs_dir}")
    else:
        print(f"{'run':<32} {'date':<20} {'status':<11} {'strategy':<13} {'rounds':>6} "
              f"{'sites':>5} {'accuracy':>8} {'epsilon':>8} {'model':>6}")  # fmt: skip
        for row in rows:
            acc, eps, ver = row["final_accuracy"], row["dp_epsilon"], row["registered_version"]
            print(
                f"{row['run_id']:<32} {row['date'][:19]:<20} {row['status']:<11} "
                f"{row['strategy']:<13} {row['rounds']:>6} {row['sites'] or '-':>5} "
                f"{f'{acc:.3f}' if isinstance(acc, float) else '-':>8} "
                f"{f'{eps:.3g}' if isinstance(eps, float) else '-':>8} "
                f"{f'v{ver}' if ver else '-':>6}"
            )
    if args.json is not None:
        write_json(args.json, {"runs": rows})
    return 0
