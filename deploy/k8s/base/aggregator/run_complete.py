"""Say whether a named federated run has completed, from its checkpoints alone.

The aggregator Job (``run-to-completion.sh``) asks this before it starts a run and after
``fedpm fl run`` returns, because neither ``flwr run --stream`` nor ``fedpm fl run`` can tell a
finished run from one whose ServerApp was killed with a spot node: both end when the SuperLink
closes the run. The checkpoints can. A run named ``R`` planned for ``N`` rounds is complete when
the newest checkpoint under ``<checkpoint-dir>/R/`` that reads and verifies holds round ``N`` or
later, and that round's model was published (or the round was skipped, which publishes nothing).
A checkpoint of round ``N`` without its registry version means the ServerApp died between
checkpoint and publish: not complete, and the resumed run publishes it
(``aggregator.server_app.resume``).

Exit codes: 0 complete, 1 not (yet) complete, 2 bad arguments. Nothing is written: unlike
``CheckpointStore.latest``, stale temporary files are left for the ServerApp to clear.

Usage::

    python run_complete.py --checkpoint-dir /srv/fedpm/checkpoints --run-name pilot-1 --rounds 30
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from aggregator.checkpoint import Checkpoint, CheckpointError, CheckpointStore

COMPLETE = 0
INCOMPLETE = 1
BAD_ARGUMENTS = 2


def newest_valid(store: CheckpointStore) -> Checkpoint | None:
    """The newest checkpoint of ``store`` that reads and verifies, without writing anything."""
    for server_round in reversed(store.rounds()):
        try:
            ckpt = Checkpoint.from_bytes(store.path_for(server_round).read_bytes())
        except (OSError, CheckpointError):
            continue
        if ckpt.server_round == server_round:
            return ckpt
    return None


def completion(checkpoint_dir: Path, run_name: str, rounds: int) -> tuple[bool, str]:
    """Whether run ``run_name`` completed ``rounds`` rounds, and a sentence saying where it is."""
    store = CheckpointStore(checkpoint_dir / run_name)
    ckpt = newest_valid(store)
    if ckpt is None:
        return False, f"run {run_name}: no valid checkpoint in {store.directory}"
    done = ckpt.server_round
    if done < rounds:
        return False, f"run {run_name}: {done} of {rounds} rounds checkpointed"
    log = ckpt.round_logs.get(done)
    if done not in ckpt.registry_versions and not (log is not None and log.skipped):
        return False, f"run {run_name}: round {done} checkpointed but not yet published"
    version = ckpt.registry_versions.get(done)
    published = "skipped" if version is None else f"published as v{version}"
    return True, f"run {run_name}: complete, round {done} of {rounds} {published}"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, print where the run stands, return the exit code."""
    parser = argparse.ArgumentParser(description="Has a named federated run completed?")
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--run-name", required=True)
    parser.add_argument("--rounds", type=int, required=True, help="num-server-rounds planned")
    args = parser.parse_args(argv)  # argparse exits with 2 (BAD_ARGUMENTS) on bad input
    if args.rounds < 1 or not args.run_name or Path(args.run_name).name != args.run_name:
        sys.stderr.write("error: --rounds must be >= 1 and --run-name a plain folder name\n")
        return BAD_ARGUMENTS
    complete, sentence = completion(args.checkpoint_dir, args.run_name, args.rounds)
    sys.stdout.write(sentence + "\n")
    return COMPLETE if complete else INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
