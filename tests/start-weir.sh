# Sourced by the test scripts (tests/tls-scan.sh, tests/http-lint.sh), not run.
#
# start_weir BINARY CONFIG LOG NAME: starts BINARY (empty: build and use target/debug/weir)
# with CONFIG, its stderr to LOG; sets weir_pid, and addr to the first listener's
# host:port as Weir prints it. On failure prints LOG and exits 1, naming the script NAME.
start_weir() {
  local bin=$1 config=$2 log=$3 name=$4
  if [ -z "$bin" ]; then
    cargo build --quiet --bin weir
    bin=target/debug/weir
  fi
  "$bin" run -c "$config" 2>"$log" &
  weir_pid=$!
  for _ in $(seq 1 100); do
    grep -q 'listening on' "$log" && break
    sleep 0.1
  done
  addr=$(sed -n 's/^.* INFO listening on https\{0,1\}:\/\/\([^ ]*\) .*/\1/p' "$log" | head -n 1)
  [ -n "$addr" ] || { cat "$log"; echo "$name: weir did not start"; exit 1; }
}
