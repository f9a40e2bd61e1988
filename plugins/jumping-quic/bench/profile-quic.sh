#!/usr/bin/env bash
# Where the QUIC path's time goes: py-spy samples both daemons while iperf3 runs through a
# QUIC-only tunnel in the peer harness topology; prints the top functions by own time and
# the share per package (aioquic, jumping core, twisted, ...), per daemon.
#   PEERS_DIR=... bash plugins/jumping-quic/bench/profile-quic.sh [OUTDIR]
# Env: DURATION (15 s of iperf3; sampling runs 8 s in the middle), JUMPING_TRANSPORTS (quic).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
[[ -n ${PEERS_DIR:-} && -d $PEERS_DIR ]] || { echo "set PEERS_DIR to the peer harness directory" >&2; exit 2; }
command -v py-spy >/dev/null || { echo "py-spy is needed (pip install py-spy)" >&2; exit 2; }
out=${1:-/tmp/jumping-quic-profile}
mkdir -p "$out"
export JUMPING_TRANSPORTS=${JUMPING_TRANSPORTS:-quic} SKIP_RAW=1 RUNS=1 DURATION=${DURATION:-15}
(cd "$PEERS_DIR" && VPN=jumping VPN_ADAPTER="$root/tests/bench/vpn-jumping.sh" \
  ./throughput.sh "$out/throughput.jsonl" >"$out/throughput.log" 2>&1) &
bench=$!
pids=()
for _ in $(seq 100); do
  c=$(pgrep -f "jumping client --config /tmp/jumping-bench" | head -1 || true)
  g=$(pgrep -f "jumping gateway --config /tmp/jumping-bench" | head -1 || true)
  [[ -n $c && -n $g ]] && break
  sleep 0.2
done
sleep 4
echo "client pid $c gateway pid $g" >"$out/py-spy.log"
py-spy record --nonblocking -r 200 -d 8 -f raw -o "$out/client.txt" -p "$c" >>"$out/py-spy.log" 2>&1 &
pids+=($!)
py-spy record --nonblocking -r 200 -d 8 -f raw -o "$out/gateway.txt" -p "$g" >>"$out/py-spy.log" 2>&1 &
pids+=($!)
wait "${pids[@]}" || true
wait "$bench" || true
grep -E "tunnel run" "$out/throughput.log" || true
python3 "$here/summarize-profile.py" "$out/client.txt" "$out/gateway.txt"
