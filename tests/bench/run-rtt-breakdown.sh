#!/usr/bin/env bash
# Where an idle ping's round trip goes, per hop, for one VPN on the peer harness topology
# (PEERS_DIR): tcpdump with nanosecond timestamps on the client's TUN and path-A veth (jc)
# and on the gateway's path-A veth and TUN (jg) while COUNT (50) pings go to the gateway's
# inner address every 0.2 s. Prints the median of: client TUN -> wire, gateway wire -> TUN,
# gateway TUN (reply) -> wire, client wire -> TUN, and the whole RTT at the client's TUN.
#   PEERS_DIR=... VPN=jumping|wireguard-go [WG_BIN=...] bash tests/bench/run-rtt-breakdown.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ -n ${PEERS_DIR:-} && -d $PEERS_DIR ]] || { echo "set PEERS_DIR" >&2; exit 2; }
# shellcheck disable=SC1091
source "$PEERS_DIR/lib.sh"
VPN=${VPN:-jumping}
[[ $VPN == jumping ]] && VPN_ADAPTER=$here/vpn-jumping.sh
need_root
load_vpn
install_trap
new_run rtt-breakdown
topo_up
vpn_up "$A_G"
if [[ $VPN == jumping ]]; then ctun=jbc0 gtun=jbg0; else ctun=wgbc0 gtun=wgbg0; fi
for ((i = 0; i < 50; i++)); do nsx $NS_C ping -c1 -W0.2 -q "$IN_G" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 3
for spec in "$NS_C $ctun icmp" "$NS_C $IF_CA udp" "$NS_G $IF_GA udp" "$NS_G $gtun icmp"; do
  read -r ns ifc proto <<<"$spec"
  bg_ns "$ns" "$RUN_DIR/cap-$ifc.txt" tcpdump -i "$ifc" -n -l -tt --time-stamp-precision=nano "$proto"
done
sleep 1
nsx $NS_C ping -n -c "${COUNT:-50}" -i 0.2 -s 56 "$IN_G" >"$RUN_DIR/ping.txt"
sleep 0.5
"$PY" - "$RUN_DIR" "$ctun" "$gtun" "$VPN" <<'PY'
import re, statistics, sys
d, ctun, gtun, vpn = sys.argv[1:]
def times(name, pat):
    out = []
    for line in open(f"{d}/cap-{name}.txt"):
        if re.search(pat, line):
            out.append(float(line.split()[0]))
    return out
creq, crep = times(ctun, "echo request"), times(ctun, "echo reply")
greq, grep_ = times(gtun, "echo request"), times(gtun, "echo reply")
ca_out = times("ca", r"10\.201\.1\.1\.\d+ > 10\.201\.1\.2")
ca_in = times("ca", r"10\.201\.1\.2\.\d+ > 10\.201\.1\.1")
ga_in = times("ga", r"10\.201\.1\.1\.\d+ > 10\.201\.1\.2")
ga_out = times("ga", r"10\.201\.1\.2\.\d+ > 10\.201\.1\.1")
def after(t, seq, lim=0.05):
    c = [x for x in seq if t <= x <= t + lim]
    return c[0] if c else None
rows = {k: [] for k in ("client_tun_to_wire", "gateway_wire_to_tun", "gateway_tun_to_wire",
                        "client_wire_to_tun", "rtt_at_client_tun")}
for t in creq:
    a = after(t, ca_out); b = after(a, ga_in) if a else None; c = after(b, greq) if b else None
    r = after(c, grep_) if c else None; e = after(r, ga_out) if r else None
    f = after(e, ca_in) if e else None; g = after(f, crep) if f else None
    if None in (a, b, c, r, e, f, g):
        continue
    rows["client_tun_to_wire"].append(a - t); rows["gateway_wire_to_tun"].append(c - b)
    rows["gateway_tun_to_wire"].append(e - r); rows["client_wire_to_tun"].append(g - f)
    rows["rtt_at_client_tun"].append(g - t)
import json
print(json.dumps({"bench": "rtt_breakdown", "vpn": vpn, "n": len(rows["rtt_at_client_tun"]),
                  **{k + "_us": round(statistics.median(v) * 1e6, 1) if v else None
                     for k, v in rows.items()}}))
PY
