#!/usr/bin/env bash
# Throughput of Jumping beside wireguard-go, interleaved, with the peer harness (throughput.sh).
#   PEERS_DIR=... bash tests/bench/run-throughput.sh [results.jsonl]
# Env: ROUNDS (5): rounds of "wireguard-go, then Jumping", each a harness run of RUNS (1)
# iperf3 runs, so that a drift of the machine hits both alike; PARALLEL, REVERSE, LOSS_PCT,
# DURATION, TARGET as in the harness; WG_BIN (the wireguard-go binary to compare with).
# Prints one JSON line: per VPN the median Gbit/s with min/max and n, the median CPU of both
# daemons (% of one core) and CPU-seconds per Gbit, and the ratio of the medians.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# The peer harness (throughput.sh, roam.sh, wireguard-go) is not part of this repository.
if [[ -z ${PEERS_DIR:-} || ! -d $PEERS_DIR ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory (with throughput.sh and roam.sh); see docs/benchmarks.md" >&2
  exit 2
fi
peers=$(cd "$PEERS_DIR" && pwd)
out=${1:-/tmp/jumping-throughput.jsonl}
export SKIP_RAW=${SKIP_RAW:-1} RUNS=${RUNS:-1}
touch "$out"
first=$(($(wc -l <"$out") + 1))
for ((round = 1; round <= ${ROUNDS:-5}; round++)); do
  (cd "$peers" && VPN=wireguard-go ./throughput.sh "$out")
  (cd "$peers" && VPN=jumping VPN_ADAPTER="$here/vpn-jumping.sh" ./throughput.sh "$out")
done
tail -n +"$first" "$out" | python3 -c '
import json, statistics, sys
recs = [json.loads(l) for l in sys.stdin if l.strip()]
runs = [r for r in recs if r.get("bench") == "throughput" and not r.get("summary")
        and str(r.get("case", "")).startswith("tunnel")]
res = {}
for vpn in ("wireguard-go", "jumping"):
    rs = [r for r in runs if r["vpn"] == vpn]
    g = [r["gbps"] for r in rs if r.get("gbps") is not None]
    if not g:
        continue
    def med(k):
        v = [r[k] for r in rs if r.get(k) is not None]
        return round(statistics.median(v), 3) if v else None
    res[vpn] = {"version": rs[0].get("vpn_version"), "gbps_median": round(statistics.median(g), 3),
                "gbps_min": min(g), "gbps_max": max(g), "n": len(g),
                "cpu_pct": med("vpn_cpu_pct"), "cpu_s_per_gbit": med("vpn_cpu_s_per_gbit"),
                "retransmits": med("retransmits")}
    k = rs[0]
    res["case"] = {"direction": k.get("direction"), "parallel": k.get("parallel"),
                   "loss_pct": k.get("loss_pct"), "target": k.get("target")}
wg, jp = res.get("wireguard-go"), res.get("jumping")
if wg and jp:
    res["ratio"] = round(jp["gbps_median"] / wg["gbps_median"], 3)
    res["ratio_range"] = [round(jp["gbps_min"] / wg["gbps_max"], 3), round(jp["gbps_max"] / wg["gbps_min"], 3)]
print(json.dumps(res))
'
