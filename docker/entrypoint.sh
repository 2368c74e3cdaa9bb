#!/bin/sh
# Entry point of the FedPM images: settings' secrets from files, then the command.
#
# For each variable FEDPM_<NAME>__FILE=/path (compose `secrets:`, Kubernetes secret volumes),
# export FEDPM_<NAME> with the file's content (trailing newlines dropped) and unset the __FILE
# variable, so a secret never appears in the compose file, the image or `docker inspect`.
# Settings whose own name ends in _FILE (FEDPM_EDGE_MQTT_CA_FILE) are paths and stay as they are:
# the suffix here is a double underscore, as Grafana's GF_<NAME>__FILE.
set -eu
for name in $(env | sed -n 's/^\(FEDPM_[A-Z0-9_]*[A-Z0-9]\)__FILE=.*/\1/p'); do
  eval "path=\${${name}__FILE}"
  if [ ! -r "$path" ]; then
    echo "fedpm-entrypoint: ${name}__FILE names $path, which cannot be read" >&2
    exit 64
  fi
  value=$(cat "$path")
  export "$name=$value"
  unset "${name}__FILE"
done
exec "$@"
