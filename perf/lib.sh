# shellcheck shell=bash
# Shared helpers for perf/run.sh and perf/idle-connections.sh.
# Sourced, not executed. Everything here works inside one temp dir ($PERF_TMP)
# and only ever binds or connects to 127.0.0.1.

ORIGIN_PORT=18000
WEIR_PORT=18080
NGINX_PORT=18081
HAPROXY_PORT=18082
# HTTPS listener of the TLS workload (run.sh tls1k): Weir and nginx, one at a time.
TLS_PORT=18443

# Core layout: origin + load generator on LOAD_CPU, proxy under test on PROXY_CPU.
LOAD_CPU=0
PROXY_CPU=1

PERF_TMP=""
PERF_KEEP=0
PERF_PIDS=()  # every background process we started (cleanup kills them)
PERF_TLS_CERT=""  # set by make_tls_cert; when set, nginx's config gets its TLS server
PERF_TLS_KEY=""

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  printf 'ERROR: %s\n' "$*" >&2
  exit 1
}

perf_repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); }

# Proxy ids: weir, nginx, haproxy, and weir-NAME for a Weir variant (run.sh
# --weir-variants): same binary and port as weir, its own config weir-NAME.toml.
# proxy_port NAME [MODE]: MODE tls -> the HTTPS port (Weir and nginx only).
proxy_port() {
  if [[ ${2:-} == tls ]]; then
    case $1 in
      weir | weir-* | nginx) echo "$TLS_PORT"; return ;;
      *) die "$1 has no TLS listener in this harness" ;;
    esac
  fi
  case $1 in
    weir | weir-*) echo "$WEIR_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    haproxy) echo "$HAPROXY_PORT" ;;
    *) die "unknown proxy '$1'" ;;
  esac
}

proxy_label() {
  case $1 in
    weir) echo "Weir" ;;
    weir-*) echo "Weir (${1#weir-})" ;;
    nginx) echo "nginx" ;;
    haproxy) echo "HAProxy" ;;
    *) echo "$1" ;;
  esac
}

# ---------------------------------------------------------------- processes

# port_in_use PORT: true if something listens on 127.0.0.1:PORT (or any addr).
port_in_use() {
  [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]
}

check_port_free() {
  if port_in_use "$1"; then
    ss -Hltnp "sport = :$1" >&2 || true
    die "port $1 is already in use; stop whatever listens there first"
  fi
}

check_ports_free() {
  local p
  for p in "$ORIGIN_PORT" "$WEIR_PORT" "$NGINX_PORT" "$HAPROXY_PORT"; do
    check_port_free "$p"
  done
}

# start_bg CPU LOGFILE CMD... : start CMD pinned to CPU, in the background.
# Sets STARTED_PID. taskset execs CMD, so the pid is CMD's own pid.
STARTED_PID=""
start_bg() {
  local cpu=$1 logfile=$2
  shift 2
  taskset -c "$cpu" "$@" >"$logfile" 2>&1 </dev/null &
  STARTED_PID=$!
  PERF_PIDS+=("$STARTED_PID")
}

# proc_tree PID: PID and all its descendants (processes, not threads).
proc_tree() {
  local root=$1
  [[ -d /proc/$root ]] || return 0
  ps -e -o pid=,ppid= | awk -v r="$root" '
    { parent[$1] = $2 }
    END {
      inset[r] = 1; print r
      changed = 1
      while (changed) {
        changed = 0
        for (p in parent)
          if (!(p in inset) && (parent[p] in inset)) { inset[p] = 1; print p; changed = 1 }
      }
    }'
}

# stop_tree PID: TERM the process tree, wait up to 5 s, then KILL leftovers.
stop_tree() {
  local root=$1 pids i p
  mapfile -t pids < <(proc_tree "$root")
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for p in "${pids[@]}"; do
      if kill -0 "$p" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]]; then
        alive=1
        break
      fi
    done
    ((alive)) || break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait "$root" 2>/dev/null || true
  forget_pid "$root"
}

# forget_pid PID: drop PID from PERF_PIDS once stopped (no stale pids to kill later).
forget_pid() {
  local p keep=()
  for p in "${PERF_PIDS[@]+"${PERF_PIDS[@]}"}"; do
    [[ $p == "$1" ]] || keep+=("$p")
  done
  PERF_PIDS=("${keep[@]+"${keep[@]}"}")
}

# wait_port_free PORT: bounded wait (5 s) until nothing listens on PORT.
wait_port_free() {
  local i
  for ((i = 0; i < 50; i++)); do
    port_in_use "$1" || return 0
    sleep 0.1
  done
  die "port $1 still in use after stopping its server"
}

perf_cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PERF_PIDS[@]+"${PERF_PIDS[@]}"}"; do
    stop_tree "$pid"
  done
  if [[ -n $PERF_TMP && -d $PERF_TMP ]]; then
    if ((PERF_KEEP)); then
      log "kept temp dir (configs, logs, raw wrk output): $PERF_TMP"
    else
      rm -rf -- "$PERF_TMP"
    fi
  fi
  exit "$rc"
}

perf_setup_tmp() {
  PERF_TMP=$(mktemp -d "${TMPDIR:-/tmp}/weir-perf.XXXXXX")
  mkdir -p "$PERF_TMP/www" "$PERF_TMP/raw" "$PERF_TMP/logs" "$PERF_TMP/nginx-temp"
  trap perf_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# proc_cpu_ticks PID...: sum of utime+stime (fields 14, 15 of /proc/PID/stat).
proc_cpu_ticks() {
  local total=0 pid stat rest
  local -a f
  for pid in "$@"; do
    { stat=$(<"/proc/$pid/stat"); } 2>/dev/null || continue
    rest=${stat##*) }   # comm may contain spaces; fields restart at 3 (state)
    read -r -a f <<<"$rest"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# proc_rss_kib PID...: sum of VmRSS in KiB.
proc_rss_kib() {
  local total=0 pid v
  for pid in "$@"; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# cpu_busy_sample N: "total idle" jiffies for cpuN from /proc/stat (user..steal).
cpu_busy_sample() {
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $5 + $6 }' /proc/stat
}

# wait_http PID PORT [SCHEME]: bounded wait (~10 s) until PORT answers HTTP (or
# HTTPS with SCHEME https; the certificate is not verified); fails if PID dies.
wait_http() {
  local pid=$1 port=$2 scheme=${3:-http} i
  for ((i = 0; i < 100; i++)); do
    if curl -sk -o /dev/null --max-time 1 "$scheme://127.0.0.1:$port/1k"; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# ------------------------------------------------------------------ configs

# nginx as root drops workers to 'nobody', which cannot read our 0700 temp dir:
# keep the workers as the invoking user instead.
nginx_user_line() {
  if ((EUID == 0)); then
    printf 'user %s %s;\n' "$(id -un)" "$(id -gn)"
  fi
}

nginx_temp_paths() {
  local t=$PERF_TMP/nginx-temp/$1
  mkdir -p "$t"
  cat <<EOF
    client_body_temp_path $t/client_body;
    proxy_temp_path       $t/proxy;
    fastcgi_temp_path     $t/fastcgi;
    uwsgi_temp_path       $t/uwsgi;
    scgi_temp_path        $t/scgi;
EOF
}

# make_tls_cert: one self-signed ECDSA P-256 certificate and key for 127.0.0.1 in
# $PERF_TMP/tls, shared by every TLS proxy of the run; sets PERF_TLS_CERT/KEY.
make_tls_cert() {
  local d=$PERF_TMP/tls
  mkdir -p "$d"
  if ! timeout 30 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.weir.test -addext subjectAltName=DNS:bench.weir.test,IP:127.0.0.1 \
    -keyout "$d/key.pem" -out "$d/cert.pem" >"$PERF_TMP/logs/openssl.out" 2>&1; then
    cat "$PERF_TMP/logs/openssl.out" >&2 || true
    die "openssl could not create the test certificate"
  fi
  PERF_TLS_CERT=$d/cert.pem
  PERF_TLS_KEY=$d/key.pem
}

# nginx_tls_server: the HTTPS server block of nginx's proxy config (empty unless
# make_tls_cert ran): same upstream and location settings as the plain server.
nginx_tls_server() {
  [[ -n $PERF_TLS_CERT ]] || return 0
  cat <<EOF
    server {
        listen 127.0.0.1:$TLS_PORT ssl backlog=4096;
        ssl_certificate     $PERF_TLS_CERT;
        ssl_certificate_key $PERF_TLS_KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        keepalive_requests 100000;
$(nginx_proxy_location)
    }
EOF
}

# nginx_proxy_location: the locations both nginx proxy servers (plain and TLS) use: the
# proxy, a fixed 1 KiB response (mock1k) and the proxy with nginx's cache (cached1k).
nginx_proxy_location() {
  cat <<EOF
        location = /mock1k {
            default_type application/json;
            return 200 '$(cat "$PERF_TMP/www/1k")';
        }
        location /cached/ {
            proxy_pass http://origin/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache api;
            proxy_cache_valid 200 60m;
            add_header X-Cache \$upstream_cache_status;
        }
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering ${NGINX_REQUEST_BUFFERING:-off};  # nginx default: on
            ${NGINX_PROXY_EXTRA:-}
        }
EOF
}

# make_bodies: JSON files of exactly 1 KiB, 16 KiB and 256 KiB under www/.
make_bodies() {
  local name size pad
  for name in 1k 16k 256k; do
    case $name in
      1k) size=1024 ;;
      16k) size=16384 ;;
      256k) size=262144 ;;
    esac
    # {"pad":"xxxx...x"} : 8 + n + 2 bytes
    pad=$((size - 10))
    {
      printf '{"pad":"'
      head -c "$pad" /dev/zero | tr '\0' 'x'
      printf '"}'
    } >"$PERF_TMP/www/$name"
    [[ $(stat -c %s "$PERF_TMP/www/$name") == "$size" ]] || die "body $name has wrong size"
  done
}

# write_origin_conf WORKER_CONNECTIONS KEEPALIVE_TIMEOUT
write_origin_conf() {
  local wc=${1:-4096} kat=${2:-75s}
  cat >"$PERF_TMP/origin.conf" <<EOF
# Origin: nginx, one worker, static bodies + a body-discarding upload endpoint.
$(nginx_user_line)
worker_processes 1;
daemon off;
pid $PERF_TMP/origin.pid;
error_log $PERF_TMP/logs/origin-error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections $wc; }
http {
    access_log off;
$(nginx_temp_paths origin)
    keepalive_requests 100000;
    keepalive_timeout $kat;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    open_file_cache max=16 inactive=600s;
    types { }
    default_type application/json;
    server {
        listen 127.0.0.1:$ORIGIN_PORT backlog=4096;
        root $PERF_TMP/www;
        location = /1k   { }
        location = /16k  { }
        location = /256k { }
        location = /upload {
            client_max_body_size 1m;
            return 200 '{"ok":true}';
        }
        location / { return 404; }
    }
}
EOF
}

# NGINX_ACCESS_LOG (env, default off): "on" gives the nginx proxy its default access log
# (the combined format, to a file), the peer for Weir with its access log on.
nginx_access_log() {
  if [[ ${NGINX_ACCESS_LOG:-off} == on ]]; then
    echo "access_log $PERF_TMP/logs/nginx-access.log combined;"
  else
    echo "access_log off;"
  fi
}

# write_nginx_proxy_conf WORKER_CONNECTIONS KEEPALIVE_TIMEOUT
# NGINX_REQUEST_BUFFERING (env, default off): nginx's own default is 'on', which
# reads the whole request body (spilling >16 KiB to a temp file) before it
# contacts the upstream. 'off' streams it, like HAProxy and Weir.
# NGINX_PROXY_EXTRA (env, default empty): directives added to the proxy
# location, e.g. 'proxy_buffers 16 64k; proxy_buffer_size 64k;'.
write_nginx_proxy_conf() {
  local wc=${1:-4096} kat=${2:-75s}
  cat >"$PERF_TMP/nginx-proxy.conf" <<EOF
# nginx as reverse proxy: one worker, keep-alive to the origin.
$(nginx_user_line)
worker_processes 1;
daemon off;
pid $PERF_TMP/nginx-proxy.pid;
error_log $PERF_TMP/logs/nginx-proxy-error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections $wc; }
http {
    $(nginx_access_log)
$(nginx_temp_paths proxy)
    keepalive_requests 100000;
    keepalive_timeout $kat;
    tcp_nodelay on;
    proxy_cache_path $PERF_TMP/nginx-cache levels=1:2 keys_zone=api:10m max_size=64m inactive=60m use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$ORIGIN_PORT;
        keepalive 128;
        keepalive_requests 100000;   # default 1000 would recycle upstream conns
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
$(nginx_proxy_location)
    }
$(nginx_tls_server)
}
EOF
}

# write_haproxy_conf MAXCONN KEEPALIVE_TIMEOUT
write_haproxy_conf() {
  local mc=${1:-4096} kat=${2:-75s}
  cat >"$PERF_TMP/haproxy.cfg" <<EOF
# HAProxy as reverse proxy: one thread, keep-alive + connection reuse to origin.
# No 'log' lines anywhere: logging is off.
global
    nbthread 1
    maxconn $mc
    # HAProxy wants 2 fds per maxconn; with a low hard limit (idle test) it
    # would refuse to start. Warn instead: idle conns share server sockets.
    no strict-limits

defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn $mc
    timeout connect 5s
    timeout client $kat
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive $kat
    timeout client-fin 5s

frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend origin

backend origin
    server origin1 127.0.0.1:$ORIGIN_PORT
EOF
}

# write_weir_conf [ID [EXTRA [MODE]]]: writes $PERF_TMP/ID.toml (ID defaults to weir).
# WEIR_SERVER_EXTRA (env) is appended to [server], one setting per line, e.g.
# WEIR_SERVER_EXTRA='io = "epoll"'; then EXTRA (a variant's own lines), if given.
# MODE tls: $PERF_TMP/weir-tls/ID.toml instead, whose one listener is the HTTPS
# one on TLS_PORT with make_tls_cert's certificate (same [server], upstream, route).
write_weir_conf() {
  local id=${1:-weir} extra=${2:-} mode=${3:-plain} out listener
  if [[ $mode == tls ]]; then
    [[ -n $PERF_TLS_CERT ]] || die "write_weir_conf: no certificate (make_tls_cert first)"
    mkdir -p "$PERF_TMP/weir-tls"
    out=$PERF_TMP/weir-tls/$id.toml
    listener="address = \"127.0.0.1:$TLS_PORT\"
tls = { certificates = [{ cert = \"$PERF_TLS_CERT\", key = \"$PERF_TLS_KEY\" }] }"
  else
    out=$PERF_TMP/$id.toml
    listener="address = \"127.0.0.1:$WEIR_PORT\""
  fi
  {
    printf '[server]\nworkers = 1\n'
    if [[ -n ${WEIR_SERVER_EXTRA:-} ]]; then
      printf '%s\n' "$WEIR_SERVER_EXTRA"
    fi
    if [[ -n $extra ]]; then
      printf '%s\n' "$extra"
    fi
    cat <<EOF

[[listener]]
$listener

[upstream.origin]
targets = ["127.0.0.1:$ORIGIN_PORT"]

[[route]]
path = "/{*rest}"
upstream = "origin"

# mock1k: the origin's 1 KiB body, written by Weir itself.
[[route]]
path = "/mock1k"
mock = { body = '$(cat "$PERF_TMP/www/1k")', headers = { "content-type" = "application/json" } }

# cached1k: the origin's /1k from the response cache.
[[route]]
path = "/cached/{*rest}"
upstream = "origin"
strip_prefix = "/cached"
cache = { ttl = "3600s" }
EOF
  } >"$out"
}

# resolve_weir_bin: sets WEIR_BIN (absolute); builds it if the default is missing.
resolve_weir_bin() {
  local root
  root=$(perf_repo_root)
  local user_set=${WEIR_BIN:+1}
  WEIR_BIN=${WEIR_BIN:-target/release/weir}
  [[ $WEIR_BIN == /* ]] || WEIR_BIN=$root/$WEIR_BIN
  if [[ ! -x $WEIR_BIN ]]; then
    [[ -z $user_set ]] || die "WEIR_BIN=$WEIR_BIN does not exist or is not executable"
    log "$WEIR_BIN missing: running cargo build --release in $root"
    (cd "$root" && cargo build --release) >&2 || die "cargo build --release failed"
    [[ -x $WEIR_BIN ]] || die "cargo build did not produce $WEIR_BIN"
  fi
}

start_origin() {
  start_bg "$LOAD_CPU" "$PERF_TMP/logs/origin.out" \
    nginx -e "$PERF_TMP/logs/origin-error.log" -p "$PERF_TMP" -c "$PERF_TMP/origin.conf"
  ORIGIN_PID=$STARTED_PID
  wait_http "$ORIGIN_PID" "$ORIGIN_PORT" || {
    cat "$PERF_TMP/logs/origin.out" "$PERF_TMP/logs/origin-error.log" >&2 2>/dev/null || true
    die "origin nginx did not come up on 127.0.0.1:$ORIGIN_PORT"
  }
}

# start_proxy NAME [MODE]: starts it on PROXY_CPU, waits until it answers; sets
# PROXY_PID. MODE tls: Weir with its HTTPS-only config, nginx as always (its config
# has both servers once make_tls_cert ran); wait for HTTPS on TLS_PORT.
start_proxy() {
  local name=$1 mode=${2:-plain} port out scheme=http wconf
  port=$(proxy_port "$name" "$mode")
  out=$PERF_TMP/logs/$name.out
  wconf=$PERF_TMP/$name.toml
  if [[ $mode == tls ]]; then
    scheme=https
    wconf=$PERF_TMP/weir-tls/$name.toml
    out=$PERF_TMP/logs/$name-tls.out
    [[ -n $PERF_TLS_CERT ]] || die "start_proxy $name tls: no certificate (make_tls_cert first)"
  fi
  if port_in_use "$port"; then
    die "port $port busy before starting $name"
  fi
  case $name in
    nginx)
      start_bg "$PROXY_CPU" "$out" \
        nginx -e "$PERF_TMP/logs/nginx-proxy-error.log" -p "$PERF_TMP" -c "$PERF_TMP/nginx-proxy.conf"
      ;;
    haproxy)
      start_bg "$PROXY_CPU" "$out" haproxy -db -f "$PERF_TMP/haproxy.cfg"
      ;;
    weir | weir-*)
      start_bg "$PROXY_CPU" "$out" "${variant_bin[$name]:-$WEIR_BIN}" run -c "$wconf"
      ;;
    *) die "unknown proxy $name" ;;
  esac
  PROXY_PID=$STARTED_PID
  if ! wait_http "$PROXY_PID" "$port" "$scheme"; then
    log "$name output:"
    tail -n 30 "$out" >&2 || true
    die "$name did not answer $scheme on 127.0.0.1:$port"
  fi
}

# stop_proxy NAME PID: stop it and wait until its ports are free (nginx has the
# HTTPS one too once make_tls_cert ran, whichever mode it was started in).
stop_proxy() {
  local name=$1 pid=$2
  stop_tree "$pid"
  wait_port_free "$(proxy_port "$name")"
  [[ -z $PERF_TLS_CERT ]] || wait_port_free "$TLS_PORT"
}
