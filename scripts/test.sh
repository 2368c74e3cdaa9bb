#!/usr/bin/env bash
# One command: set everything up on a fresh machine, then lint, type-check and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --dev
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
# one command per line: under `set -e` a failure on the left of `&&` would not stop the script
echo "==> ruff"
ruff check .
ruff format --check .
echo "==> mypy";  mypy
echo "==> pytest"
exec pytest "$@"
