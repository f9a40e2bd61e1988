#!/usr/bin/env bash
# Failover time after UDP to the Jumping port is blocked (nftables drop of udp/51820 in the
# client's and the gateway's namespace, both directions) while probes flow through the tunnel
# every 2 ms: once to a QUIC path (client endpoints udp + quic) and once to a TCP path
# (udp + tcp), alternating, in the peer harness topology (its lib.sh and benchtool.py).
#   PEERS_DIR=... bash plugins/jumping-quic/bench/failover.sh [results.jsonl]
# Env: REPS (20 per case), CASES ("quic tcp"), PRE (2 s of probes before), POST (1 s after
# recovery), CAP (15 s without recovery = failed), JUMPING_ENDPOINTS (all: the client lists
# both gateway addresses of the topology, so a UDP candidate via path B exists, also blocked;
# one: only path A's address, so the only candidates are udp and the other transport).
# Per run: up_outage_ms / rt_outage_ms (largest gap in send time between probes delivered
# upstream / round trip, as the harness's roam.sh computes it) and the transport kind the
# client ended on; then p50/p99 per case.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
if [[ -z ${PEERS_DIR:-} || ! -d $PEERS_DIR ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory (docs/benchmarks.md)" >&2
  exit 2
fi
OUT=${1:-/tmp/jumping-quic-failover.jsonl}
REPS=${REPS:-20}
CASES=${CASES:-"quic tcp"}
INTERVAL=0.002
PRE=${PRE:-2}
POST=${POST:-1}
CAP=${CAP:-15}
PPORT=9000
VPN=jumping
VPN_ADAPTER=$root/tests/bench/vpn-jumping.sh
cd "$PEERS_DIR"
# shellcheck source=/dev/null
source ./lib.sh
need_root
need_cmds ip nft
load_vpn
install_trap
new_run failover-udp-blocked

block_udp() {  # drop the Jumping UDP port both ways in both namespaces
  local ns
  for ns in $NS_C $NS_G; do
    nsx "$ns" nft -f - <<R
table inet jqblock {
 chain o { type filter hook output priority 0; policy accept; udp dport $VPN_PORT drop; udp sport $VPN_PORT drop; }
 chain i { type filter hook input priority 0; policy accept; udp dport $VPN_PORT drop; udp sport $VPN_PORT drop; }
}
R
  done
}

one() {  # one CASE REP
  local case=$1 rep=$2 d ev0 ev1 c_ev c t_rec= SND ECH
  d="$RUN_DIR/$case-$rep"
  mkdir -p "$d"
  topo_up
  JUMPING_TRANSPORTS="udp $case" RUN_DIR=$d vpn_up "$A_G"
  bg_ns $NS_G "$d/echo.log" "${TOOL[@]}" echo --bind "$IN_G" --port $PPORT --log "$d/echo.json" \
    --progress "$d/echo.progress"; ECH=$LAST_PID
  wait_for_line "$d/echo.log" '^ready' 5 || die "echo did not start"
  tunnel_wait "$IN_G" $PPORT 5 || die "tunnel does not pass traffic"
  sleep 1.5  # the second path answers probes: a validated candidate
  local dur; dur=$(awk -v a="$PRE" -v b="$CAP" -v c="$POST" 'BEGIN{print a+b+c+0.5}')
  bg_ns $NS_C "$d/send.log" "${TOOL[@]}" send --dst "$IN_G" --port $PPORT --interval $INTERVAL \
    --duration "$dur" --linger 0.5 --log "$d/send.json"; SND=$LAST_PID
  wait_for_line "$d/send.log" '^ready' 5 || die "sender did not start"
  sleep "$PRE"
  ev0=$(now); block_udp; ev1=$(now)
  sleep 0.1
  read -r c_ev _ <"$d/echo.progress"
  while :; do
    sleep 0.05
    read -r c _ <"$d/echo.progress" || continue
    if [[ -z $t_rec ]] && ((c - c_ev >= 20)); then t_rec=$(now); fi
    if [[ -n $t_rec ]] && awk -v a="$(now)" -v b="$t_rec" -v p="$POST" 'BEGIN{exit !(a-b >= p)}'; then break; fi
    if awk -v a="$(now)" -v b="$ev1" -v p="$CAP" 'BEGIN{exit !(a-b >= p)}'; then break; fi
  done
  stop_pid "$SND"; stop_pid "$ECH"
  echo '{"pkts": []}' >"$d/nosniff.json"
  "${TOOL[@]}" roam-analyze --send "$d/send.json" --echo "$d/echo.json" --sniff-g "$d/nosniff.json" \
    --sniff-c "$d/nosniff.json" --port "$VPN_PORT" --event-start "$ev0" --event-end "$ev1" \
    --window "$CAP" --old-g $IF_GA --new-g $IF_GA --old-c $IF_CA --new-c $IF_CA \
    --scenario "udp-blocked-to-$case" --rep "$rep" --out "$d/roam.jsonl" >/dev/null 2>"$d/analyze.log" || true
  local kind
  kind=$(grep -h '"TRANSPORT_SWITCH"' "$d/jumping-client-events.jsonl" 2>/dev/null | tail -1 |
    python3 -c 'import json,sys; l=sys.stdin.read().strip(); print(json.loads(l)["new_transport_kind"] if l else "none")')
  python3 - "$d/roam.jsonl" "$case" "$rep" "$kind" "$OUT" <<'PY'
import json, os, sys
path, case, rep, kind, out = sys.argv[1:]
try:
    r = json.loads(open(path).read().splitlines()[-1])
except (OSError, IndexError, ValueError):
    r = {}
rec = {"bench": "failover-udp-blocked", "case": case, "endpoints": os.environ.get("JUMPING_ENDPOINTS", "all"), "rep": int(rep), "final_kind": kind,
       "up_outage_ms": r.get("up_outage_ms"), "rt_outage_ms": r.get("rt_outage_ms"),
       "lost_up": r.get("lost_up"), "vpn_version": r.get("vpn_version")}
open(out, "a").write(json.dumps(rec) + "\n")
print(f"  {case} rep {rep}: outage up {rec['up_outage_ms']} ms, rt {rec['rt_outage_ms']} ms, ended on {kind}", file=sys.stderr)
PY
  vpn_down
  topo_down
}

for ((rep = 1; rep <= REPS; rep++)); do
  for case in $CASES; do one "$case" "$rep"; done
done
python3 - "$OUT" "$BENCH_RUN_ID" <<'PY'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else None
res = {}
for case in sorted({(r["case"], r.get("endpoints", "all")) for r in recs}):
    rs = [r for r in recs if (r["case"], r.get("endpoints", "all")) == case]
    case = "%s/%s" % case
    for k in ("up_outage_ms", "rt_outage_ms"):
        v = [r[k] for r in rs if r.get(k) is not None]
        res.setdefault(case, {})[k] = {"p50": pct(v, 50), "p99": pct(v, 99), "max": max(v) if v else None, "n": len(v)}
    res[case]["failed"] = sum(1 for r in rs if r.get("up_outage_ms") is None)
    res[case]["ended_on"] = {k: sum(1 for r in rs if r["final_kind"] == k) for k in {r["final_kind"] for r in rs}}
print(json.dumps(res))
PY
