#!/usr/bin/env bash
# Set up FedPM on a fresh Debian/Ubuntu machine: Mosquitto, a .venv with pinned packages.
# Usage: scripts/bootstrap.sh [--dev]     (idempotent; re-running only checks)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
  if is_root && command -v apt-get >/dev/null 2>&1; then
    say "installing $* with apt-get"
    if [ ! -f /tmp/.fedpm-apt-updated ]; then apt-get update -qq && touch /tmp/.fedpm-apt-updated; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    return 1
  fi
}

# 1. Python 3.11
PY=""
for cand in python3.11 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    PY=$(command -v "$cand"); break
  fi
done
if [ -z "$PY" ]; then
  echo "FedPM needs Python 3.11. On Debian/Ubuntu: sudo apt-get install python3.11 python3.11-venv" >&2
  exit 1
fi

# 2. Mosquitto (the demo and the integration tests start their own broker process)
if ! PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v mosquitto >/dev/null 2>&1; then
  apt_install mosquitto || {
    echo "Mosquitto is missing. Install it as root: sudo apt-get install mosquitto" >&2
    echo "(macOS: brew install mosquitto). Then run this command again." >&2
    exit 1
  }
fi

# 2b. For the test suite only: VictoriaMetrics, which accepts InfluxDB's /api/v2/write line
# protocol, stands in for InfluxDB 2 (not packaged for Debian) in the telemetry tests.
if [ -n "$extras" ] && ! command -v victoria-metrics >/dev/null 2>&1; then
  apt_install victoria-metrics || {
    echo "note: victoria-metrics is missing (sudo apt-get install victoria-metrics);" >&2
    echo "      the telemetry integration tests will be skipped (they fail under CI=true)." >&2
  }
fi

# 2c. For the test suite only: the deployment checks (tests/deploy) validate docker/compose.yml
# with Debian's docker-compose and let a real Prometheus scrape real FedPM processes.
if [ -n "$extras" ]; then
  for pkg in docker-compose prometheus; do
    if ! command -v "$pkg" >/dev/null 2>&1; then
      apt_install "$pkg" || {
        echo "note: $pkg is missing (sudo apt-get install $pkg);" >&2
        echo "      the deployment checks that need it will be skipped (they fail under CI=true)." >&2
      }
    fi
  done
fi

# 3. The virtual environment, with torch pinned to the CPU wheel (no CUDA download)
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3.11-venv || apt_install python3-venv || {
      echo "python venv support is missing: sudo apt-get install python3.11-venv" >&2; exit 1; }
    "$PY" -m venv .venv
  fi
fi
stamp=".venv/.fedpm-installed${extras}"
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing FedPM and its pinned dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".${extras}"
  echo "$want" > "$stamp"
fi
