#!/usr/bin/env bash
# Lints what a cached route of Weir sends with httplint (PyPI; the checks behind REDbot):
# the MISS, the HIT and the 304 to a conditional GET, each as the response to its request.
# Fails on any note of level "bad"; on a warning about caching (the Caching and Validation
# categories, a missing Date, an Age penalty, representation headers in a 304) that the
# origin's own response, linted first as a baseline, does not already carry; or if the cache
# does not answer MISS, then HIT with an Age of at least 1 two seconds later, then 304.
# Prints every note. Installs httplint in a throwaway venv if python3 cannot import it.
# Usage: tests/http-lint.sh [WEIR_BINARY] (default: builds target/debug/weir). Everything
# stays on 127.0.0.1 and ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTPLINT_VERSION=${HTTPLINT_VERSION:-2026.10.4}

tmp=$(mktemp -d)
weir_pid=""
origin_pid=""
cleanup() {
  [ -n "$weir_pid" ] && kill "$weir_pid" 2>/dev/null
  [ -n "$origin_pid" ] && kill "$origin_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# httplint: the system's if it has it, else a venv (python3-venv from Debian if needed), else
# pip into the system Python.
py=python3
if ! python3 -c 'import httplint' 2>/dev/null; then
  if ! python3 -m venv "$tmp/venv" >/dev/null 2>&1; then
    rm -rf "$tmp/venv"
    if command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || true
    fi
    python3 -m venv "$tmp/venv" >/dev/null 2>&1 || rm -rf "$tmp/venv"
  fi
  if [ -x "$tmp/venv/bin/python" ]; then
    py="$tmp/venv/bin/python"
    "$py" -m pip install -q --disable-pip-version-check "httplint==$HTTPLINT_VERSION"
  else
    python3 -m pip --version >/dev/null 2>&1 || {
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    }
    python3 -m pip install -q --disable-pip-version-check --break-system-packages \
      "httplint==$HTTPLINT_VERSION"
  fi
fi
"$py" -c 'import httplint; print("http-lint: httplint", httplint.__version__)'

# The origin: a JSON resource with the caching headers a real API would send, and 304 for
# a matching If-None-Match.
cat > "$tmp/origin.py" <<'PY'
import sys, time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b'{"id": 42, "name": "widget", "tags": ["cached", "linted"]}\n'
ETAG = '"v1"'
LAST_MODIFIED = formatdate(time.time() - 86400, usegmt=True)

class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
        return "origin/1"

    def do_GET(self):
        inm = self.headers.get("If-None-Match", "")
        not_modified = ETAG in [t.strip() for t in inm.split(",")] or inm.strip() == "*"
        self.send_response(304 if not_modified else 200)  # adds Server and Date
        self.send_header("Cache-Control", "public, max-age=60")
        self.send_header("ETag", ETAG)
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.send_header("Vary", "Accept-Encoding")
        if not_modified:
            self.end_headers()
            return
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_port))
server.serve_forever()
PY

# Sends the requests and lints each response as the response to its request.
cat > "$tmp/lint.py" <<'PY'
import socket, sys, time
from httplint import HttpRequestLinter, HttpResponseLinter
from httplint.note import categories, levels

weir, origin, path = sys.argv[1], sys.argv[2], sys.argv[3]

# Warnings that are about caching correctness even outside the Caching/Validation categories.
CACHING_WARNINGS = {"DATE_CLOCKLESS", "AGE_PENALTY", "HEADER_SHOULD_NOT_BE_IN_304"}


def fetch(addr, extra):
    host, port = addr.rsplit(":", 1)
    headers = [
        ("Host", addr),
        ("User-Agent", "weir-http-lint/1"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip"),
    ] + extra + [("Connection", "close")]
    req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    request = HttpRequestLinter(start_time=time.time())
    request.process_request_topline(b"GET", path.encode(), b"1.1")
    request.process_headers([(k.encode(), v.encode()) for k, v in headers])
    request.finish_content(True)
    data, response_time = b"", None
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(req.encode())
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            if response_time is None:
                response_time = time.time()
            data += chunk
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise SystemExit(f"http-lint: incomplete response from {addr}: {data[:200]!r}")
    lines = head.split(b"\r\n")
    version, status, phrase = (lines[0].split(None, 2) + [b""])[:3]
    fields = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.append((name, value.strip()))
    response = HttpResponseLinter(start_time=response_time, _related=request)
    response.process_response_topline(version.split(b"/", 1)[1], status, phrase)
    response.process_headers(fields)
    te = b",".join(v for n, v in fields if n.lower() == b"transfer-encoding").lower()
    if b"chunked" in te:
        while True:  # the content is what the chunks carry
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            response.feed_content(rest[:size])
            rest = rest[size + 2:]
    else:
        response.feed_content(rest)
    response.finish_content(True)
    got = {n.decode().lower(): v.decode("latin-1") for n, v in fields}
    return int(status), got, response, head.decode("latin-1")


def notes_of(linter):
    for note in linter.notes:
        yield note
        yield from note.subnotes


def show(label, response, head):
    print(f"\n== {label}")
    print("   " + head.replace("\r\n", "\n   "))
    for note in sorted(notes_of(response), key=lambda n: (n.category.name, n.level.name)):
        print(f"   [{note.level.value}] {note.summary}  ({type(note).__name__}, {note.category.name.lower()})")


problems, warnings = [], 0

_, _, baseline, head = fetch(origin, [])
show(f"origin, directly (baseline): GET {path}", baseline, head)
inherited = {type(n).__name__ for n in notes_of(baseline)}
problems += [f"origin: [bad] {n.summary}" for n in notes_of(baseline) if n.level == levels.BAD]

cases = [
    ("MISS", [], 200, "MISS"),
    ("HIT", [], 200, "HIT"),
    ("304", [("If-None-Match", '"v1"')], 304, None),
]
for label, extra, want_status, want_cache in cases:
    if label == "HIT":
        time.sleep(2)  # so a correct Age is at least 1
    status, got, response, head = fetch(weir, extra)
    show(f"weir {label}: GET {path}" + "".join(f", {k}: {v}" for k, v in extra), response, head)
    if status != want_status:
        problems.append(f"{label}: status {status}, expected {want_status}")
    if want_cache and got.get("x-cache") != want_cache:
        problems.append(f"{label}: x-cache is {got.get('x-cache')!r}, expected {want_cache!r}")
    if label == "HIT" and not got.get("age", "").isdigit():
        problems.append(f"HIT: Age is {got.get('age')!r}, expected seconds")
    elif label == "HIT" and int(got["age"]) < 1:
        problems.append(f"HIT: Age is {got['age']} two seconds after the MISS stored it")
    for note in notes_of(response):
        name = type(note).__name__
        if note.level == levels.BAD:
            problems.append(f"{label}: [bad] {note.summary} ({name})")
        elif note.level == levels.WARN:
            warnings += 1
            caching = note.category in (categories.CACHING, categories.VALIDATION) or name in CACHING_WARNINGS
            if caching and name not in inherited:
                problems.append(f"{label}: [warning] {note.summary} ({name}; not on the origin's response)")

print()
for problem in problems:
    print(f"http-lint: {problem}")
print(f"http-lint: 3 responses linted, {len(problems)} problems, {warnings} warnings")
sys.exit(1 if problems else 0)
PY

"$py" "$tmp/origin.py" "$tmp/origin.port" 2>"$tmp/origin.log" &
origin_pid=$!
for _ in $(seq 1 100); do
  [ -s "$tmp/origin.port" ] && break
  sleep 0.1
done
[ -s "$tmp/origin.port" ] || { cat "$tmp/origin.log"; echo "http-lint: origin did not start"; exit 1; }
origin="127.0.0.1:$(cat "$tmp/origin.port")"

cat > "$tmp/weir.toml" <<TOML
[server]
workers = 1

[[listener]]
address = "127.0.0.1:0"

[upstream.origin]
targets = ["$origin"]

[[route]]
path = "/{*rest}"
upstream = "origin"
cache = { ttl = "60s" }
TOML

# shellcheck source=start-weir.sh
source tests/start-weir.sh
start_weir "${1:-}" "$tmp/weir.toml" "$tmp/weir.log" http-lint

"$py" "$tmp/lint.py" "$addr" "$origin" /api/items/42
