#!/usr/bin/env bash
# Checks Weir's /metrics with Prometheus' own linter (`promtool check metrics`) after
# traffic of every kind the metrics count: a mock, a proxied request, a cache miss and hit,
# a 404, a throttled request and a 502. Run by .ci/run after `cargo test`; installs
# promtool (Debian's `prometheus` package) if missing. Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

tmp=$(mktemp -d)
weir_pid=""
cleanup() { [ -n "$weir_pid" ] && kill "$weir_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

dead=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$tmp/weir.toml" <<TOML
[server]
workers = 1

[admin]
address = "127.0.0.1:0"

[[listener]]
name = "public"
address = "127.0.0.1:0"

[upstream.self]
targets = ["127.0.0.2:$dead"]

[upstream.dead]
targets = ["127.0.0.1:$dead"]

[[route]]
path = "/mock"
mock = { body = "hello" }

[[route]]
path = "/limited"
mock = { body = "ok" }
throttle = { rate = 0.01, burst = 1 }

[[route]]
path = "/via/{*rest}"
upstream = "self"
strip_prefix = "/via"
cache = { ttl = "60s" }

[[route]]
path = "/down"
upstream = "dead"
TOML

# shellcheck source=start-weir.sh
source tests/start-weir.sh
# First with a placeholder upstream, then pointed at itself once its port is known.
start_weir "" "$tmp/weir.toml" "$tmp/weir.log" promtool-check
port=${addr##*:}
sed -i "s/127.0.0.2:$dead/127.0.0.1:$port/" "$tmp/weir.toml"
target/debug/weir reload -c "$tmp/weir.toml" >/dev/null
admin=$(sed -n 's/^.* INFO admin API on http:\/\/\([^ ]*\).*/\1/p' "$tmp/weir.log" | head -n 1)
[ -n "$admin" ] || { cat "$tmp/weir.log"; echo "promtool-check: no admin API"; exit 1; }

# Two to /mock, two through /via (to itself: a miss goes to /mock, the hit does not), and
# the rest.
for path in /mock /mock /via/mock /via/mock /nowhere /limited /limited /down; do
  curl -s -o /dev/null "http://$addr$path"
done
sleep 0.3
curl -sf "http://$admin/metrics" > "$tmp/metrics.txt"
grep -q '^weir_requests_total{listener="public",route="ANY /mock",method="GET",code="200"} 3' "$tmp/metrics.txt" || {
  cat "$tmp/metrics.txt"; echo "promtool-check: the counts are not what was sent"; exit 1; }
promtool check metrics < "$tmp/metrics.txt"
echo "promtool-check: /metrics passes promtool check metrics ($(grep -vc '^#' "$tmp/metrics.txt") samples)"
