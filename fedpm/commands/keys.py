"""``fedpm keys``: the key pairs of a deployment.

``fedpm keys supernode --out DIR --name SITE`` writes a SuperNode authentication key pair
(ECDSA P-384, the format Flower reads): the private key goes to the site's edge agent
(``supernode_auth_private_key``), the public key to the SuperLink operator, who registers it
with ``flwr supernode register`` (docs/federated-security.md).

The model-signing pair:

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
HELP = "generate key pairs: model signing (docs/ota.md), SuperNode authentication"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``keys generate`` and ``keys supernode`` subcommands to `parser`."""
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="{generate,supernode}")
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

    node = sub.add_parser(
        "supernode",
        help="write a SuperNode authentication key pair for one site",
        description="Write NAME (private, mode 0600: the site's supernode_auth_private_key) and "
        "NAME.pub (register it on the SuperLink: flwr supernode register NAME.pub).",
    )
    node.add_argument("--out", type=Path, required=True, help="folder for the two key files")
    node.add_argument("--name", required=True, help="file stem, usually the site id")


def run(args: argparse.Namespace) -> int:
    """Generate the key pair; print where it went. Returns the exit code."""
    if args.keys_command == "supernode":
        return _supernode_key(args)
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


def _supernode_key(args: argparse.Namespace) -> int:
    from fedpm.pki import write_node_key

    target = args.out / args.name
    if target.exists():
        sys.stderr.write(f"error: {target} exists; remove it first to make a new key\n")
        return 1
    try:
        key = write_node_key(args.out, args.name)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"error: cannot write keys to {args.out}: {exc.strerror or exc}\n")
        return 1
    sys.stdout.write(
        f"private key: {key.private_key} (the site's supernode_auth_private_key)\n"
        f"public key:  {key.public_key}"
        f" (on the SuperLink: flwr supernode register {key.public_key})\n"
    )
    return 0
