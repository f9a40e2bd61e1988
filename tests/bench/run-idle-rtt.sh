#!/usr/bin/env bash
# Idle round-trip time through the tunnel, Jumping beside wireguard-go, interleaved rounds in
# one sitting on the peer harness topology (PEERS_DIR, docs/benchmarks.md):
#   PEERS_DIR=... WG_BIN=... bash tests/bench/run-idle-rtt.sh [results.jsonl]
# Env: ROUNDS (3) rounds of "wireguard-go, then Jumping"; COUNT (100) pings per round, one
# every INTERVAL (0.2) s, 56-byte ICMP echo from the client to the gateway's inner address
# (TARGET=js: to the server behind the gateway). Prints one JSON line per round and VPN
# (median/p90/min of the ping RTT, ms) and a summary with the difference of the medians.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ -z ${PEERS_DIR:-} || ! -d $PEERS_DIR ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory; see docs/benchmarks.md" >&2
  exit 2
fi
out=${1:-/tmp/jumping-idle-rtt.jsonl}
touch "$out"
first=$(($(wc -l <"$out") + 1))
for ((round = 1; round <= ${ROUNDS:-3}; round++)); do
  for vpn in wireguard-go jumping; do
    (
      # shellcheck disable=SC1091
      source "$PEERS_DIR/lib.sh"
      VPN=$vpn
      [[ $vpn == jumping ]] && VPN_ADAPTER=$here/vpn-jumping.sh
      need_root
      load_vpn
      install_trap
      new_run idle-rtt
      topo_up
      vpn_up "$A_G"
      dst=$IN_G
      [[ ${TARGET:-jg} == js ]] && dst=$S_ADDR
      for ((i = 0; i < 50; i++)); do nsx $NS_C ping -c1 -W0.2 -q "$dst" >/dev/null 2>&1 && break; sleep 0.1; done
      sleep 3  # past the handshake's own traffic: idle
      nsx $NS_C ping -n -c "${COUNT:-100}" -i "${INTERVAL:-0.2}" "$dst" >"$RUN_DIR/ping.txt"
      "$PY" - "$RUN_DIR/ping.txt" "$vpn" "$VPN_VERSION" "$round" >>"$out" <<'PY'
import json, re, statistics, sys
rtts = [float(m) for m in re.findall(r"time=([0-9.]+) ms", open(sys.argv[1]).read())]
rtts.sort()
q = lambda p: rtts[min(len(rtts) - 1, int(p * len(rtts)))]
print(json.dumps({"bench": "idle_rtt", "vpn": sys.argv[2], "vpn_version": sys.argv[3],
                  "round": int(sys.argv[4]), "n": len(rtts),
                  "rtt_ms_median": round(statistics.median(rtts), 3), "rtt_ms_p90": q(0.9),
                  "rtt_ms_min": rtts[0]}))
PY
      tail -n 1 "$out" >&2
    )
  done
done
tail -n +"$first" "$out" | python3 -c '
import json, statistics, sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
med = {v: statistics.median(r["rtt_ms_median"] for r in rs if r["vpn"] == v)
       for v in ("wireguard-go", "jumping") if any(r["vpn"] == v for r in rs)}
print(json.dumps({"bench": "idle_rtt_summary", "median_of_medians_ms": med,
                  "jumping_minus_wireguard_go_ms": round(med["jumping"] - med["wireguard-go"], 3)
                  if len(med) == 2 else None}))'
