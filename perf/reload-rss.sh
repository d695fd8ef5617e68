#!/usr/bin/env bash
# Resident memory of Weir across many reloads: an old generation must be freed once its
# last request ends, so RSS stays flat however many reloads there were.
#
# Starts Weir (one worker) on a config with 50 routes, an upstream and a cached route;
# then reloads N times, alternating between two versions of it (one route's mock body
# and an upstream's targets change), with a keep-alive client and a new connection making
# requests between reloads; RSS is sampled every STEP reloads. Prints a markdown table.
#
# usage: perf/reload-rss.sh [--reloads N] [--step S] [--weir PATH]
set -euo pipefail

RELOADS=1000
STEP=100
WEIR=target/release/weir
while [ $# -gt 0 ]; do
  case "$1" in
    --reloads) RELOADS=${2:?}; shift 2 ;;
    --step) STEP=${2:?}; shift 2 ;;
    --weir) WEIR=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -x "$WEIR" ] || { echo "no weir binary at $WEIR (cargo build --release)" >&2; exit 2; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 2; }

dir=$(mktemp -d /tmp/weir-reload-rss.XXXXXX)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$dir"' EXIT

config() { # $1: version (a or b)
  local body=$1 port=$2 i
  echo '[server]'
  echo 'workers = 1'
  echo '[[listener]]'
  echo "address = \"127.0.0.1:$port\""
  echo '[upstream.self]'
  if [ "$body" = a ]; then echo "targets = [\"127.0.0.1:$port\"]"; else echo "targets = [\"127.0.0.1:$port\", \"127.0.0.2:$port\"]"; fi
  echo '[[route]]'
  echo 'path = "/v"'
  echo "mock = { body = \"version $body\" }"
  echo '[[route]]'
  echo 'path = "/via/{*rest}"'
  echo 'upstream = "self"'
  echo 'strip_prefix = "/via"'
  echo 'cache = { ttl = "60s" }'
  for i in $(seq 1 50); do
    echo '[[route]]'
    echo "path = \"/r$i/{id}\""
    echo "mock = { body = \"route $i\" }"
    echo "throttle = { rate = 1000, burst = 100 }"
  done
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
config a "$port" > "$dir/weir.toml"
"$WEIR" run -c "$dir/weir.toml" 2> "$dir/weir.log" &
pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$dir/weir.log" 2>/dev/null && break; sleep 0.05; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }

# A keep-alive client that keeps asking while reloads happen.
( while kill -0 "$pid" 2>/dev/null; do curl -s --max-time 2 -o /dev/null "http://127.0.0.1:$port/v" -o /dev/null "http://127.0.0.1:$port/via/v" || true; done ) &
client=$!

curl -s "http://127.0.0.1:$port/via/v" > /dev/null
echo "| reloads | generation | RSS KiB |"
echo "|---:|---:|---:|"
echo "| 0 | 1 | $(rss) |"
for i in $(seq 1 "$RELOADS"); do
  if [ $((i % 2)) = 1 ]; then config b "$port"; else config a "$port"; fi > "$dir/weir.toml"
  "$WEIR" reload -c "$dir/weir.toml" > /dev/null
  if [ $((i % STEP)) = 0 ]; then
    curl -s "http://127.0.0.1:$port/v" > /dev/null
    gen=$(grep -o "generation [0-9]* serving" "$dir/weir.log" | tail -n 1 | cut -d" " -f2)
    echo "| $i | $gen | $(rss) |"
  fi
done
kill "$client" 2>/dev/null || true
