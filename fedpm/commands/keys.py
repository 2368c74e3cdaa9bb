"""``fedpm keys``: the Ed25519 key pair that signs published models.

``fedpm keys generate --out DIR`` writes ``DIR/model-signing.key`` (the private key, mode
0600: it stays with the aggregator, named by the run config's ``signing-key``) and
``DIR/model-signing.pub`` (the public key: give it to every edge agent as
``model_verify_key``). Existing keys are never overwritten unless ``--force`` is given. See
``docs/ota.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "keys"
HELP = "generate the Ed25519 key pair that signs published models (see docs/ota.md)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``keys generate`` subcommand to `parser`."""
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="{generate}")
    generate = sub.add_parser(
        "generate",
        help="write a new model-signing key pair",
        description="Write model-signing.key (private, mode 0600) and model-signing.pub "
        "(public) into --out. The aggregator signs with the first (run config signing-key); "
        "edge agents verify with the second (model_verify_key).",
    )
    generate.add_argument("--out", type=Path, required=True, help="folder for the two key files")
    generate.add_argument(
        "--force", action="store_true", help="replace keys already in --out (old signatures break)"
    )


def run(args: argparse.Namespace) -> int:
    """Generate the key pair; print where it went and its key id. Returns the exit code."""
    from models.errors import SigningKeyError
    from models.signing import key_id, load_public_key, write_key_pair

    try:
        private_path, public_path = write_key_pair(args.out, overwrite=args.force)
    except SigningKeyError as exc:
        sys.stderr.write(f"error: {exc} (use --force to replace it)\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"error: cannot write keys to {args.out}: {exc.strerror or exc}\n")
        return 1
    sys.stdout.write(
        f"private key: {private_path} (keep it on the aggregator; run config signing-key)\n"
        f"public key:  {public_path} (copy to each edge agent; model_verify_key)\n"
        f"key id:      {key_id(load_public_key(public_path))}\n"
    )
    return 0
