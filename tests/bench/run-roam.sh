#!/usr/bin/env bash
# Roaming/failover of Jumping beside wireguard-go, in one run of the peer harness (roam.sh).
#   bash tests/bench/run-roam.sh [results.jsonl]
# Env: WG_REPS (5; 0 skips wireguard-go), J_REPS (20), SCENARIOS ("death addr-del endpoint-live").
# Prints, per VPN and scenario: recovered count, outage and path-gap p50/p99 (ms). For Jumping,
# after the harness, `jumpctl audit` reads each run's gateway and client event files: per run,
# the probe's rt_outage_ms beside the audit's longest outage felt and the switch's
# detection_ms; per scenario their p50 and max (audit rows go to the results file as
# bench "roam-audit").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# The peer harness (throughput.sh, roam.sh, wireguard-go) is not part of this repository.
if [[ -z ${PEERS_DIR:-} || ! -d $PEERS_DIR ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory (with throughput.sh and roam.sh); see docs/benchmarks.md" >&2
  exit 2
fi
peers=$(cd "$PEERS_DIR" && pwd)
out=${1:-/tmp/jumping-roam.jsonl}
scen=${SCENARIOS:-"death addr-del endpoint-live"}
py=${JUMPING_PYTHON:-python3}
if [[ ${WG_REPS:-5} != 0 ]]; then
  (cd "$peers" && VPN=wireguard-go REPS=${WG_REPS:-5} SCENARIOS="$scen" ./roam.sh "$out")
fi
# The harness names its raw-data directory (one subdirectory SCENARIO-REP per run, where the
# adapter writes jumping-{gateway,client}-events.jsonl) only in its log on stderr.
hlog=$(mktemp /tmp/jumping-roam-log.XXXXXX)
trap 'rm -f "$hlog"' EXIT
{ (cd "$peers" && VPN=jumping VPN_ADAPTER="$here/vpn-jumping.sh" REPS=${J_REPS:-20} SCENARIOS="$scen" \
  ./roam.sh "$out") 2>&1 1>&3 | tee "$hlog" >&2; } 3>&1
raw=$(sed -n 's/.*, raw data in \(.*\)$/\1/p' "$hlog" | tail -n1)
[[ -n $raw && -d $raw ]] || { echo "$(basename "$0"): no raw data directory in the harness log" >&2; exit 1; }
for d in "$raw"/*-*/; do
  d=${d%/}
  files=()
  for f in "$d"/jumping-gateway-events.jsonl "$d"/jumping-client-events.jsonl; do
    [[ -s $f ]] && files+=("$f")
  done
  ((${#files[@]})) || continue
  rc=0
  PYTHONPATH=$root "$py" -m jumping.cli audit --no-timeline "${files[@]}" >"$d/audit.txt" 2>&1 || rc=$?
  echo "$rc" >"$d/audit.rc"
done
"$py" - "$out" "$raw" <<'PY'
import json, os, re, sys
out, raw = sys.argv[1], sys.argv[2]
def pct(vals, q):
    vals = sorted(v for v in vals if v is not None)
    if not vals: return None
    k = min(len(vals) - 1, max(0, round(q / 100 * (len(vals) - 1))))
    return round(vals[k], 1)
def top(vals):
    vals = [v for v in vals if v is not None]
    return round(max(vals), 1) if vals else None
def events(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except OSError:
        return []
rows = [json.loads(l) for l in open(out)]
last_run = {}
for r in rows:
    if r.get("bench") == "roam" and not r.get("summary"):
        last_run[r["vpn"]] = r["run_id"]
audits = []
rid = last_run.get("jumping")
for r in rows:
    if r.get("bench") != "roam" or r.get("run_id") != rid or r.get("summary") or "scenario" not in r:
        continue
    d = os.path.join(raw, f"{r['scenario']}-{r['rep']}")
    try:
        text = open(os.path.join(d, "audit.txt")).read()
        status = int(open(os.path.join(d, "audit.rc")).read())
    except OSError:
        text, status = "", None
    m = re.search(r"outages felt .*: \d+, longest (\d+) ms", text)
    sw = [e for role in ("gateway", "client")
          for e in events(os.path.join(d, f"jumping-{role}-events.jsonl"))
          if e.get("event_type") == "TRANSPORT_SWITCH"]
    det = [e["detection_ms"] for e in sw if isinstance(e.get("detection_ms"), int)]
    a = {"bench": "roam-audit", "run_id": rid, "vpn": "jumping", "scenario": r["scenario"],
         "rep": r["rep"], "rt_outage_ms": r.get("rt_outage_ms"),
         "audit_outage_ms": int(m.group(1)) if m else None, "audit_status": status,
         "switches": len(sw), "detection_ms": max(det) if det else None,
         "events_dir": d}
    audits.append(a)
    print(json.dumps({k: v for k, v in a.items() if k != "bench"}))
with open(out, "a") as f:
    for a in audits:
        f.write(json.dumps(a) + "\n")
for vpn, rid in last_run.items():
    reps = [r for r in rows if r.get("bench") == "roam" and r.get("run_id") == rid
            and not r.get("summary") and "scenario" in r]
    for sc in sorted({r["scenario"] for r in reps}):
        rs = [r for r in reps if r["scenario"] == sc]
        s = {"vpn": vpn, "scenario": sc, "n": len(rs),
            "recovered": sum(bool(r.get("recovered")) for r in rs),
            "up_outage_p50": pct([r.get("up_outage_ms") for r in rs], 50),
            "up_outage_p99": pct([r.get("up_outage_ms") for r in rs], 99),
            "rt_outage_p50": pct([r.get("rt_outage_ms") for r in rs], 50),
            "rt_outage_p99": pct([r.get("rt_outage_ms") for r in rs], 99),
            "rt_outage_max": top([r.get("rt_outage_ms") for r in rs]),
            "up_path_gap_p50": pct([r.get("up_path_gap_ms") for r in rs], 50),
            "up_path_gap_p99": pct([r.get("up_path_gap_ms") for r in rs], 99),
            "lost_rt_p50": pct([r.get("lost_rt") for r in rs], 50)}
        aus = [a for a in audits if a["scenario"] == sc] if vpn == "jumping" else []
        if aus:
            s.update({
                "audit_outage_p50": pct([a["audit_outage_ms"] for a in aus], 50),
                "audit_outage_max": top([a["audit_outage_ms"] for a in aus]),
                "detection_p50": pct([a["detection_ms"] for a in aus], 50),
                "detection_max": top([a["detection_ms"] for a in aus]),
                "audit_ok": sum(a["audit_status"] == 0 for a in aus),
                "audit_missing": sum(a["audit_outage_ms"] is None for a in aus)})
        print(json.dumps(s))
PY
