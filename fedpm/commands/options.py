"""Options several analytics commands share, defined once so they read the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_manifest(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """``--manifest PATH`` (required); ``what`` says which manifest, for the help."""
    parser.add_argument("--manifest", type=Path, required=True, help=f"{what} (TSV or CSV)")


def add_filter(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--filter COLUMN=V[,V]``, repeatable (``COLUMN!=...`` drops records)."""
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="COLUMN=V[,V]",
        help="keep records whose column is one of the values (COLUMN!=... drops them); "
        "repeat to combine (all must hold)",
    )


def add_json(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--json PATH``: the command's machine-readable result."""
    parser.add_argument("--json", type=Path, default=None, help="write the result as JSON here")


def add_model(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """``--model PATH`` (a model file or registry folder), ``--version N`` and ``--channels``."""
    parser.add_argument("--model", type=Path, required=True, help=f"{what}, or a registry folder")
    parser.add_argument(
        "--version", type=int, default=None, help="registry version (default: newest valid)"
    )
    parser.add_argument(
        "--channels",
        default=None,
        help="record channels fed to the model (default: those it was trained on, else de)",
    )
