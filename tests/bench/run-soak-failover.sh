#!/usr/bin/env bash
# No false failovers: Jumping on the peer harness topology (PEERS_DIR, docs/benchmarks.md)
# with both paths up for DURATION (600) s of mixed traffic: full-rate iperf3 bursts (BURST_MIN
# .. BURST_MAX s, 5..20, alternately up and down) separated by idle gaps (GAP_MIN .. GAP_MAX s,
# 30..45), and a ping through the tunnel every 0.2 s all along. Path A is never touched, so
# every TRANSPORT_SWITCH (either end) is a false failover.
#   PEERS_DIR=... bash tests/bench/run-soak-failover.sh [results.jsonl]
# Prints one JSON line: switches, state changes by reason, bursts, Gbit/s, ping loss/RTT.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ -z ${PEERS_DIR:-} || ! -d $PEERS_DIR ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory; see docs/benchmarks.md" >&2
  exit 2
fi
out=${1:-/tmp/jumping-soak-failover.jsonl}
# shellcheck disable=SC1091
source "$PEERS_DIR/lib.sh"
VPN=jumping VPN_ADAPTER=$here/vpn-jumping.sh
need_root
load_vpn
install_trap
new_run soak-failover
topo_up
vpn_up "$A_G"
for ((i = 0; i < 50; i++)); do nsx $NS_C ping -c1 -W0.2 -q "$S_ADDR" >/dev/null 2>&1 && break; sleep 0.1; done
bg_ns $NS_S "$RUN_DIR/iperf3-server.log" iperf3 -s -B "$S_ADDR" -p 5201
wait_listen $NS_S 5201 5 || die "iperf3 server did not start"
duration=${DURATION:-600}
bg_ns $NS_C "$RUN_DIR/ping.txt" ping -n -D -i 0.2 -w "$duration" "$S_ADDR"
PING_PID=$LAST_PID
start=$(date +%s)
bursts=0
RANDOM=${SEED:-16}
while :; do
  left=$((start + duration - $(date +%s)))
  ((left > 2)) || break
  t=$((${BURST_MIN:-5} + RANDOM % (${BURST_MAX:-20} - ${BURST_MIN:-5} + 1)))
  ((t < left)) || t=$((left - 1))
  rev=()
  bursts=$((bursts + 1))
  ((bursts % 2)) || rev=(-R)  # odd bursts upstream (client -> server), even ones downstream
  log "burst $bursts: ${t}s ${rev[*]:-up}, $left s left"
  nsx $NS_C iperf3 -c "$S_ADDR" -p 5201 -t "$t" -J "${rev[@]}" >"$RUN_DIR/burst-$bursts.json" 2>&1 || true
  left=$((start + duration - $(date +%s)))
  gap=$((${GAP_MIN:-30} + RANDOM % (${GAP_MAX:-45} - ${GAP_MIN:-30} + 1)))
  ((gap < left)) || gap=$left
  ((gap > 0)) && sleep "$gap"
done
wait_pid "$PING_PID" 10 || true
"$PY" - "$RUN_DIR" "$VPN_VERSION" "$duration" "$bursts" >>"$out" <<'PY'
import glob, json, re, statistics, sys, collections
d, version, duration, bursts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ev = {side: [json.loads(l) for l in open(f"{d}/jumping-{side}-events.jsonl") if l.strip()]
      for side in ("client", "gateway")}
switches = {s: [e for e in ev[s] if e["event_type"] == "TRANSPORT_SWITCH"] for s in ev}
reasons = {s: dict(collections.Counter(e["reason_code"] for e in ev[s]
                   if e["event_type"] == "SESSION_STATE_CHANGE")) for s in ev}
gbps = []
for f in sorted(glob.glob(f"{d}/burst-*.json")):
    try:
        gbps.append(json.load(open(f))["end"]["sum_received"]["bits_per_second"] / 1e9)
    except Exception:
        pass
ping = open(f"{d}/ping.txt").read()
rtts = sorted(float(x) for x in re.findall(r"time=([0-9.]+) ms", ping))
m = re.search(r"(\d+) packets transmitted, (\d+) received", ping)
sent, got = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
print(json.dumps({
    "bench": "soak_failover", "vpn_version": version, "duration_s": duration, "bursts": bursts,
    "false_failovers": sum(len(v) for v in switches.values()),
    "switches": {s: [(e["ts_ms"], e.get("old_transport_id"), e.get("new_transport_id")) for e in v]
                 for s, v in switches.items()},
    "state_changes": reasons, "burst_gbps_median": round(statistics.median(gbps), 3) if gbps else None,
    "ping_sent": sent, "ping_lost": sent - got,
    "ping_rtt_ms_median": statistics.median(rtts) if rtts else None,
    "ping_rtt_ms_max": rtts[-1] if rtts else None, "raw": d}))
PY
tail -n 1 "$out"
