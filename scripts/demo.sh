#!/usr/bin/env bash
# One command: set everything up on a fresh machine, then run the FedPM demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/fedpm demo "$@"
