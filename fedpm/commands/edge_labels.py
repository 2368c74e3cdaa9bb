"""``fedpm edge-labels import|pull``: label a site store's windows from maintenance events.

``fedpm edge-labels import --store PATH LABELS.csv [--map CODE=CLASS ...] [--json OUT]``
validates the whole file (format in :mod:`edge_agent.labels_csv`: asset_id, start, end, label
or failure_code, optional sensor_id and source) and, only if every row is good, adds its labels
to the store in one transaction; a row already in the store is counted, not added again, so an
import can be repeated. The store must exist (a mistyped path is not a new, empty store); the
agent may be running. Exit codes: 0 on success, 1 when the file has bad rows (each listed with
its line number; nothing is written) or the store cannot be used, 2 on invalid arguments.

``fedpm edge-labels pull --url URL --api-key-file FILE --store PATH [--site SITE] [--json OUT]``
fetches the labels the serving API recorded for closed maintenance requests
(``GET /v1/labels``, cursor-paged; :mod:`fedpm.labels_pull`) and adds them the same way,
remembering its cursor next to the store; run it before each federated round (cron, systemd
timer). Exit codes: 0 on success, 1 when the API or the store cannot be used, 2 on invalid
arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedpm.commands.options import add_json

NAME = "edge-labels"
HELP = "add maintenance labels (CSV work orders, or closed requests from serving) to a store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``edge-labels`` actions (``import``) to `parser`."""
    actions = parser.add_subparsers(dest="action", required=True)
    imp = actions.add_parser(
        "import",
        help="validate a labels CSV and add its labels to the store (all or nothing)",
        description="Columns: asset_id, start, end (ISO 8601 with a time zone, or UNIX ns), "
        "label or failure_code, and optionally sensor_id and source.",
    )
    imp.add_argument("--store", type=Path, required=True, help="the edge agent's SQLite store")
    imp.add_argument("csv", type=Path, help="labels file (UTF-8 CSV with a header row)")
    imp.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="CODE=CLASS",
        help="a site failure code and the FedPM class it means (repeatable; overrides the "
        "defaults BRG-IR, BRG-OR, BRG-BALL, BRG-CAGE, OK, ...)",
    )
    add_json(imp)
    pull = actions.add_parser(
        "pull",
        help="fetch labels of closed maintenance requests from the serving API into the store",
        description="Pages through GET /v1/labels after the saved cursor and adds every label "
        "(idempotent); the cursor is kept in <store>.labels-cursor.json.",
    )
    pull.add_argument("--url", required=True, help="serving API base URL (https://...)")
    pull.add_argument(
        "--api-key-file", type=Path, required=True, help="file holding the site's API key"
    )
    pull.add_argument("--store", type=Path, required=True, help="the edge agent's SQLite store")
    pull.add_argument("--site", default=None, help="only this site (default: the key's sites)")
    add_json(pull)


def parse_mapping(items: list[str]) -> dict[str, str]:
    """``CODE=CLASS`` items as a dictionary.

    Raises
    ------
    ValueError
        An item without ``=`` or with an empty side.
    """
    mapping = {}
    for item in items:
        code, sep, cls = item.partition("=")
        if not sep or not code.strip() or not cls.strip():
            raise ValueError(f"--map takes CODE=CLASS, got {item!r}")
        mapping[code.strip()] = cls.strip()
    return mapping


def run(args: argparse.Namespace) -> int:
    """Run the action; 0 on success, 1 on bad rows or an unusable store, 2 on bad arguments."""
    if args.action == "pull":
        return _pull(args)
    from edge_agent.errors import StoreError
    from edge_agent.labels_csv import LabelImportError, import_labels_csv
    from edge_agent.store import LocalStore

    try:
        mapping = parse_mapping(args.map)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if not args.store.is_file():
        sys.stderr.write(f"error: no store at {args.store} (start the agent once to create it)\n")
        return 1
    try:
        with LocalStore(args.store) as store:
            report = import_labels_csv(store, args.csv, mapping)
    except LabelImportError as exc:
        sys.stderr.write(f"error: {args.csv}: {exc}\n")
        if args.json is not None:
            _write(
                args,
                {
                    "imported": False,
                    "errors": [{"line": line, "message": text} for line, text in exc.errors],
                },
            )
        return 1
    except StoreError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    per_class = ", ".join(f"{label} {n}" for label, n in report.by_label.items())
    sys.stdout.write(
        f"{args.csv}: {report.rows} labels read, {report.added} added, "
        f"{report.already_present} already in {args.store} ({per_class or 'none'})\n"
    )
    if args.json is not None:
        _write(
            args,
            {
                "imported": True,
                "rows": report.rows,
                "added": report.added,
                "already_present": report.already_present,
                "by_label": report.by_label,
            },
        )
    return 0


def _write(args: argparse.Namespace, result: dict[str, object]) -> None:
    from fedpm.commands.output import write_json

    write_json(args.json, {"csv": str(args.csv), "store": str(args.store), **result})


def _pull(args: argparse.Namespace) -> int:
    from edge_agent.errors import StoreError
    from edge_agent.store import LocalStore
    from fedpm.commands.output import write_json
    from fedpm.labels_pull import LabelPullError, pull_labels

    try:
        api_key = args.api_key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        sys.stderr.write(f"error: cannot read {args.api_key_file}: {exc.strerror or exc}\n")
        return 2
    if not api_key:
        sys.stderr.write(f"error: {args.api_key_file} is empty\n")
        return 2
    if not args.store.is_file():
        sys.stderr.write(f"error: no store at {args.store} (start the agent once to create it)\n")
        return 1
    try:
        with LocalStore(args.store) as store:
            report = pull_labels(store, args.store, args.url, api_key, site=args.site)
    except (LabelPullError, StoreError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    for reason in report.skipped:
        sys.stderr.write(f"warning: skipped {reason}\n")
    sys.stdout.write(
        f"{args.url}: {report.read} labels read, {report.added} added, "
        f"{report.already_present} already in {args.store}, {len(report.skipped)} skipped "
        f"(cursor {report.cursor})\n"
    )
    if args.json is not None:
        write_json(
            args.json,
            {
                "url": args.url,
                "store": str(args.store),
                "read": report.read,
                "added": report.added,
                "already_present": report.already_present,
                "skipped": report.skipped,
                "cursor": report.cursor,
            },
        )
    return 0
