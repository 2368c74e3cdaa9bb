#!/usr/bin/env bash
# One FedPM training run, driven to completion across pod restarts (the aggregator Job).
#
# 1. If the run's checkpoints already hold every round, published, exit 0 (nothing to do).
# 2. Start flower-superexec: it takes the run's ServerApp task from the SuperLink (Runtime API,
#    TLS + the SuperExec shared secret) and runs flwr-serverapp here, on the GPU node.
# 3. `fedpm fl run --run-name $FEDPM_RUN_NAME ...`: a new Flower run under the same run-name;
#    the ServerApp resumes from the newest checkpoint on the model volume
#    (aggregator.server_app.resume) and publishes each round to the registry there.
# 4. When it returns, the checkpoints say whether the run completed: exit 0 if so, 1 if not
#    (the Job starts a new pod, which resumes), 2 if fedpm refused the configuration (the Job's
#    podFailurePolicy fails the Job: retrying cannot help).
# A spot preemption kills this pod; the Job's podFailurePolicy ignores that failure (pod
# condition DisruptionTarget) and starts a new pod, which comes back here.
set -euo pipefail

: "${FEDPM_RUN_NAME:?}" "${FEDPM_RUN_ROUNDS:?}" "${FEDPM_RUN_STRATEGY:?}" "${FEDPM_RUN_MIN_SITES:?}"
: "${FEDPM_SUPERLINK:?}" "${FEDPM_APP_DIR:?}" "${FLWR_HOME:?}"
python="${FEDPM_PYTHON:-python}"
models="${FEDPM_MODELS_DIR:-/srv/fedpm}"
etc="${FEDPM_ETC_DIR:-/etc/fedpm}"
scripts="$(dirname "$0")"
check=("$python" "$scripts/run_complete.py" --checkpoint-dir "$models/checkpoints"
       --run-name "$FEDPM_RUN_NAME" --rounds "$FEDPM_RUN_ROUNDS")

if "${check[@]}"; then
  exit 0
fi

mkdir -p "$FLWR_HOME"
cp "$etc/flwr/config.toml" "$FLWR_HOME/config.toml"

flower-superexec \
  --runtime-api-address "$FEDPM_SUPERLINK" \
  --root-certificates "$etc/superlink-ca/ca.crt" \
  --superexec-auth-secret-file "$etc/superexec-auth/secret" \
  --health-server-address 0.0.0.0:9095 &
superexec=$!

read -r -a extra <<< "${FEDPM_RUN_EXTRA_ARGS:-}"
fedpm fl run \
  --federation fedpm --flwr-home "$FLWR_HOME" --app "$FEDPM_APP_DIR" \
  --run-name "$FEDPM_RUN_NAME" --rounds "$FEDPM_RUN_ROUNDS" \
  --strategy "$FEDPM_RUN_STRATEGY" --min-sites "$FEDPM_RUN_MIN_SITES" \
  --registry-dir "$models/registry" --checkpoint-dir "$models/checkpoints" \
  --runs-dir "$models/fl-runs" \
  --config "signing-key=$etc/model-signing/model-signing.key" \
  "${extra[@]}" &
run=$!

trap 'kill -TERM "$run" "$superexec" 2>/dev/null || true; exit 143' TERM INT

set +e
wait -n -p finished "$run" "$superexec"
code=$?
set -e
if [ "${finished:-}" = "$superexec" ]; then
  echo "flower-superexec exited with $code before the run ended; a new pod will resume" >&2
  kill -TERM "$run" 2>/dev/null || true
  wait "$run" || true
  exit 1
fi
kill -TERM "$superexec" 2>/dev/null || true
wait "$superexec" || true

if [ "$code" -eq 2 ]; then
  echo "fedpm fl run refused the run's configuration (exit 2); not retrying" >&2
  exit 2
fi
if "${check[@]}"; then
  exit 0
fi
echo "fedpm fl run returned $code with the run incomplete; a new pod will resume it" >&2
exit 1
