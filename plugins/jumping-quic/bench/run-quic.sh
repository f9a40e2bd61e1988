#!/usr/bin/env bash
# TCP throughput through the tunnel over the QUIC path and over the UDP path, in one sitting,
# interleaved (each round: Jumping over UDP, over QUIC, then over UDP with the tunnel MTU a
# QUIC path needs, which is what fitting the MTU to the smallest candidate costs UDP), with
# the peer harness (throughput.sh), plus wireguard-go for scale if WG=1.
#   PEERS_DIR=... bash plugins/jumping-quic/bench/run-quic.sh [results.jsonl]
# Env: ROUNDS (5), DURATION (10), PARALLEL, REVERSE as in the harness; QUIC_MTU (1410);
# CASES ("udp quic udp-at-quic-mtu"; also quic-cubic: aioquic's CUBIC instead of Reno).
# Prints one JSON line per case: median Gbit/s (min/max, n), median CPU of both daemons (% of
# one core) and CPU-seconds per Gbit; and the ratios QUIC/UDP and UDP@QUIC_MTU / UDP. Runs
# append to the results file, and the summary covers the whole file: a long sweep can be
# split into several short runs (ROUNDS=2, three times) in one sitting.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
if [[ -z ${PEERS_DIR:-} || ! -d $PEERS_DIR ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory (docs/benchmarks.md)" >&2
  exit 2
fi
out=${1:-/tmp/jumping-quic-throughput.jsonl}
adapter=$root/tests/bench/vpn-jumping.sh
export SKIP_RAW=1 RUNS=1 DURATION=${DURATION:-10}
touch "$out"
run() {  # run CASE ENV...
  local case=$1
  shift
  (cd "$PEERS_DIR" && env "$@" VPN=jumping VPN_ADAPTER="$adapter" ./throughput.sh "$out.tmp" >"$out.log" 2>&1) || true
  grep "tunnel run" "$out.log" | sed "s/^/  $case: /" >&2 || true
  python3 -c '
import json, sys
case = sys.argv[1]
for line in open(sys.argv[2]):
    r = json.loads(line)
    if r.get("bench") == "throughput" and not r.get("summary") and str(r.get("case", "")).startswith("tunnel"):
        r["quic_case"] = case
        print(json.dumps(r))
' "$case" "$out.tmp" >>"$out"
  rm -f "$out.tmp"
}
for ((round = 1; round <= ${ROUNDS:-5}; round++)); do
  echo "round $round" >&2
  [[ ${WG:-0} == 1 ]] && (cd "$PEERS_DIR" && VPN=wireguard-go ./throughput.sh "$out" >/dev/null 2>&1 || true)
  for case in ${CASES:-udp quic udp-at-quic-mtu}; do
    case $case in
      udp) run udp JUMPING_TRANSPORTS=udp JUMPING_MTU=1420 ;;
      quic) run quic JUMPING_TRANSPORTS=quic ;;
      quic-cubic) run quic-cubic JUMPING_TRANSPORTS=quic JUMPING_QUIC_OPTIONS='congestion_control = "cubic"' ;;
      udp-at-quic-mtu) run udp-at-quic-mtu JUMPING_TRANSPORTS=udp JUMPING_MTU="${QUIC_MTU:-1410}" ;;
      *) echo "run-quic.sh: unknown case $case (udp, quic, quic-cubic, udp-at-quic-mtu)" >&2; exit 2 ;;
    esac
  done
done
python3 -c '
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
res = {}
for case in ("udp", "quic", "quic-cubic", "udp-at-quic-mtu"):
    rs = [r for r in recs if r.get("quic_case") == case and r.get("gbps") is not None]
    if not rs:
        continue
    g = [r["gbps"] for r in rs]
    def med(k):
        v = [r[k] for r in rs if r.get(k) is not None]
        return round(statistics.median(v), 3) if v else None
    res[case] = {"gbps_median": round(statistics.median(g), 3), "gbps_min": round(min(g), 3),
                 "gbps_max": round(max(g), 3), "n": len(g), "cpu_pct": med("vpn_cpu_pct"),
                 "client_cpu_pct": med("vpn_client_cpu_pct"),
                 "gateway_cpu_pct": med("vpn_gateway_cpu_pct"),
                 "cpu_s_per_gbit": med("vpn_cpu_s_per_gbit"), "retransmits": med("retransmits"),
                 "system_busy_pct": med("system_busy_pct")}
wg = [r["gbps"] for r in recs if r.get("vpn") == "wireguard-go" and r.get("gbps")
      and str(r.get("case", "")).startswith("tunnel") and not r.get("summary")]
if wg:
    res["wireguard-go"] = {"gbps_median": round(statistics.median(wg), 3), "n": len(wg)}
u, q, m = res.get("udp"), res.get("quic"), res.get("udp-at-quic-mtu")
if u and q:
    res["quic_over_udp"] = round(q["gbps_median"] / u["gbps_median"], 3)
if u and m:
    res["udp_mtu_cost"] = round(1 - m["gbps_median"] / u["gbps_median"], 3)
print(json.dumps(res))
' "$out"
