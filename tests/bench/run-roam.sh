#!/usr/bin/env bash
# Roaming/failover of Jumping beside wireguard-go, in one run of the peer harness (roam.sh).
#   bash tests/bench/run-roam.sh [results.jsonl]
# Env: WG_REPS (5), J_REPS (20), SCENARIOS ("death addr-del endpoint-live").
# Prints, per VPN and scenario: recovered count, outage and path-gap p50/p99 (ms).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The peer harness (throughput.sh, roam.sh, wireguard-go) is not part of this repository.
if [[ -z ${PEERS_DIR:-} || ! -d $PEERS_DIR ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory (with throughput.sh and roam.sh); see docs/benchmarks.md" >&2
  exit 2
fi
peers=$(cd "$PEERS_DIR" && pwd)
out=${1:-/tmp/jumping-roam.jsonl}
scen=${SCENARIOS:-"death addr-del endpoint-live"}
(cd "$peers" && VPN=wireguard-go REPS=${WG_REPS:-5} SCENARIOS="$scen" ./roam.sh "$out")
(cd "$peers" && VPN=jumping VPN_ADAPTER="$here/vpn-jumping.sh" REPS=${J_REPS:-20} SCENARIOS="$scen" ./roam.sh "$out")
python3 - "$out" <<'PY'
import json, sys
def pct(vals, q):
    vals = sorted(v for v in vals if v is not None)
    if not vals: return None
    k = min(len(vals) - 1, max(0, round(q / 100 * (len(vals) - 1))))
    return round(vals[k], 1)
rows = [json.loads(l) for l in open(sys.argv[1])]
last_run = {}
for r in rows:
    if r.get("bench") == "roam" and not r.get("summary"):
        last_run[r["vpn"]] = r["run_id"]
for vpn, rid in last_run.items():
    reps = [r for r in rows if r.get("run_id") == rid and not r.get("summary") and "scenario" in r]
    for sc in sorted({r["scenario"] for r in reps}):
        rs = [r for r in reps if r["scenario"] == sc]
        print(json.dumps({"vpn": vpn, "scenario": sc, "n": len(rs),
            "recovered": sum(bool(r.get("recovered")) for r in rs),
            "up_outage_p50": pct([r.get("up_outage_ms") for r in rs], 50),
            "up_outage_p99": pct([r.get("up_outage_ms") for r in rs], 99),
            "rt_outage_p50": pct([r.get("rt_outage_ms") for r in rs], 50),
            "rt_outage_p99": pct([r.get("rt_outage_ms") for r in rs], 99),
            "up_path_gap_p50": pct([r.get("up_path_gap_ms") for r in rs], 50),
            "up_path_gap_p99": pct([r.get("up_path_gap_ms") for r in rs], 99),
            "lost_rt_p50": pct([r.get("lost_rt") for r in rs], 50)}))
PY
