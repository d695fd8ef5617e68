#!/usr/bin/env bash
# Side-by-side reverse-proxy benchmark: Weir vs nginx vs HAProxy on one core.
#
#   CPU 0: origin (nginx, 1 worker) + load generator (wrk -t1)
#   CPU 1: the proxy under test, one at a time, one worker/thread
#
# See perf/README.md. Usage: perf/run.sh --help
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

usage() {
  cat <<'EOF'
Usage: perf/run.sh [options]

  --workloads LIST   comma list of 1k,16k,256k,upload64k,tls1k,mock1k,cached1k
                     (default 1k; env WORKLOADS)
                     tls1k: GET /1k over HTTPS (keep-alive) to the proxy, origin plain
                     HTTP; Weir and nginx only (HAProxy is skipped for it); needs openssl
                     mock1k: GET /mock1k, a 1 KiB response the proxy writes itself (Weir
                     mock integration, nginx return 200)
                     cached1k: GET /cached/1k, the origin's /1k from the proxy's response
                     cache (Weir cache, nginx proxy_cache); with mock1k in the same run
                     the report adds Weir's cache-hit/mock CPU ratio. Weir and nginx only
  --proxies LIST     comma list of weir,nginx,haproxy      (default all; env PROXIES)
  --rounds N         interleaved rounds                     (default 3; env ROUNDS)
  --duration S       seconds per measured wrk run          (default 6; env DURATION)
  --conns N          wrk connections                        (default 64; env CONNS)
  --weir-variants 'NAME=EXTRA;NAME=EXTRA;...'
                     measure several Weir configurations, each as its own proxy
                     "Weir (NAME)" in place of weir in --proxies: EXTRA is appended
                     to [server] (after WEIR_SERVER_EXTRA); a literal \n in EXTRA
                     starts a new line. Example:
                     --weir-variants 'defer=ring = "defer_taskrun";epoll=io = "epoll"'
                     NAME=@PATH instead runs the Weir binary at PATH with the
                     plain config, to compare two builds in one interleaved run:
                     --weir-variants 'before=@/tmp/weir-old;after=@target/release/weir'
  --rate-latency PCT after the closed-loop runs, run every proxy at PCT % of nginx's
                     closed-loop 1k req/s with oha (fixed rate, coordinated-omission
                     corrected) and report p50/p99/p99.9; needs oha (cargo install oha),
                     nginx in --proxies and 1k in --workloads
  --keep             keep the temp dir (configs, logs, raw wrk output) and print its path
  -h, --help         this text

Environment:
  WEIR_BIN                 Weir binary (default target/release/weir, relative to the
                           repo root; built with cargo build --release if missing)
  WEIR_SERVER_EXTRA        extra lines appended to Weir's [server] section,
                           e.g. WEIR_SERVER_EXTRA='io = "epoll"'
  NGINX_REQUEST_BUFFERING  nginx proxy_request_buffering (default off; nginx's own default is on)
  NGINX_ACCESS_LOG         "on": nginx proxies with its default access log (combined,
                           to a file); default off
  NGINX_PROXY_EXTRA        extra directives for nginx's proxy location, e.g.
                           NGINX_PROXY_EXTRA='proxy_buffers 16 64k;' (default: none)
EOF
}

# shell-quote only what needs it, so the report shows a copy-pastable command
q() {
  if [[ $1 =~ ^[A-Za-z0-9_./,:=@%+-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 != *"'"* ]]; then
    printf "'%s'" "$1"
  else
    printf '%q' "$1"
  fi
}
cmdline=$(q "$0")
for a in "$@"; do cmdline+=" $(q "$a")"; done
envline=""
for v in WEIR_BIN WEIR_SERVER_EXTRA NGINX_REQUEST_BUFFERING NGINX_ACCESS_LOG NGINX_PROXY_EXTRA DURATION CONNS ROUNDS WORKLOADS PROXIES; do
  if [[ -n ${!v:-} ]]; then
    envline+="$v=$(q "${!v}") "
  fi
done

WORKLOADS=${WORKLOADS:-1k}
PROXIES=${PROXIES:-weir,nginx,haproxy}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6}
CONNS=${CONNS:-64}
WARMUP=1
WEIR_VARIANTS=""
RATE_PCT=""

while (($#)); do
  case $1 in
    --workloads) WORKLOADS=${2:?}; shift 2 ;;
    --workloads=*) WORKLOADS=${1#*=}; shift ;;
    --proxies) PROXIES=${2:?}; shift 2 ;;
    --proxies=*) PROXIES=${1#*=}; shift ;;
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --rounds=*) ROUNDS=${1#*=}; shift ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --duration=*) DURATION=${1#*=}; shift ;;
    --conns) CONNS=${2:?}; shift 2 ;;
    --conns=*) CONNS=${1#*=}; shift ;;
    --weir-variants) WEIR_VARIANTS=${2?}; shift 2 ;;
    --weir-variants=*) WEIR_VARIANTS=${1#*=}; shift ;;
    --rate-latency) RATE_PCT=${2:?}; shift 2 ;;
    --rate-latency=*) RATE_PCT=${1#*=}; shift ;;
    --keep) PERF_KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

for v in ROUNDS DURATION CONNS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
IFS=, read -r -a workloads <<<"$WORKLOADS"
IFS=, read -r -a proxies <<<"$PROXIES"
((${#workloads[@]})) || die "no workloads"
((${#proxies[@]})) || die "no proxies"
for w in "${workloads[@]}"; do
  case $w in 1k | 16k | 256k | upload64k | tls1k | mock1k | cached1k) ;; *) die "unknown workload '$w'" ;; esac
done
for p in "${proxies[@]}"; do
  case $p in weir | nginx | haproxy) ;; *) die "unknown proxy '$p'" ;; esac
done

# --weir-variants 'NAME=EXTRA;...': weir in the proxy list becomes weir-NAME1,
# weir-NAME2, ... (ids for lib.sh), each with its own [server] extra lines.
variants=()                # ids, in the order given
declare -A variant_extra=() variant_raw=() variant_bin=()
if [[ -n $WEIR_VARIANTS ]]; then
  [[ " ${proxies[*]} " == *" weir "* ]] || die "--weir-variants needs weir in --proxies"
  IFS=';' read -r -a vitems <<<"$WEIR_VARIANTS"
  for item in "${vitems[@]}"; do
    [[ $item =~ ^[[:space:]]*$ ]] && continue
    [[ $item == *=* ]] || die "--weir-variants: '$item' is not NAME=EXTRA"
    vname=${item%%=*}
    vname=${vname#"${vname%%[![:space:]]*}"}  # trim
    vname=${vname%"${vname##*[![:space:]]}"}
    [[ $vname =~ ^[A-Za-z0-9_]+([.-][A-Za-z0-9_]+)*$ ]] ||
      die "--weir-variants: name '$vname' must be letters, digits, _ . - (got it from '$item')"
    vid=weir-$vname
    [[ -z ${variant_raw[$vid]+x} ]] || die "--weir-variants: name '$vname' given twice"
    variant_raw[$vid]=${item#*=}
    if [[ ${variant_raw[$vid]} == @* ]]; then
      # NAME=@PATH: another Weir binary (say, the commit before a change), same config.
      variant_bin[$vid]=${variant_raw[$vid]#@}
      [[ -x ${variant_bin[$vid]} ]] || die "--weir-variants: ${variant_bin[$vid]} is not an executable"
      variant_extra[$vid]=""
    else
      variant_extra[$vid]=${variant_raw[$vid]//\\n/$'\n'}
    fi
    variants+=("$vid")
  done
  ((${#variants[@]})) || die "--weir-variants: no NAME=EXTRA given"
  expanded=()
  for p in "${proxies[@]}"; do
    if [[ $p == weir ]]; then expanded+=("${variants[@]}"); else expanded+=("$p"); fi
  done
  proxies=("${expanded[@]}")
fi
for ((i = 0; i < ${#proxies[@]}; i++)); do
  for ((j = i + 1; j < ${#proxies[@]}; j++)); do
    [[ ${proxies[i]} != "${proxies[j]}" ]] || die "proxy '${proxies[i]}' listed twice"
  done
done
is_weir() { [[ $1 == weir || $1 == weir-* ]]; }

# workload_mode W: "tls" for the HTTPS workload (client -> proxy over TLS), else "plain".
workload_mode() {
  case $1 in
    tls1k) echo tls ;;
    *) echo plain ;;
  esac
}
# in_workload W P: does proxy P take part in workload W? HAProxy has no TLS, mock or
# cache setup in this harness, so it sits those out; everyone runs the proxy workloads.
in_workload() {
  [[ $2 != haproxy ]] || [[ $1 == 1k || $1 == 16k || $1 == 256k || $1 == upload64k ]]
}
# workload_proxies W: the proxies of W, one per line, in --proxies order.
workload_proxies() {
  local p
  for p in "${proxies[@]}"; do
    if in_workload "$1" "$p"; then echo "$p"; fi
  done
}
has_tls=0
for w in "${workloads[@]}"; do
  [[ $(workload_mode "$w") == tls ]] && has_tls=1
done
skipped=""   # labels of the proxies that sit out the TLS workload, for the report
if ((has_tls)); then
  command -v openssl >/dev/null || die "openssl not found (needed for the tls1k certificate)"
  [[ -n $(workload_proxies tls1k) ]] ||
    die "tls1k needs weir or nginx in --proxies (HAProxy does not take part in it)"
  for p in "${proxies[@]}"; do
    in_workload tls1k "$p" && continue
    skipped+="${skipped:+, }$(proxy_label "$p")"
  done
fi

if [[ -n $RATE_PCT ]]; then
  [[ $RATE_PCT =~ ^[1-9][0-9]*$ ]] || die "--rate-latency PCT must be a positive integer (got '$RATE_PCT')"
  [[ " ${proxies[*]} " == *" nginx "* ]] ||
    die "--rate-latency needs nginx in --proxies: its closed-loop 1k req/s sets the rate"
  [[ " ${workloads[*]} " == *" 1k "* ]] ||
    die "--rate-latency needs 1k in --workloads: nginx's closed-loop 1k req/s sets the rate"
  command -v python3 >/dev/null || die "--rate-latency needs python3 (to read oha's JSON)"
  if ! command -v oha >/dev/null; then
    die "--rate-latency needs oha (fixed-rate HTTP load generator with --latency-correction),
which is not on PATH. Install it with:  cargo install oha
(Debian has no package for it nor for wrk2; this script does not install it.)"
  fi
fi

for tool in nginx wrk curl taskset ss awk; do
  command -v "$tool" >/dev/null || die "$tool not found"
done
[[ " ${proxies[*]} " == *" haproxy "* ]] && { command -v haproxy >/dev/null || die "haproxy not found"; }
(($(nproc --all) >= 2)) || die "need at least 2 CPUs (CPU 0 and CPU 1)"

root=$(perf_repo_root)
has_weir=0
for p in "${proxies[@]}"; do is_weir "$p" && has_weir=1; done
if ((has_weir)); then
  resolve_weir_bin
fi

check_ports_free
((has_tls == 0)) || check_port_free "$TLS_PORT"
perf_setup_tmp
CLK_TCK=$(getconf CLK_TCK)

# -------------------------------------------------------------- setup
make_bodies
# tls1k: one ECDSA P-256 certificate for the run; nginx's config then has an HTTPS
# server next to the plain one, Weir an HTTPS-only config per variant (weir-tls/).
((has_tls == 0)) || make_tls_cert
write_origin_conf 4096 75s
write_nginx_proxy_conf 4096 75s
write_haproxy_conf 4096 75s
write_weir_conf weir
for v in "${variants[@]+"${variants[@]}"}"; do
  write_weir_conf "$v" "${variant_extra[$v]}"
done
if ((has_tls)); then
  write_weir_conf weir "" tls
  for v in "${variants[@]+"${variants[@]}"}"; do
    write_weir_conf "$v" "${variant_extra[$v]}" tls
  done
fi

# upload64k: POST a 64 KiB body to /upload
upload_lua=$PERF_TMP/upload64k.lua
cat >"$upload_lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("a", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF

workload_path() {
  case $1 in
    1k | tls1k) echo /1k ;;
    16k) echo /16k ;;
    256k) echo /256k ;;
    upload64k) echo /upload ;;
    mock1k) echo /mock1k ;;
    cached1k) echo /cached/1k ;;
  esac
}

# workload_url PORT WORKLOAD: the URL wrk and the checks use (https for tls1k).
workload_url() {
  local scheme=http
  [[ $(workload_mode "$2") == tls ]] && scheme=https
  echo "$scheme://127.0.0.1:$1$(workload_path "$2")"
}

# check_endpoint PORT WORKLOAD: prints "ok" or a description of what is wrong.
# (tls1k: curl -k, the certificate is self-signed)
check_endpoint() {
  local port=$1 w=$2 got want body=$PERF_TMP/check.body
  case $w in
    1k | tls1k | mock1k | cached1k) want="200 1024" ;;
    16k) want="200 16384" ;;
    256k) want="200 262144" ;;
    upload64k) want="200 11" ;;
  esac
  if [[ $w == upload64k ]]; then
    got=$(head -c 65536 /dev/zero | tr '\0' a |
      curl -sS --max-time 5 -o "$body" -w '%{http_code} %{size_download}' \
        -H 'Content-Type: application/octet-stream' --data-binary @- \
        "http://127.0.0.1:$port/upload" 2>&1) || true
  else
    got=$(curl -ksS --max-time 5 -o "$body" -w '%{http_code} %{size_download}' \
      "$(workload_url "$port" "$w")" 2>&1) || true
  fi
  if [[ $got == "$want" ]]; then
    echo ok
  else
    echo "expected '$want' (status, body bytes), got '$got'"
  fi
}

# run_wrk OUTFILE PORT WORKLOAD SECONDS: wrk on LOAD_CPU, hard time bound.
run_wrk() {
  local out=$1 port=$2 w=$3 secs=$4 rc=0
  local -a script=()
  [[ $w == upload64k ]] && script=(-s "$upload_lua")
  timeout -k 5 $((secs + 30)) taskset -c "$LOAD_CPU" \
    wrk -t1 -c"$CONNS" -d"${secs}s" --latency "${script[@]}" \
    "$(workload_url "$port" "$w")" >"$out" 2>&1 || rc=$?
  return "$rc"
}

# parse_wrk FILE: "requests rps p50ms p99ms non2xx connect read write timeout" (n/a if missing)
parse_wrk() {
  awk '
    function ms(v,   n) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /[0-9]m$/) return substr(v, 1, length(v) - 1) * 60000
      if (v ~ /[0-9]h$/) return substr(v, 1, length(v) - 1) * 3600000
      if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
      return "n/a"
    }
    BEGIN { req = "n/a"; rps = "n/a"; p50 = "n/a"; p99 = "n/a"; n2 = 0; c = 0; r = 0; w = 0; t = 0 }
    / requests in / { req = $1 }
    /^Requests\/sec:/ { rps = $2 }
    /^ +50% / { p50 = ms($2) }
    /^ +99% / { p99 = ms($2) }
    /Non-2xx or 3xx responses:/ { n2 = $NF }
    /Socket errors:/ { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
    END { print req, rps, p50, p99, n2, c, r, w, t }
  ' "$1"
}

# run_oha OUTFILE PORT RATE SECONDS: oha on LOAD_CPU at a fixed RATE (req/s) over
# CONNS keep-alive connections, latency measured from each request's scheduled
# send time (--latency-correction), JSON to OUTFILE. 1k workload only.
run_oha() {
  local out=$1 port=$2 rate=$3 secs=$4 rc=0
  timeout -k 5 $((secs + 30)) taskset -c "$LOAD_CPU" \
    oha -z "${secs}s" -q "$rate" --latency-correction -c "$CONNS" --no-tui "${oha_json[@]}" \
    "http://127.0.0.1:$port/1k" >"$out" 2>"$out.err" </dev/null || rc=$?
  return "$rc"
}

# parse_oha FILE: "requests rps p50ms p99ms p999ms non2xx errors deadline" (n/a if
# missing). requests = responses received (any status); errors = oha's error
# distribution except requests cut off by the end of the run ("aborted due to deadline").
parse_oha() {
  python3 - "$1" <<'EOF'
import json, sys
try:
    with open(sys.argv[1]) as f:
        d = json.load(f)
    codes = d.get("statusCodeDistribution") or {}
    req = sum(codes.values())
    non2xx = sum(n for c, n in codes.items() if not 200 <= int(c) < 400)
    errs = d.get("errorDistribution") or {}
    deadline = sum(n for e, n in errs.items() if "deadline" in e.lower())
    other = sum(errs.values()) - deadline
    total = float(d["summary"]["total"])
    lat = d.get("latencyPercentiles") or {}

    def ms(k):
        v = lat.get(k)
        return "n/a" if v is None else "%.3f" % (float(v) * 1000)

    rps = "%.2f" % (req / total) if total > 0 else "n/a"
    print(req, rps, ms("p50"), ms("p99"), ms("p99.9"), non2xx, other, deadline)
except Exception:
    print("n/a n/a n/a n/a n/a 0 0 0")
EOF
}

# -------------------------------------------------------------- versions
ver_nginx=$(nginx -v 2>&1 | head -n1)
ver_nginx=${ver_nginx#nginx version: }
ver_haproxy=$(haproxy -v 2>/dev/null | head -n1 || true)
ver_wrk=$( (wrk -v 2>&1 || true) | head -n1)
ver_openssl=$( (openssl version 2>/dev/null || true) | head -n1)
ver_oha="n/a"
oha_json=()
if [[ -n $RATE_PCT ]]; then
  ver_oha=$( (timeout 5 oha --version 2>&1 || true) | head -n1)
  # newer oha prints JSON with --output-format json, older ones with -j/--json
  if timeout 5 oha --help 2>&1 | grep -q -- '--output-format'; then
    oha_json=(--output-format json)
  else
    oha_json=(-j)
  fi
fi
ver_weir="n/a"
weir_bin_desc="n/a"
if ((has_weir)); then
  vrc=0
  ver_weir=$(timeout 5 "$WEIR_BIN" --version 2>&1 </dev/null) || vrc=$?
  ver_weir=$(head -n1 <<<"$ver_weir")
  if ((vrc != 0)); then
    ver_weir="(weir --version failed, exit $vrc)"
  elif [[ -z $ver_weir ]]; then
    ver_weir="(weir --version printed nothing)"
  fi
  weir_bin_desc="$WEIR_BIN (built $(date -u -r "$WEIR_BIN" '+%Y-%m-%d %H:%M:%S UTC'))"
  newer=$(find "$root/src" "$root/Cargo.toml" "$root/Cargo.lock" -type f -newer "$WEIR_BIN" -print 2>/dev/null | head -n1 || true)
  if [[ -n $newer ]]; then
    weir_bin_desc+=" — **older than ${newer#"$root"/}: rebuild with cargo build --release**"
    log "WARNING: $WEIR_BIN is older than ${newer#"$root"/}"
  fi
fi

busy_note=""
if pgrep -x rustc >/dev/null 2>&1 || pgrep -x cargo >/dev/null 2>&1; then
  busy_note="cargo/rustc was running when the benchmark started: numbers are extra noisy."
  log "WARNING: $busy_note"
fi

# -------------------------------------------------------------- origin
log "temp dir: $PERF_TMP"
start_origin
log "origin nginx up on 127.0.0.1:$ORIGIN_PORT (pid $ORIGIN_PID, CPU $LOAD_CPU)"
for w in 1k 16k 256k upload64k; do
  res=$(check_endpoint "$ORIGIN_PORT" "$w")
  [[ $res == ok ]] || die "origin check $w failed: $res"
done

# -------------------------------------------------------------- preflight
declare -A preflight_note=() weir_startup=()
for p in "${proxies[@]}"; do
  start_proxy "$p"
  port=$(proxy_port "$p")
  res=$(check_endpoint "$port" 1k)
  if [[ $res != ok ]]; then
    tail -n 30 "$PERF_TMP/logs/$p.out" >&2 || true
    die "$(proxy_label "$p") preflight GET /1k failed: $res"
  fi
  for w in "${workloads[@]}"; do
    [[ $w == 1k || $(workload_mode "$w") == tls ]] && continue
    res=$(check_endpoint "$port" "$w")
    if [[ $res != ok ]]; then
      log "WARNING: $(proxy_label "$p") preflight $w: $res"
      preflight_note[$p]+="preflight $w: $res. "
    fi
  done
  log "$(proxy_label "$p") preflight ok (127.0.0.1:$port)"
  if is_weir "$p"; then
    weir_startup[$p]=$(head -n 8 "$PERF_TMP/logs/$p.out" || true)
  fi
  stop_proxy "$p" "$PROXY_PID"
done

# tls1k preflight: each of its proxies started in TLS mode must answer GET /1k over
# HTTPS with 200 and exactly 1,024 bytes, or the script stops. Also records what
# TLS version, cipher and key exchange an OpenSSL client (like wrk's) negotiates.
declare -A tls_session=() weir_startup_tls=()
if ((has_tls)); then
  while IFS= read -r p; do
    start_proxy "$p" tls
    res=$(check_endpoint "$TLS_PORT" tls1k)
    if [[ $res != ok ]]; then
      tail -n 30 "$PERF_TMP/logs/$p-tls.out" >&2 || true
      die "$(proxy_label "$p") preflight tls1k (GET https://127.0.0.1:$TLS_PORT/1k) failed: $res"
    fi
    tls_session[$p]=$(timeout 10 openssl s_client -brief -connect "127.0.0.1:$TLS_PORT" </dev/null 2>&1 |
      awk -F': ' '
        /^Protocol version:/ { v = $2 }
        /^Ciphersuite:/ { c = $2 }
        /^(Server|Peer) Temp Key:/ { k = $2 }
        END { printf "%s, %s, key exchange %s", (v ? v : "?"), (c ? c : "?"), (k ? k : "?") }')
    log "$(proxy_label "$p") preflight tls1k ok (https://127.0.0.1:$TLS_PORT: ${tls_session[$p]})"
    if is_weir "$p"; then
      weir_startup_tls[$p]=$(head -n 8 "$PERF_TMP/logs/$p-tls.out" || true)
    fi
    stop_proxy "$p" "$PROXY_PID"
  done < <(workload_proxies tls1k)
fi

# -------------------------------------------------------------- measure
results=$PERF_TMP/results.tsv
rate_results=$PERF_TMP/rate.tsv
: >"$results"
: >"$rate_results"
nprox=${#proxies[@]}
total_runs=0
for w in "${workloads[@]}"; do
  total_runs=$((total_runs + ROUNDS * $(workload_proxies "$w" | wc -l)))
done
[[ -z $RATE_PCT ]] || total_runs=$((total_runs + ROUNDS * nprox))
run_no=0
build_runs=0

# measure_run TAG PROXY MODE LOADCMD...: one fresh start of PROXY on PROXY_CPU
# (MODE plain, or tls: its HTTPS listener), a WARMUP s warm-up and a DURATION s
# measured run of "LOADCMD OUTFILE PORT SECONDS", the proxy's CPU ticks and CPU 0's
# busy time around it, and a stop. Sets M_RAW M_TICKS M_NS M_C0T M_C0I M_RC M_ALIVE.
measure_run() {
  local tag=$1 p=$2 mode=$3 port pp t0 t1 ticks0 ticks1 c0_t0 c0_i0 c0_t1 c0_i1
  shift 3
  port=$(proxy_port "$p" "$mode")
  run_no=$((run_no + 1))
  start_proxy "$p" "$mode"
  if pgrep -x rustc >/dev/null 2>&1 || pgrep -x cargo >/dev/null 2>&1; then
    build_runs=$((build_runs + 1))
    log "WARNING: cargo/rustc is running during this run"
  fi
  mapfile -t ppids < <(proc_tree "$PROXY_PID")
  "$@" "$PERF_TMP/raw/$tag-warmup.txt" "$port" "$WARMUP" || true

  M_RAW=$PERF_TMP/raw/$tag.txt
  read -r c0_t0 c0_i0 < <(cpu_busy_sample "$LOAD_CPU")
  ticks0=$(proc_cpu_ticks "${ppids[@]}")
  t0=$(date +%s%N)
  M_RC=0
  "$@" "$M_RAW" "$port" "$DURATION" || M_RC=$?
  t1=$(date +%s%N)
  ticks1=$(proc_cpu_ticks "${ppids[@]}")
  read -r c0_t1 c0_i1 < <(cpu_busy_sample "$LOAD_CPU")

  # every process of the proxy must have survived the run
  M_ALIVE=1
  for pp in "${ppids[@]}"; do kill -0 "$pp" 2>/dev/null || M_ALIVE=0; done
  stop_proxy "$p" "$PROXY_PID"
  M_TICKS=$((ticks1 - ticks0))
  M_NS=$((t1 - t0))
  M_C0T=$((c0_t1 - c0_t0))
  M_C0I=$((c0_i1 - c0_i0))
}

# load commands for measure_run: ... OUTFILE PORT SECONDS
wrk_load() { run_wrk "$2" "$3" "$1" "$4"; }    # wrk_load WORKLOAD OUT PORT SECS
oha_load() { run_oha "$2" "$3" "$1" "$4"; }    # oha_load RATE OUT PORT SECS

for ((r = 1; r <= ROUNDS; r++)); do
  for w in "${workloads[@]}"; do
    mapfile -t wprox < <(workload_proxies "$w")   # tls1k: without HAProxy
    nw=${#wprox[@]}
    for ((i = 0; i < nw; i++)); do
      p=${wprox[$(((i + r - 1) % nw))]}  # rotate the order each round
      measure_run "r$r-$w-$p" "$p" "$(workload_mode "$w")" wrk_load "$w"
      raw=$M_RAW
      wrk_rc=$M_RC

      read -r req rps p50 p99 n2 sc sr sw st < <(parse_wrk "$raw")
      awk -v r="$r" -v w="$w" -v p="$p" -v req="$req" -v rps="$rps" -v p50="$p50" -v p99="$p99" \
        -v ticks="$M_TICKS" -v hz="$CLK_TCK" -v ns="$M_NS" \
        -v n2="$n2" -v sc="$sc" -v sr="$sr" -v sw="$sw" -v st="$st" \
        -v c0t="$M_C0T" -v c0i="$M_C0I" -v rc="$wrk_rc" -v alive="$M_ALIVE" '
        BEGIN {
          cpu = ticks / hz; wall = ns / 1e9
          us = (req ~ /^[0-9]+$/ && req > 0) ? sprintf("%.2f", cpu * 1e6 / req) : "n/a"
          busy = c0t > 0 ? sprintf("%.1f", 100 * (c0t - c0i) / c0t) : "n/a"
          # CPU 0 time per request: for one proxy + workload, wrk + origin do the
          # same work every round, so a change means the host slowed CPU 0 down
          c0us = (req ~ /^[0-9]+$/ && req > 0) ? sprintf("%.2f", (c0t - c0i) / hz * 1e6 / req) : "n/a"
          printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.3f\t%s\t%s\t%s\n",
            r, w, p, req, rps, p50, p99, cpu, wall, us, n2, sc, sr, sw, st, busy, cpu / wall, rc, alive, c0us
        }' >>"$results"
      IFS=$'\t' read -r -a row < <(tail -n1 "$results")
      log "[$run_no/$total_runs] round $r $w $(proxy_label "$p"): ${row[4]} req/s, p99 ${row[6]} ms, ${row[9]} us CPU/req, ${row[16]} cores, CPU0 ${row[15]}% busy, non-2xx ${row[10]}, sock err ${row[11]}/${row[12]}/${row[13]}/${row[14]}"
      ((wrk_rc == 0)) || log "WARNING: wrk exited with $wrk_rc (see $raw with --keep)"
      ((M_ALIVE)) || log "WARNING: a process of $(proxy_label "$p") died during the run"
    done
  done
done

# -------------------------------------------------------------- fixed rate
# --rate-latency PCT: every proxy at PCT % of nginx's closed-loop 1k req/s (median
# over the rounds above), open loop with oha, latency corrected for coordinated
# omission. Same interleaving and rotation as above.
rate_target=""
rate_ref=""
rate_skip=""
if [[ -n $RATE_PCT ]]; then
  rate_ref=$(awk -F'\t' '$2 == "1k" && $3 == "nginx" && $5 ~ /^[0-9.]+$/ { print $5 }' "$results" |
    sort -g | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }')
  if [[ -z $rate_ref ]]; then
    rate_skip="nginx has no closed-loop 1k req/s in this run, so there is no rate to aim at"
    log "WARNING: fixed-rate runs skipped: $rate_skip"
  else
    rate_target=$(awk -v r="$rate_ref" -v p="$RATE_PCT" 'BEGIN { t = int(r * p / 100 + 0.5); print (t < 1 ? 1 : t) }')
    log "fixed rate: $rate_target req/s = $RATE_PCT % of nginx's closed-loop 1k median ($(printf '%.0f' "$rate_ref") req/s), $ver_oha"
    for ((r = 1; r <= ROUNDS; r++)); do
      for ((i = 0; i < nprox; i++)); do
        p=${proxies[$(((i + r - 1) % nprox))]}
        measure_run "rate-r$r-$p" "$p" plain oha_load "$rate_target"
        read -r req rps p50 p99 p999 n2 errs deadline < <(parse_oha "$M_RAW")
        awk -v r="$r" -v p="$p" -v target="$rate_target" -v req="$req" -v rps="$rps" \
          -v p50="$p50" -v p99="$p99" -v p999="$p999" -v n2="$n2" -v errs="$errs" -v dl="$deadline" \
          -v ticks="$M_TICKS" -v hz="$CLK_TCK" -v ns="$M_NS" -v c0t="$M_C0T" -v c0i="$M_C0I" \
          -v rc="$M_RC" -v alive="$M_ALIVE" '
          BEGIN {
            cpu = ticks / hz; wall = ns / 1e9
            us = (req ~ /^[0-9]+$/ && req > 0) ? sprintf("%.2f", cpu * 1e6 / req) : "n/a"
            busy = c0t > 0 ? sprintf("%.1f", 100 * (c0t - c0i) / c0t) : "n/a"
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.3f\t%s\t%s\t%s\t%s\t%.3f\t%s\t%s\t%s\n",
              r, p, target, req, rps, p50, p99, p999, cpu, wall, us, n2, errs, dl, cpu / wall, rc, alive, busy
          }' >>"$rate_results"
        IFS=$'\t' read -r -a row < <(tail -n1 "$rate_results")
        log "[$run_no/$total_runs] round $r fixed rate $rate_target req/s $(proxy_label "$p"): ${row[4]} req/s done, p50/p99/p99.9 ${row[5]}/${row[6]}/${row[7]} ms, ${row[10]} us CPU/req, ${row[14]} cores, non-2xx ${row[11]}, errors ${row[12]}"
        ((M_RC == 0)) || log "WARNING: oha exited with $M_RC: $(head -c 300 "$M_RAW.err" 2>/dev/null | tr '\n' ' ')"
        ((M_ALIVE)) || log "WARNING: a process of $(proxy_label "$p") died during the run"
      done
    done
  fi
fi

# -------------------------------------------------------------- report
sha=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo nogit)
describe=$(git -C "$root" describe --always --dirty 2>/dev/null || echo nogit)
stem="$(date -u +%Y-%m-%d)-$sha"
mkdir -p "$here/results"
report=$here/results/$stem.md
n=2
while [[ -e $report ]]; do
  report=$here/results/$stem-$n.md
  n=$((n + 1))
done

# median of the values on stdin (numeric; "n/a" ignored)
median() {
  grep -E '^-?[0-9.]+$' | sort -g | awk '
    { a[NR] = $1 }
    END {
      if (NR == 0) { print "n/a"; exit }
      if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2
    }'
}

# col WORKLOAD PROXY COLUMN(1-based in results.tsv) -> values, one per round
col() { awk -F'\t' -v w="$1" -v p="$2" -v c="$3" '$2 == w && $3 == p { print $c }' "$results"; }
# rcol PROXY COLUMN(1-based in rate.tsv) -> median over rounds
rcol() { awk -F'\t' -v p="$1" -v c="$2" '$2 == p { print $c }' "$rate_results" | median; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v ~ /^-?[0-9.]+$/) printf f, v; else printf "%s", v }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

# ratio pairs "A B" (A/B): Weir, or each Weir variant, against each non-Weir proxy;
# each variant after the first also against the first; without Weir, the first
# proxy listed against each other one.
pairs=()
if ((has_weir)); then
  for a in "${proxies[@]}"; do
    is_weir "$a" || continue
    for b in "${proxies[@]}"; do
      is_weir "$b" || pairs+=("$a $b")
    done
  done
  for a in "${variants[@]:1}"; do pairs+=("$a ${variants[0]}"); done
else
  for b in "${proxies[@]:1}"; do pairs+=("${proxies[0]} $b"); done
fi

# -------------------------------------------------------------- charts
# SVGs next to the report (same stem), written by charts.py (python3, stdlib only).
chart_stem=${report%.md}
charts=()
if command -v python3 >/dev/null; then
  chart_args=(--results "$results" --out-stem "$chart_stem" --workloads "$WORKLOADS" --rounds "$ROUNDS")
  for p in "${proxies[@]}"; do chart_args+=(--proxy "$p=$(proxy_label "$p")"); done
  if chart_out=$(python3 "$here/charts.py" "${chart_args[@]}"); then
    [[ -z $chart_out ]] || mapfile -t charts <<<"$chart_out"
  else
    log "WARNING: charts.py failed; the report has no charts"
  fi
else
  log "WARNING: python3 not found: no charts"
fi

{
  echo "# Reverse-proxy benchmark: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Side by side on one core: origin nginx + wrk on CPU $LOAD_CPU, proxy under test alone on CPU $PROXY_CPU"
  echo "(one worker/thread each). Shared, noisy machine: only the ratios within this run mean anything."
  echo
  echo "## Setup"
  echo
  echo "- command: \`${envline}${cmdline}\`"
  echo "- git: $describe"
  echo "- machine: $(nproc) CPUs ($(nproc --all) online), kernel $(uname -r), CPU \"$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)\", $(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
  echo "- nginx: $ver_nginx"
  echo "- haproxy: $ver_haproxy"
  echo "- wrk: $ver_wrk"
  ((has_tls == 0)) || echo "- openssl: $ver_openssl"
  [[ -z $RATE_PCT ]] || echo "- oha: $ver_oha"
  echo "- weir: $ver_weir; binary $weir_bin_desc"
  if ((has_weir)); then
    echo "- Weir [server] extra: \`${WEIR_SERVER_EXTRA:-none}\`"
    if ((${#variants[@]} == 0)) && [[ -n ${weir_startup[weir]:-} ]]; then
      echo "- Weir's first output lines at start:"
      echo
      echo '  ```'
      while IFS= read -r line; do echo "  $line"; done <<<"${weir_startup[weir]}"
      echo '  ```'
    fi
    if ((${#variants[@]})); then
      echo "- Weir variants, each measured as its own proxy (same binary; its lines go into [server] after the extra above):"
      for v in "${variants[@]}"; do
        echo "  - **$(proxy_label "$v")**: \`${variant_raw[$v]}\`; first output lines at start:"
        echo
        echo '    ```'
        while IFS= read -r line; do echo "    $line"; done <<<"${weir_startup[$v]:-}"
        echo '    ```'
      done
    fi
  fi
  echo "- nginx proxy_request_buffering: ${NGINX_REQUEST_BUFFERING:-off} (nginx's default is on); access log: ${NGINX_ACCESS_LOG:-off}; other proxy settings: \`${NGINX_PROXY_EXTRA:-nginx defaults}\`"
  if ((has_tls)); then
    echo "- tls1k: one self-signed ECDSA P-256 certificate (CN bench.weir.test, SAN DNS:bench.weir.test, IP:127.0.0.1), made with openssl for this run, used by every proxy on 127.0.0.1:$TLS_PORT; origin stays plain HTTP"
    echo "  - nginx: a second \`server\` with \`listen 127.0.0.1:$TLS_PORT ssl\`, \`ssl_protocols TLSv1.2 TLSv1.3\`, \`ssl_session_cache shared:SSL:10m\`, \`keepalive_requests 100000\`, same upstream and location settings as the plain one"
    if ((has_weir)); then
      echo "  - Weir: started for tls1k with an HTTPS-only config: the same file with its \`[[listener]]\` replaced by \`address = \"127.0.0.1:$TLS_PORT\"\`, \`tls = { certificates = [{ cert = \"…/cert.pem\", key = \"…/key.pem\" }] }\` (rustls)"
    fi
    for p in "${proxies[@]}"; do
      [[ -z ${tls_session[$p]:-} ]] || echo "  - $(proxy_label "$p") negotiates with an OpenSSL client (openssl s_client, same library as wrk): ${tls_session[$p]}"
    done
    for p in "${proxies[@]}"; do
      [[ -n ${weir_startup_tls[$p]:-} ]] || continue
      echo "  - $(proxy_label "$p")'s first output lines at start with the TLS listener:"
      echo
      echo '    ```'
      while IFS= read -r line; do echo "    $line"; done <<<"${weir_startup_tls[$p]}"
      echo '    ```'
    done
    [[ -z $skipped ]] || echo "  - not run in tls1k: $skipped (no TLS setup in this harness)"
  fi
  echo "- load: wrk -t1 -c$CONNS --latency, ${DURATION} s per run after a ${WARMUP} s warm-up, $ROUNDS interleaved rounds (proxy order rotated each round); values below are medians over rounds"
  echo "- CPU/req: utime+stime of all the proxy's processes (/proc/PID/stat) during the run / requests completed; cores: that CPU time / wall time"
  [[ -z $busy_note ]] || echo "- **note:** $busy_note"
  ((build_runs == 0)) || echo "- **note:** cargo/rustc was running during $build_runs of $total_runs measured runs: those are extra noisy."
  for p in "${proxies[@]}"; do
    [[ -z ${preflight_note[$p]:-} ]] || echo "- **$(proxy_label "$p")**: ${preflight_note[$p]}"
  done

  for w in "${workloads[@]}"; do
    echo
    echo "## Workload $w"
    echo
    case $w in
      upload64k) echo "POST /upload with a 64 KiB body (origin discards it and answers {\"ok\":true})." ;;
      1k) echo "GET /1k (1 KiB JSON body from the origin)." ;;
      16k) echo "GET /16k (16 KiB JSON body from the origin)." ;;
      mock1k) echo "GET /mock1k: the same 1 KiB JSON body, written by the proxy itself (Weir: a mock route; nginx: \\`return 200\\`). No origin." ;;
      cached1k)
        echo "GET /cached/1k: the origin's /1k from the proxy's response cache, so after the first request"
        echo "every one is a hit (Weir: \\`cache = { ttl = \"3600s\" }\\` with \\`strip_prefix\\`, per-worker memory shard;"
        echo "nginx: \\`proxy_cache\\` with \\`proxy_cache_valid 200 60m\\`, entries in files served from the page cache)."
        ;;
      256k) echo "GET /256k (256 KiB JSON body from the origin)." ;;
      tls1k)
        echo "GET /1k (1 KiB JSON body from the origin) over **HTTPS** from wrk to the proxy, which"
        echo "terminates TLS and talks plain HTTP to the origin. Keep-alive: each measured run makes"
        echo "its $CONNS full handshakes at the start and then only reuses those connections, so"
        echo "handshakes are amortised over all its requests (CPU/req below includes them, at about"
        echo "1 per $(fmt "$(awk -F'\t' -v w="$w" -v c="$CONNS" '$2 == w && $4 ~ /^[0-9]+$/ { print $4 / c }' "$results" | median)" %.0f) requests):"
        echo "this is the cost of TLS record processing per request, not of handshakes."
        [[ -z $skipped ]] || echo "Not run here: $skipped (no TLS setup in this harness)."
        ;;
    esac
    echo
    echo "| proxy | req/s | p50 ms | p99 ms | CPU/req µs | errors | proxy cores | CPU0 busy % |"
    echo "|---|---:|---:|---:|---:|---|---:|---:|"
    declare -A med_rps=() med_us=() med_cores=() med_busy=() errs_of=()
    mapfile -t wprox < <(workload_proxies "$w")
    for p in "${wprox[@]}"; do
      med_rps[$p]=$(col "$w" "$p" 5 | median)
      p50=$(col "$w" "$p" 6 | median)
      p99=$(col "$w" "$p" 7 | median)
      med_us[$p]=$(col "$w" "$p" 10 | median)
      med_cores[$p]=$(col "$w" "$p" 17 | median)
      med_busy[$p]=$(col "$w" "$p" 16 | median)
      errs=$(awk -F'\t' -v w="$w" -v p="$p" '
        $2 == w && $3 == p { n2 += $11; s += $12 + $13 + $14 + $15; if ($18 != 0) rc++; if ($19 != 1) dead++ }
        END {
          out = ""
          if (n2) out = out sprintf("**%d non-2xx** ", n2)
          if (s) out = out sprintf("**%d socket** ", s)
          if (rc) out = out sprintf("**wrk failed x%d** ", rc)
          if (dead) out = out sprintf("**proxy died x%d** ", dead)
          sub(/ $/, "", out)
          print (out == "" ? "0" : out)
        }' "$results")
      errs_of[$p]=$errs
      echo "| $(proxy_label "$p") | $(fmt "${med_rps[$p]}" %.0f) | $(fmt "$p50" %.2f) | $(fmt "$p99" %.2f) | $(fmt "${med_us[$p]}" %.2f) | $errs | $(fmt "${med_cores[$p]}" %.2f) | $(fmt "${med_busy[$p]}" %.0f) |"
    done
    echo
    for pair in "${pairs[@]}"; do
      read -r base p <<<"$pair"
      if ! in_workload "$w" "$base" || ! in_workload "$w" "$p"; then continue; fi
      # per-round ratios show how much the noise moves them
      per_round=$(awk -F'\t' -v w="$w" -v a="$base" -v b="$p" '
        $2 == w && $3 == a { ra[$1] = $5; ua[$1] = $10 }
        $2 == w && $3 == b { rb[$1] = $5; ub[$1] = $10 }
        END {
          for (r = 1; r in ra || r in rb; r++) {
            x = (r in ra && r in rb && rb[r] > 0) ? sprintf("%.2f", ra[r] / rb[r]) : "n/a"
            y = (r in ua && r in ub && ub[r] > 0) ? sprintf("%.2f", ua[r] / ub[r]) : "n/a"
            s = s (s == "" ? "" : ", ") x "/" y
          }
          print s
        }' "$results")
      bad=""
      for x in "$base" "$p"; do
        [[ ${errs_of[$x]} == 0 ]] || bad+="$(proxy_label "$x") had errors; "
      done
      [[ -z $bad ]] || bad=" — **not comparable: ${bad%; }**"
      echo "- **$(proxy_label "$base")/$(proxy_label "$p")**: req/s × $(ratio "${med_rps[$base]}" "${med_rps[$p]}"), CPU/req × $(ratio "${med_us[$base]}" "${med_us[$p]}") (per round, req/s / CPU/req: $per_round)$bad"
    done
    # Is the load core (CPU 0) the limit? (see README, "Which core is the limit")
    hint=$(
      for p in "${wprox[@]}"; do
        printf '%s\t%s\t%s\t%s\n' "$(proxy_label "$p")" "${med_rps[$p]}" "${med_cores[$p]}" "${med_busy[$p]}"
      done | awk -F'\t' '
        $2 ~ /^[0-9.]+$/ && $3 ~ /^[0-9.]+$/ && $4 ~ /^[0-9.]+$/ {
          n++; if (n == 1 || $2 < lo) lo = $2; if ($2 > hi) hi = $2
          if ($3 < 0.95 && $4 >= 95) { what = "CPU 0 (wrk + origin) is the limit"; loadb++ }
          else if ($3 >= 0.95 && $4 >= 95) what = "both cores saturated"
          else if ($3 >= 0.95) what = "the proxy (CPU 1) is the limit"
          else what = "neither core saturated (latency-bound)"
          s = s (s == "" ? "" : "; ") sprintf("%s %.2f cores on CPU 1, CPU 0 %.0f%% busy: %s", $1, $3, $4, what)
        }
        END {
          if (n < 1) exit
          print "Which core is the limit: " s "."
          if (loadb == n && (n == 1 || hi / lo < 1.15))
            printf "CPU 0 is the limit for every proxy (req/s max/min %.2f): req/s is capped by the load core, compare CPU/req, not req/s.\n", (lo > 0 ? hi / lo : 0)
        }'
    )
    # Host contention shows up as the load core needing more time for the same work.
    # Same proxy + same workload = same work on CPU 0 in every round.
    noise=$(awk -F'\t' -v w="$w" '
      $2 == w && $20 ~ /^[0-9.]+$/ && $20 > 0 {
        p = $3; n[p]++
        if (n[p] == 1 || $20 < lo[p]) lo[p] = $20
        if ($20 > hi[p]) hi[p] = $20
      }
      END {
        for (p in n) if (n[p] > 1 && hi[p] / lo[p] > worst) { worst = hi[p] / lo[p]; wp = p }
        if (worst > 1.2)
          printf "Noisy: for the same work (%s, %s) the load core needed %.1f to %.1f µs per request across rounds (x%.2f): the host slowed CPU 0 down in some runs. Do not compare req/s across rounds; trust the per-round ratios and CPU/req.", wp, w, lo[wp], hi[wp], worst
      }' "$results")
    [[ -z $noise ]] || hint+=${hint:+$'\n'}$noise
    if [[ -n $hint ]]; then
      echo
      while IFS= read -r line; do echo "_${line}_"; echo; done <<<"$hint"
    fi
    unset med_rps med_us med_cores med_busy errs_of
  done

  if [[ " ${workloads[*]} " == *" mock1k "* && " ${workloads[*]} " == *" cached1k "* ]]; then
    echo
    echo "## Cache hit vs mock (Weir)"
    echo
    echo "CPU per request of a cache hit (cached1k) over that of a mock route (mock1k), same 1 KiB body,"
    echo "medians over rounds and per round:"
    echo
    for p in "${proxies[@]}"; do
      is_weir "$p" || continue
      hit=$(col cached1k "$p" 10 | median)
      mock=$(col mock1k "$p" 10 | median)
      per_round=$(awk -F'\t' -v p="$p" '
        $2 == "cached1k" && $3 == p { h[$1] = $10 }
        $2 == "mock1k" && $3 == p { m[$1] = $10 }
        END { for (r = 1; r in h; r++) if (m[r] > 0) s = s (s == "" ? "" : ", ") sprintf("%.2f", h[r] / m[r]); print s }' "$results")
      echo "- **$(proxy_label "$p")**: hit/mock CPU/req × $(ratio "$hit" "$mock") (per round: $per_round)"
    done
  fi

  if [[ -n $RATE_PCT ]]; then
    echo
    echo "## Fixed-rate latency (1k, open loop, corrected for coordinated omission)"
    echo
    if [[ -n $rate_skip ]]; then
      echo "Not run: $rate_skip."
    else
      echo "Every proxy at the same fixed rate, **$rate_target req/s** = $RATE_PCT % of nginx's closed-loop 1k req/s"
      echo "in this run (median $(printf '%.0f' "$rate_ref")): \`oha -z ${DURATION}s -q $rate_target --latency-correction -c $CONNS --no-tui ${oha_json[*]}\`"
      echo "on CPU $LOAD_CPU after a ${WARMUP} s warm-up at the same rate, $ROUNDS interleaved rounds, medians over rounds. Latency"
      echo "counts from the time each request was due to be sent, so time spent queued behind a slow"
      echo "response is included (unlike wrk's closed loop above)."
      echo
      echo "| proxy | target req/s | done req/s | p50 ms | p99 ms | p99.9 ms | CPU/req µs | proxy cores | errors |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
      for p in "${proxies[@]}"; do
        rerrs=$(awk -F'\t' -v p="$p" '
          $2 == p { n2 += $12; e += $13; if ($16 != 0) rc++; if ($17 != 1) dead++ }
          END {
            out = ""
            if (n2) out = out sprintf("**%d non-2xx** ", n2)
            if (e) out = out sprintf("**%d errors** ", e)
            if (rc) out = out sprintf("**oha failed x%d** ", rc)
            if (dead) out = out sprintf("**proxy died x%d** ", dead)
            sub(/ $/, "", out)
            print (out == "" ? "0" : out)
          }' "$rate_results")
        echo "| $(proxy_label "$p") | $rate_target | $(fmt "$(rcol "$p" 5)" %.0f) | $(fmt "$(rcol "$p" 6)" %.2f) | $(fmt "$(rcol "$p" 7)" %.2f) | $(fmt "$(rcol "$p" 8)" %.2f) | $(fmt "$(rcol "$p" 11)" %.2f) | $(fmt "$(rcol "$p" 15)" %.2f) | $rerrs |"
      done
      echo
      echo "_done req/s below the target means the proxy (or the load core) could not keep up: its latencies then grow with the backlog. Requests still in flight when the run ends (oha: \"aborted due to deadline\") are not errors; the per-run table counts them._"
    fi
  fi

  if ((${#charts[@]})); then
    echo
    echo "## Charts"
    echo
    for c in "${charts[@]}"; do
      case $c in
        *-throughput.svg) alt="req/s and p99 per proxy" ;;
        *-cpu.svg) alt="CPU time per request per proxy and workload" ;;
        *) alt="chart" ;;
      esac
      echo "![$alt](${c##*/})"
      echo
    done
  fi

  echo
  echo "<details><summary>Per-run values</summary>"
  echo
  echo "| round | workload | proxy | requests | req/s | p50 ms | p99 ms | CPU s | wall s | CPU/req µs | non-2xx | sock c/r/w/t | CPU0 busy % | cores | CPU0 µs/req |"
  echo "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s/%s/%s/%s | %s | %s | %s |\n",
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $20 }' "$results"
  echo
  echo "CPU0 µs/req: busy time of the load core (wrk + origin) per request. For one proxy and"
  echo "workload that work is the same in every round, so when it moves the host slowed CPU 0 down"
  echo "(it differs between proxies: on loopback the sender pays part of the receiver's kernel work)."
  if [[ -n $RATE_PCT && -z $rate_skip ]]; then
    echo
    echo "Fixed-rate runs (oha):"
    echo
    echo "| round | proxy | target req/s | responses | done req/s | p50 ms | p99 ms | p99.9 ms | CPU s | wall s | CPU/req µs | non-2xx | errors | cut by deadline | cores | CPU0 busy % |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
      $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $18 }' "$rate_results"
  fi
  echo
  echo "</details>"
} >"$report"

cat "$report"
echo
log "report written to ${report#"$root"/}"
for c in "${charts[@]+"${charts[@]}"}"; do log "chart written to ${c#"$root"/}"; done
if ((PERF_KEEP)); then
  log "raw wrk output, configs and logs: $PERF_TMP"
fi
