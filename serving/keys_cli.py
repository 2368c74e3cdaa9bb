r"""``python -m serving keys``: create, list and revoke the API keys of the serving state.

    python -m serving keys create --tenant acme --permissions predict,manage_assets \
        [--sites plant-a,plant-b] [--rate 600] [--label "SAP PM prod"] [--state PATH]
    python -m serving keys list [--tenant acme]
    python -m serving keys revoke KEY_ID

``create`` prints the key once, on standard output alone (for scripts); it cannot be shown
again. ``--state`` defaults to ``FEDPM_SERVE_STATE_PATH`` or the service's default. Exit codes:
0, 2 for bad arguments or an unknown key id.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from serving.settings import ServeSettings
from serving.state import Permission, SqliteStateStore, StateError

EXIT_BAD = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving keys", description="Manage the serving API's keys."
    )
    parser.add_argument("--state", type=Path, default=None, help="state file (SQLite)")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--permissions",
        default="predict",
        help=f"comma-separated, of {', '.join(p.value for p in Permission)} (default predict)",
    )
    create.add_argument("--sites", default="", help="comma-separated sites (default: all)")
    create.add_argument("--rate", type=int, default=0, help="requests/minute (0: default)")
    create.add_argument("--label", default="", help="what the key is for")
    listing = sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", default=None)
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    return parser


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def main(argv: Sequence[str]) -> int:
    """Run one key action; return the exit code."""
    args = _parser().parse_args(list(argv))
    path = args.state or ServeSettings().state_path
    try:
        store = SqliteStateStore(path)
    except StateError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_BAD
    try:
        if args.action == "create":
            try:
                perms = [Permission(p.strip()) for p in args.permissions.split(",") if p.strip()]
            except ValueError:
                sys.stderr.write(
                    f"error: unknown permission in {args.permissions!r}; use "
                    f"{', '.join(p.value for p in Permission)}\n"
                )
                return EXIT_BAD
            sites = [s.strip() for s in args.sites.split(",") if s.strip()]
            key, presented = store.create_key(
                args.tenant, perms, sites=sites, rate_per_minute=args.rate, label=args.label
            )
            sys.stderr.write(
                f"created key {key.key_id} for tenant {key.tenant}"
                f" ({', '.join(sorted(key.permissions)) or 'no permissions'};"
                f" sites: {', '.join(sorted(key.sites)) or 'all'}); it is shown only once\n"
            )
            sys.stdout.write(presented + "\n")
        elif args.action == "list":
            for key in store.list_keys(args.tenant):
                sys.stdout.write(
                    f"{key.key_id}  {key.tenant:<16} {','.join(sorted(key.permissions)):<40}"
                    f" sites={','.join(sorted(key.sites)) or '*'}"
                    f" rate={key.rate_per_minute or 'default'} created={_when(key.created_at)}"
                    f" revoked={_when(key.revoked_at)} {key.label}\n"
                )
        else:
            store.revoke_key(args.key_id)
            sys.stderr.write(f"revoked key {args.key_id}\n")
    except StateError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_BAD
    finally:
        store.close()
    return 0
