#!/usr/bin/env bash
# Starts a single-node Garage S3 server on loopback for manual runs and
# benchmarks (the tests start their own through tests::garage), with a
# bucket and a key, and prints the environment that imagefs needs:
#
#   eval "$(bash scripts/garage-dev.sh DIR)"    # then --store s3://imagefs/PREFIX
#   kill "$GARAGE_PID"                          # when done
#
# DIR holds the configuration, data and server.log. Needs the garage binary
# (scripts/install-deps.sh installs it).
set -euo pipefail
dir=$(mkdir -p "${1:?directory}" && cd "$1" && pwd)
garage=$(command -v garage || echo "${IMAGEFS_CACHE:-/var/cache/imagefs}/tools/bin/garage")
[ -x "$garage" ] || { echo "garage-dev: no garage binary (scripts/install-deps.sh)" >&2; exit 1; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
s3=$(port) rpc=$(port)
cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
# Every object is ciphertext: zstd would spend CPU and save nothing.
compression_level = "none"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"
EOF
g() { "$garage" -c "$dir/garage.toml" "$@"; }
setsid "$garage" -c "$dir/garage.toml" server >"$dir/server.log" 2>&1 </dev/null &
pid=$!
retry() { for _ in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; "$@"; }
retry g status
node=$(g node id -q | cut -d@ -f1)
g layout assign -z dc1 -c 10G "$node" >/dev/null
g layout apply --version 1 >/dev/null
retry g bucket create imagefs
key=
for _ in $(seq 100); do
    key=$(g json-api CreateKey '{"name":"imagefs-dev"}' 2>/dev/null) && break
    sleep 0.2
done
[ -n "$key" ] || { echo "garage-dev: could not create a key; see $dir/server.log" >&2; exit 1; }
id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["accessKeyId"])' <<<"$key")
secret=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["secretAccessKey"])' <<<"$key")
g bucket allow --read --write --owner imagefs --key "$id" >/dev/null
cat <<EOF
export GARAGE_PID=$pid
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3
export AWS_REGION=garage
export AWS_ACCESS_KEY_ID=$id
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_ALLOW_HTTP=true
EOF
