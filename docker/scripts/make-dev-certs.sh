#!/usr/bin/env bash
# Development secrets for docker/compose.yml, made offline in about a second:
#
#   ca-private/fedpm-ca.key       the dev CA's key (never mounted; keep it to issue more)
#   fedpm-ca.crt                  the dev CA every service and client trusts
#   mosquitto.{crt,key}           broker (SANs mosquitto, localhost, 127.0.0.1)
#   superlink.{crt,key}           Flower SuperLink: Fleet, Control and Runtime API
#   influxdb.{crt,key}            InfluxDB 2 HTTPS
#   <site>-mqtt.{crt,key}         the site's edge agent: MQTT client certificate (CN = site)
#   <site>-mqtt-password          ... and its MQTT password
#   gateway-<site>-mqtt.{crt,key} the site's sensor gateway (simulator): client certificate
#   gateway-<site>-mqtt-password  ... and its MQTT password
#   <site>-supernode{,.pub}       the site's SuperNode authentication key pair (OpenSSH, P-384)
#   mosquitto-passwd              every MQTT user's password, hashed by mosquitto_passwd
#   model-signing.{key,pub}       Ed25519 key pair: the ServerApp signs every published model,
#                                 serving and the edge agents verify (models/signing.py)
#   superexec-secret              shared secret of the SuperLink and the aggregator's SuperExec
#   influxdb-admin-password, influxdb-admin-token, grafana-admin-password
#
# Certificates and keys come from fedpm.pki (write_ca, issue_cert, write_node_key) and
# models.signing (write_key_pair), the same code the demo and the tests use. Serving API keys are not made here: they live hashed in the
# serving state and are scoped per tenant; create them in the running stack (docker/README.md).
#
# Usage: docker/scripts/make-dev-certs.sh [--force] [OUT_DIR]      (default docker/secrets)
#        FEDPM_SITES="site-a site-b site-c" (the default) names the sites.
#
# File modes: OUT_DIR is 0700, so other users of this machine cannot read into it; the files in
# it are 0644 because compose bind-mounts each secret file as it is (compose's file secrets
# ignore uid/gid/mode), and the services read them as their own non-root users (Mosquitto 1883,
# Flower 49999, FedPM 10001, Grafana 472, InfluxDB 1000). The CA key stays 0600.
set -euo pipefail
cd "$(dirname "$0")/../.."

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
out=${1:-docker/secrets}
read -r -a sites <<< "${FEDPM_SITES:-site-a site-b site-c}"
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
passwd_tool=$(command -v mosquitto_passwd || true)
if [ -z "$passwd_tool" ]; then
  echo "mosquitto_passwd is missing (apt-get install mosquitto, or brew install mosquitto)" >&2
  exit 1
fi
if [ -e "$out/fedpm-ca.crt" ]; then
  if [ "$force" != 1 ]; then
    echo "$out already holds secrets; pass --force to replace them all" >&2
    exit 1
  fi
elif [ -d "$out" ] && [ -n "$(ls -A "$out")" ]; then
  echo "$out is not empty and holds no FedPM secrets: choose another folder" >&2
  exit 1
fi

mkdir -p "$out"
chmod 700 "$out"
"$py" - "$out" "${sites[@]}" <<'PY'
import secrets
import sys
from pathlib import Path

from fedpm.pki import issue_cert, write_ca, write_node_key
from models.signing import write_key_pair

out, sites = Path(sys.argv[1]), sys.argv[2:]
ca = write_ca(out / "ca-private", common_name="FedPM pilot dev CA")
(out / "fedpm-ca.crt").write_bytes(ca.cert.read_bytes())
ca.key.rename(out / "ca-private" / "fedpm-ca.key")
ca.cert.unlink()
ca = type(ca)(out / "fedpm-ca.crt", out / "ca-private" / "fedpm-ca.key")
for server in ("mosquitto", "superlink", "influxdb"):
    issue_cert(ca, out, server, hosts=[server, "localhost", "127.0.0.1"])
users = []
for site in sites:
    for user in (site, f"gateway-{site}"):
        issue_cert(ca, out, f"{user}-mqtt", client=True)
        password = secrets.token_urlsafe(24)
        (out / f"{user}-mqtt-password").write_text(password + "\n", encoding="utf-8")
        users.append(f"{user}:{password}")
    write_node_key(out, f"{site}-supernode")
write_key_pair(out, overwrite=True)
(out / "mosquitto-passwd").write_text("\n".join(users) + "\n", encoding="utf-8")
for name in ("superexec-secret", "influxdb-admin-password", "influxdb-admin-token",
             "grafana-admin-password"):
    (out / name).write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
PY
"$passwd_tool" -U "$out/mosquitto-passwd"   # user:password lines hashed in place ($7$, PBKDF2)
find "$out" -maxdepth 1 -type f -exec chmod 0644 {} +
chmod 700 "$out/ca-private"
chmod 600 "$out/ca-private/fedpm-ca.key"
echo "dev secrets for ${sites[*]} in $out"
