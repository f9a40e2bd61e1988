#!/usr/bin/env bash
# Selection holds still: ROUNDS (10) throughput runs of the peer harness (PEERS_DIR,
# throughput.sh) through Jumping, each on a fresh tunnel whose client has both identical
# paths (A and B, the harness's two veth pairs) as candidates, and counts the
# TRANSPORT_SWITCH events of both ends in each run's event streams. The goal is 0: no switch
# between identical paths under bulk traffic (docs/benchmarks.md, "Latency").
#   PEERS_DIR=... bash tests/bench/run-hold-still.sh [results.jsonl]
# Env: ROUNDS (10); REVERSE, PARALLEL, DURATION (10) as in the harness. Prints one JSON line
# per run (Gbit/s, switches at each end, their details) and a summary line; exits 1 if any
# run switched or lost its events.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ -z ${PEERS_DIR:-} || ! -d $PEERS_DIR ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory; see docs/benchmarks.md" >&2
  exit 2
fi
peers=$(cd "$PEERS_DIR" && pwd)
out=${1:-/tmp/jumping-hold-still.jsonl}
touch "$out"
first=$(($(wc -l <"$out") + 1))
for ((round = 1; round <= ${ROUNDS:-10}; round++)); do
  tp=$(mktemp)
  (cd "$peers" && SKIP_RAW=1 RUNS=1 VPN=jumping VPN_ADAPTER="$here/vpn-jumping.sh" \
    ./throughput.sh "$tp.jsonl" >/dev/null 2>"$tp.log") || {
    echo "round $round: throughput.sh failed:" >&2
    tail -n 5 "$tp.log" >&2
    exit 1
  }
  run_dir=$(find /tmp -maxdepth 1 -name 'wg-baseline.throughput.*' -newer "$tp" | sort | tail -n 1)
  [[ -n $run_dir ]] || { echo "round $round: no run directory" >&2; exit 1; }
  python3 - "$run_dir" "$tp.jsonl" "$round" >>"$out" <<'PY'
import json, sys
d, res, rnd = sys.argv[1], sys.argv[2], int(sys.argv[3])
gbps = [json.loads(l).get("gbps") for l in open(res) if '"tunnel' in l and '"summary"' not in l]
out = {"bench": "hold_still", "round": rnd, "gbps": gbps[0] if gbps else None}
for end in ("client", "gateway"):
    try:
        evs = [json.loads(l) for l in open(f"{d}/jumping-{end}-events.jsonl") if l.strip()]
    except OSError:
        evs = None
    if evs is None or not evs:
        out[end + "_events"] = 0
        out[end + "_switches"] = None
        continue
    sw = [e for e in evs if e.get("event_type") == "TRANSPORT_SWITCH"]
    out[end + "_events"] = len(evs)
    out[end + "_switches"] = len(sw)
    out[end + "_switch_details"] = [[e.get("old_transport_id"), e.get("new_transport_id")] for e in sw]
    out[end + "_forced_recoveries"] = sum(e.get("reason_code") == "POLICY_FORCED_RECOVERY" for e in evs)
print(json.dumps(out))
PY
  tail -n 1 "$out"
  rm -f "$tp" "$tp.jsonl" "$tp.log"
done
tail -n +"$first" "$out" | python3 -c '
import json, sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
bad = [r["round"] for r in rs if r["client_switches"] is None or r["gateway_switches"] is None]
sw = sum((r["client_switches"] or 0) + (r["gateway_switches"] or 0) for r in rs)
print(json.dumps({"bench": "hold_still_summary", "runs": len(rs), "switches": sw,
                  "runs_without_events": bad}))
sys.exit(1 if sw or bad else 0)'
