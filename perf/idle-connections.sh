#!/usr/bin/env bash
# Memory cost of idle keep-alive client connections, per proxy.
#
# For each proxy (one at a time, on CPU 1, one worker): open N client
# connections (default 10,000) from a python3 client on CPU 0, send one
# `GET /1k` on each, read the response, then hold them all open and idle.
# Resident memory (VmRSS summed over the proxy's processes) is read before
# and after; the difference / N is the KiB per idle connection.
# Bounded: the client gives up holding after --hold seconds, every process
# is stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

usage() {
  cat <<'EOF'
Usage: perf/idle-connections.sh [options]

  --proxies LIST   comma list of weir,nginx,haproxy (default all three; env PROXIES)
  --conns N        idle client connections to open (default 10000; env CONNS)
  --hold S         longest time the client holds them (default 120; env HOLD)
  --keep           keep the temp dir (configs, logs) and print its path
  -h, --help       this text

Environment: WEIR_BIN, WEIR_SERVER_EXTRA as for perf/run.sh.
EOF
}

PROXIES=${PROXIES:-weir,nginx,haproxy}
CONNS=${CONNS:-10000}
HOLD=${HOLD:-120}
while (($#)); do
  case $1 in
    --proxies) PROXIES=${2:?}; shift 2 ;;
    --proxies=*) PROXIES=${1#*=}; shift ;;
    --conns) CONNS=${2:?}; shift 2 ;;
    --conns=*) CONNS=${1#*=}; shift ;;
    --hold) HOLD=${2:?}; shift 2 ;;
    --hold=*) HOLD=${1#*=}; shift ;;
    --keep) PERF_KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
for v in CONNS HOLD; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
IFS=, read -r -a proxies <<<"$PROXIES"
for p in "${proxies[@]}"; do
  case $p in weir | nginx | haproxy) ;; *) die "unknown proxy '$p'" ;; esac
done
for tool in nginx curl taskset ss python3; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

# File descriptors: the client needs CONNS, the proxy CONNS + its upstream
# sockets. Raise the soft limit as far as allowed (children inherit it).
want=$((CONNS + 1024))
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
if [[ $nofile != unlimited ]] && ((nofile < want)); then
  die "open-file limit is $nofile (hard $(ulimit -Hn)); need >= $want for $CONNS connections: lower --conns or raise the hard limit"
fi
[[ $nofile == unlimited ]] && nofile=1048576

if [[ " ${proxies[*]} " == *" weir "* ]]; then
  resolve_weir_bin
fi

check_ports_free
perf_setup_tmp

make_bodies
maxconn=$((CONNS + 1000))
# keep-alive timeouts well above the hold time, so the proxies keep the conns
kat=$((HOLD + 60))s
write_origin_conf "$maxconn" "$kat"
write_nginx_proxy_conf "$maxconn" "$kat"
write_haproxy_conf "$maxconn" "$kat"
write_weir_conf weir

client=$PERF_TMP/idle_client.py
cat >"$client" <<'EOF'
# Open N keep-alive connections, one GET each, then hold them idle.
import os, resource, select, socket, sys, time

port, n, hold, stopfile = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft != resource.RLIM_INFINITY and soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

REQ = b"GET /1k HTTP/1.1\r\nHost: x\r\n\r\n"

def one_request(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before response headers")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    clen, chunked = None, False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            clen = int(v.strip())
        elif k == b"transfer-encoding" and b"chunked" in v.lower():
            chunked = True
    if clen is not None:
        while len(body) < clen:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            body += chunk
    elif chunked:
        while not body.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            body += chunk
    else:
        raise ConnectionError("response without length (not keep-alive)")
    return status

socks, failed, non200, first_err = [], 0, 0, None
t0 = time.monotonic()
deadline = t0 + max(60.0, n / 200.0)  # opening phase is bounded too
for i in range(n):
    if time.monotonic() > deadline:
        failed += n - i
        first_err = first_err or "opening phase timed out"
        break
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(REQ)
        if one_request(s) != 200:
            non200 += 1
        socks.append(s)
    except Exception as e:  # count and go on: the report shows it
        failed += 1
        first_err = first_err or repr(e)
        s.close()
    if (i + 1) % 2000 == 0:
        print(f"opened {i + 1}", file=sys.stderr, flush=True)

print(f"READY opened={len(socks)} failed={failed} non200={non200} "
      f"seconds={time.monotonic() - t0:.1f} first_error={first_err}", flush=True)

end = time.monotonic() + hold
while time.monotonic() < end and not os.path.exists(stopfile):
    time.sleep(0.1)

# how many did the proxy close while we were idle?
poller = select.poll()
for s in socks:
    poller.register(s, select.POLLIN | select.POLLRDHUP)
closed = 0
for fd, ev in poller.poll(0):
    closed += 1
print(f"DONE still_open={len(socks) - closed} closed_by_proxy={closed}", flush=True)
for s in socks:
    s.close()
EOF

log "temp dir: $PERF_TMP; open-file limit $nofile"
start_origin

rows=()
for p in "${proxies[@]}"; do
  port=$(proxy_port "$p")
  start_proxy "$p"
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/1k" || true
  done
  sleep 0.5
  mapfile -t ppids < <(proc_tree "$PROXY_PID")
  rss0=$(proc_rss_kib "${ppids[@]}")

  out=$PERF_TMP/logs/client-$p.out
  stopfile=$PERF_TMP/stop-$p
  rm -f "$stopfile"
  start_bg "$LOAD_CPU" "$out" python3 "$client" "$port" "$CONNS" "$HOLD" "$stopfile"
  cpid=$STARTED_PID
  log "$(proxy_label "$p"): opening $CONNS connections to 127.0.0.1:$port (RSS before: $rss0 KiB)"
  ready=""
  limit=$((CONNS / 200 + 90))  # seconds; the client's own opening bound is shorter
  for ((i = 0; i < limit * 10; i++)); do
    ready=$(grep -m1 '^READY' "$out" 2>/dev/null || true)
    [[ -n $ready ]] && break
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $ready ]] || {
    tail -n 20 "$out" >&2 || true
    die "client did not finish opening connections to $(proxy_label "$p")"
  }
  sleep 1  # let the proxy settle
  mapfile -t ppids < <(proc_tree "$PROXY_PID")
  rss1=$(proc_rss_kib "${ppids[@]}")
  estab=$(ss -Htn state established "( sport = :$port )" | wc -l)
  log "$(proxy_label "$p"): $ready; established at proxy: $estab; RSS after: $rss1 KiB"

  touch "$stopfile"
  for ((i = 0; i < 300; i++)); do
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.1
  done
  stop_tree "$cpid"
  done_line=$(grep -m1 '^DONE' "$out" 2>/dev/null || echo "DONE still_open=? closed_by_proxy=?")
  stop_proxy "$p" "$PROXY_PID"

  opened=$(sed -E 's/.*opened=([0-9]+).*/\1/' <<<"$ready")
  failed=$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$ready")
  non200=$(sed -E 's/.*non200=([0-9]+).*/\1/' <<<"$ready")
  still=$(sed -E 's/.*still_open=([^ ]+).*/\1/' <<<"$done_line")
  per=$(awk -v a="$rss0" -v b="$rss1" -v n="$estab" 'BEGIN { if (n > 0) printf "%.2f", (b - a) / n; else print "n/a" }')
  rows+=("| $(proxy_label "$p") | $opened | $failed | $non200 | $estab | $still | $rss0 | $rss1 | $per |")
done

echo
echo "## Idle keep-alive connections ($CONNS requested, $(date -u '+%Y-%m-%d %H:%M UTC'))"
echo
echo "| proxy | opened | failed | non-200 | established at proxy | still open at end | RSS before KiB | RSS after KiB | KiB/conn |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "KiB/conn = (RSS after - RSS before) / connections established at the proxy."
echo "RSS excludes kernel socket buffers. nginx and HAProxy preallocate tables sized by"
echo "worker_connections / maxconn (= $maxconn here) at start: that part of their"
echo "per-connection cost is in 'RSS before', not in KiB/conn (see perf/README.md)."
