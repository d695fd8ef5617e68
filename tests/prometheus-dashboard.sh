#!/usr/bin/env bash
# The Grafana dashboard's queries against a real Prometheus scraping Weir under load
# (tests/prometheus-dashboard.py). Run by .ci/run after `cargo test`; installs Debian's
# `prometheus` package if missing, and builds the debug binary if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
[ -x target/debug/weir ] || cargo build --quiet --bin weir
python3 tests/prometheus-dashboard.py "$@"
