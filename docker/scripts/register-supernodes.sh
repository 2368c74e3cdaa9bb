#!/bin/sh
# Register each site's SuperNode public key with the SuperLink (SuperNode authentication), and
# write the `flwr` CLI's connection for the pilot. Run by the one-shot `fl-register` service of
# docker/compose.yml (aggregator image); safe to run again: a key already registered is kept.
#
#   FEDPM_SITES         sites, space separated (site-a site-b site-c)
#   FEDPM_SUPERLINK     the SuperLink's address (superlink:9093)
#   FEDPM_CA            CA the SuperLink's certificate chains to (/run/secrets/fedpm-ca.crt)
#   FEDPM_KEYS          folder of the <site>-supernode.pub files (/run/secrets)
#   FLWR_HOME           where config.toml goes; connection name: pilot
set -eu
sites=${FEDPM_SITES:-site-a site-b site-c}
superlink=${FEDPM_SUPERLINK:-superlink:9093}
ca=${FEDPM_CA:-/run/secrets/fedpm-ca.crt}
keys=${FEDPM_KEYS:-/run/secrets}
: "${FLWR_HOME:?FLWR_HOME must be set}"

mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "pilot"

[superlink.pilot]
address = "$superlink"
root-certificates = "$ca"
EOF

# `flwr ... --format json` exits 0 even when it fails: its JSON's "success" says
for site in $sites; do
  out=$(flwr supernode register "$keys/$site-supernode.pub" pilot --name "$site" --format json 2>&1) || true
  if printf '%s' "$out" | grep -q '"success": true'; then
    echo "registered $site: $(printf '%s' "$out" | grep '"node-id"' | tr -d ' ,')"
  elif printf '%s' "$out" | grep -q "Public key already in use"; then
    echo "$site: key already registered"
  else
    echo "registering $site failed: $out" >&2
    exit 1
  fi
done
