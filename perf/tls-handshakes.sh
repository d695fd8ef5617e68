#!/usr/bin/env bash
# TLS handshakes per second, Weir against nginx, on one core each (CPU 1), with the same
# ECDSA P-256 certificate, and the load on CPU 0: a rustls client (examples/tls_handshakes.rs)
# doing full handshakes (no resumption) or resumed ones (TLS 1.3 tickets), then closing.
# Rounds are interleaved; medians and Weir/nginx ratios are printed, with each proxy's CPU
# time per handshake (utime+stime from /proc over the run / handshakes).
#
#   perf/tls-handshakes.sh [ROUNDS] [SECONDS] [THREADS]     (defaults 3, 6, 4)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-6}
threads=${3:-4}
port=18443
weir_bin=target/release/weir
client=target/release/examples/tls_handshakes
[ -x "$weir_bin" ] || cargo build --release --bin weir
[ -x "$client" ] || cargo build --release --example tls_handshakes
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx-light)"; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench.weir.test -addext subjectAltName=DNS:bench.weir.test \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/nginx; proxy_temp_path $tmp/nginx; fastcgi_temp_path $tmp/nginx;
  uwsgi_temp_path $tmp/nginx; scgi_temp_path $tmp/nginx;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $tmp/cert.pem;
    ssl_certificate_key $tmp/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / { return 200 "ok"; }
  }
}
CONF
cat > "$tmp/weir.toml" <<CONF
[server]
workers = 1
[[listener]]
address = "127.0.0.1:$port"
tls = { certificates = [{ cert = "$tmp/cert.pem", key = "$tmp/key.pem" }] }
[[route]]
path = "/{*rest}"
mock = { body = "ok" }
CONF

cpu_ticks() { # utime+stime of a process and its threads
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}

start() {
  case $1 in
    weir) taskset -c 1 "$weir_bin" run -c "$tmp/weir.toml" 2>"$tmp/weir.log" & ;;
    nginx) taskset -c 1 nginx -p "$tmp" -c "$tmp/nginx.conf" 2>"$tmp/nginx.log" & ;;
  esac
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
  # nginx does its work in the worker process; Weir in the one process.
  if [ "$1" = nginx ]; then
    sleep 0.2
    measured=$(pgrep -P "$pid" | head -n 1)
  else
    measured=$pid
  fi
}

stop() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
    sleep 0.05
  done
}

hz=$(getconf CLK_TCK)
declare -A results
for round in $(seq 1 "$rounds"); do
  for mode in full resumed; do
    order=(weir nginx)
    ((round % 2 == 0)) && order=(nginx weir)
    for proxy in "${order[@]}"; do
      start "$proxy"
      taskset -c 0 "$client" "127.0.0.1:$port" "$mode" "$threads" 1 >/dev/null # warm-up
      before=$(cpu_ticks "$measured")
      out=$(taskset -c 0 "$client" "127.0.0.1:$port" "$mode" "$threads" "$seconds")
      after=$(cpu_ticks "$measured")
      stop
      rate=$(awk '{ print $6 }' <<<"$out")
      resumed=$(awk '{ print $8 }' <<<"$out")
      count=$(awk '{ print $2 }' <<<"$out")
      failed=$(awk '{ print $4 }' <<<"$out")
      cpu_us=$(awk -v a="$after" -v b="$before" -v hz="$hz" -v n="$count" \
        'BEGIN { printf "%.0f", (a - b) / hz * 1e6 / (n > 0 ? n : 1) }')
      echo "round $round $mode $proxy: $rate handshakes/s ($resumed resumed), $cpu_us us CPU per handshake, $failed failed"
      results[$mode,$proxy]+="$rate $cpu_us;"
    done
  done
done

median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "| mode | proxy | handshakes/s | CPU µs per handshake |"
echo "|---|---|---:|---:|"
for mode in full resumed; do
  for proxy in weir nginx; do
    runs=${results[$mode,$proxy]}
    rate=$(tr ';' '\n' <<<"$runs" | awk 'NF { print $1 }' | median)
    cpu=$(tr ';' '\n' <<<"$runs" | awk 'NF { print $2 }' | median)
    echo "| $mode | $proxy | $rate | $cpu |"
    declare "m_${mode}_${proxy}_rate=$rate" "m_${mode}_${proxy}_cpu=$cpu"
  done
done
echo
for mode in full resumed; do
  wr="m_${mode}_weir_rate"; nr="m_${mode}_nginx_rate"; wc="m_${mode}_weir_cpu"; nc="m_${mode}_nginx_cpu"
  awk -v m="$mode" -v wr="${!wr}" -v nr="${!nr}" -v wc="${!wc}" -v nc="${!nc}" \
    'BEGIN { printf "Weir/nginx, %s handshakes: rate x %.2f, CPU per handshake x %.2f\n", m, wr / nr, wc / nc }'
done
echo "(machine: $(nproc) CPUs, $(uname -r); $rounds rounds of $seconds s, $threads client threads on CPU 0)"
