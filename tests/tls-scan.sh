#!/usr/bin/env bash
# Scans a Weir TLS listener with sslscan and fails on any weak protocol or cipher:
# SSLv2, SSLv3, TLS 1.0 or 1.1 enabled; NULL, anonymous, EXPORT, RC4, DES/3DES, MD5 or
# under-128-bit ciphers; or a missing TLS 1.3. Run by .ci/run after `cargo test`; installs
# sslscan (Debian package) if missing. Everything stays on 127.0.0.1 and ends by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v sslscan >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sslscan >/dev/null
fi

tmp=$(mktemp -d)
weir_pid=""
cleanup() { [ -n "$weir_pid" ] && kill "$weir_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

# An ECDSA P-256 certificate, as most edge deployments use.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=scan.weir.test" -addext "subjectAltName=DNS:scan.weir.test" \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

cat > "$tmp/weir.toml" <<TOML
[server]
workers = 1

[[listener]]
address = "127.0.0.1:0"
tls = { certificates = [{ cert = "cert.pem", key = "key.pem" }] }

[[route]]
path = "/{*rest}"
mock = { body = "scanned" }
TOML

# shellcheck source=start-weir.sh
source tests/start-weir.sh
start_weir "" "$tmp/weir.toml" "$tmp/weir.log" tls-scan

scan=$(timeout 120 sslscan --no-colour --sni-name=scan.weir.test "$addr")
echo "$scan" | sed -n '/SSL\/TLS Protocols/,/Supported Server Cipher/p'

problems=()
for proto in SSLv2 SSLv3 TLSv1.0 TLSv1.1; do
  if echo "$scan" | grep -Eq "^${proto//./\\.} +enabled"; then problems+=("$proto is enabled"); fi
done
echo "$scan" | grep -Eq '^TLSv1\.3 +enabled' || problems+=("TLS 1.3 is not enabled")
weak=$(echo "$scan" | grep -E '^(Preferred|Accepted)' | grep -Ei 'NULL|anon|EXP|RC4|DES|MD5| (40|56|64) bits' || true)
[ -z "$weak" ] || problems+=("weak ciphers: $weak")

echo "$scan" | grep -E '^(Preferred|Accepted)'
if ((${#problems[@]})); then
  printf 'tls-scan: %s\n' "${problems[@]}"
  exit 1
fi
echo "tls-scan: clean (TLS 1.2 and 1.3 only, no weak ciphers)"
