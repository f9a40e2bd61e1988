#!/usr/bin/env bash
# Throughput of Jumping beside wireguard-go, in one run of the peer harness.
#   bash tests/bench/run-throughput.sh [results.jsonl]     (RUNS, DURATION, ... as in the harness)
# Prints the ratio jumping / wireguard-go of the median tunnel Gbit/s and the CPU figures.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The peer harness (throughput.sh, roam.sh, wireguard-go) is not part of this repository.
if [[ -z ${PEERS_DIR:-} || ! -d $PEERS_DIR ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory (with throughput.sh and roam.sh); see docs/benchmarks.md" >&2
  exit 2
fi
peers=$(cd "$PEERS_DIR" && pwd)
out=${1:-/tmp/jumping-throughput.jsonl}
export SKIP_RAW=${SKIP_RAW:-1}
(cd "$peers" && VPN=wireguard-go ./throughput.sh "$out")
(cd "$peers" && VPN=jumping VPN_ADAPTER="$here/vpn-jumping.sh" ./throughput.sh "$out")
python3 - "$out" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
runs = {}
for r in recs:
    if r.get("summary") and r.get("bench") == "throughput" and str(r.get("case", "")).startswith("tunnel"):
        runs.setdefault(r["run_id"], {})[(r["vpn"], r["figure"])] = r["median"]
last = {}
for rid, figs in runs.items():
    for (vpn, fig), v in figs.items():
        last[(vpn, fig)] = v
wg, jp = last.get(("wireguard-go", "gbps")), last.get(("jumping", "gbps"))
print(json.dumps({"wireguard_go_gbps": wg, "jumping_gbps": jp,
                  "ratio": round(jp / wg, 3) if wg and jp else None,
                  "wireguard_go_cpu_pct": last.get(("wireguard-go", "vpn_cpu_pct")),
                  "jumping_cpu_pct": last.get(("jumping", "vpn_cpu_pct"))}))
PY
