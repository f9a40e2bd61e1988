#!/usr/bin/env bash
# abuse-matrix.sh - wire-abuse scenarios against a running twistd gateway and against
# wireguard-go, side by side in one run (docs/benchmarks.md, "Wire abuse").
#
#   PEERS_DIR=/path/to/peers WG_BIN=/path/to/wireguard-go \
#     bash tests/bench/abuse/abuse-matrix.sh [results.jsonl]
#
# Per VPN and scenario: a fresh tunnel (the peer harness's jc/jg/js topology and adapters),
# a ping stream through it (every 5 ms, optionally iperf3 too), then two phases of the same
# generator at the same rate: "base" into a blackhole namespace (the generator's own CPU is
# in both figures), "atk" into the gateway's veth. Per phase: packets actually delivered at
# the veth (a scenario that delivered < 90 % of its nominal rate is reported as "not run"),
# ping loss / p50 / p99 / max RTT, the gateway's RSS (sampled every 0.25 s) and CPU, its UDP
# receive-buffer drops; for Jumping also the SECURITY_EVENTs (with counts), the drop
# counters (metrics), session state changes. One JSON line per VPN x scenario is appended to
# the results file, and a markdown table of the run is printed (report.py).
#
# Env: VPNS ("wireguard-go jumping"), SCENARIOS (all six, see frames.py), RATE (20000 pkt/s),
# DURATION (10 s of flood), IPERF (0; 1 = iperf3 TCP jc -> js during each phase),
# SETTLE_S (11: seconds after the flood before the final RSS / metrics / events are read;
# Jumping aggregates SECURITY_EVENTs over 10 s; SETTLE_S_WG, 3, for wireguard-go), WG_BIN (wireguard-go binary), PEERS_DIR,
# NEW_CLIENT (1: a second, legitimate client starts NEW_CLIENT_AT s (3) into each flood, from
# a namespace of its own; its handshake messages are captured on its veth and the report
# gives the time from its first initiation to the handshake response, new_client_*; 0: off.
# It starts the same way in the baseline phase too, its capture kept apart (base.hs.jsonl), so
# its start-up CPU and handshake are in both figures of "throughput kept", not only the attack's).
# GEN_CPU (unset: the generator runs where the scheduler puts it; a CPU number: it is pinned
# there with taskset, the same for every VPN, so its sending and the kernel's delivery of the
# flood, which runs in its sending context, stay off the other CPUs).
# A VPNS word "jumping@DIR" runs the Jumping checkout in DIR (its adapter and code), e.g. the
# code before a change beside the code after it, in the same sitting.
#
# Namespaces: jc/jg/js (the peer harness: fixed names, so run it under jt-bench, one at a
# time) and two of this script, "jabx<pid>" (attacker) and "jabb<pid>" (blackhole). All
# flood traffic goes from jabx to jg or to jabb over veths that exist only inside these
# namespaces; spoofed sources (198.18.0.0/15) are routed only inside jg, back into jabx,
# where they are dropped. Everything is removed on exit, also on failure or Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
if [[ -z ${PEERS_DIR:-} || ! -f $PEERS_DIR/lib.sh ]]; then
  echo "$(basename "$0"): set PEERS_DIR to the peer harness directory (with lib.sh and vpn-wireguard-go.sh); see docs/benchmarks.md" >&2
  exit 2
fi
PEERS_DIR=$(cd "$PEERS_DIR" && pwd)
# shellcheck source=/dev/null
source "$PEERS_DIR/lib.sh"
need_root
need_cmds gcc ping ip python3 awk
OUT=${1:-/tmp/jumping-abuse.jsonl}
VPNS=${VPNS:-"wireguard-go jumping"}
SCENARIOS=${SCENARIOS:-"junk_100k_sources random_garbage spoofed_handshake_size valid_mac1_init_flood exact_replay bitflip_replay"}
RATE=${RATE:-20000}
DURATION=${DURATION:-10}
IPERF=${IPERF:-0}
SETTLE_S=${SETTLE_S:-11}
if [[ $IPERF == 1 ]]; then need_cmds iperf3; fi
PING_INTERVAL=0.005
METRICS_PORT=9477
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}

NS_X=jabx$$   # attacker: runs the generator
NS_B=jabb$$   # blackhole: receives the baseline flood, drops it
NS_N=jabn$$   # a second, legitimate client that starts during the flood (NEW_CLIENT=1)
NEW_CLIENT=${NEW_CLIENT:-1}
NEW_CLIENT_AT=${NEW_CLIENT_AT:-3}
IF_NG=ng; IF_GN=gn; N_G=10.203.0.1; N_N=10.203.0.2   # jabn:ng <-> jg:gn
IN_N=10.99.0.3                                       # the second client's tunnel address
IF_GX=gx; IF_XG=xg; X_G=10.202.0.1; X_X=10.202.0.2   # jg:gx <-> jabx:xg
IF_XB=xb; IF_BX=bx                                     # jabx:xb <-> jabb:bx (no addresses)
SPOOF_NET=198.18.0.0/15

GEN_PIN=()
if [[ -n ${GEN_CPU:-} ]]; then
  [[ $GEN_CPU =~ ^[0-9]+$ && $GEN_CPU -lt $(nproc) ]] ||
    die "GEN_CPU must be one CPU number below $(nproc), got '$GEN_CPU'"
  need_cmds taskset
  GEN_PIN=(taskset -c "$GEN_CPU")
fi
for s in $SCENARIOS; do
  python3 -c "import sys; sys.path.insert(0, '$here'); import frames; sys.exit('$s' not in frames.SCENARIOS)" ||
    die "unknown scenario $s (see $here/frames.py)"
done

abuse_ns_down() {
  local ns
  for ns in $NS_N $NS_B $NS_X; do ns_exists "$ns" && ip netns del "$ns"; done
  rm -f /var/run/wireguard/wgbn0.sock
  return 0
}

abuse_ns_up() {  # after topo_up: the attacker and the blackhole, wired to jg
  local ns
  CLEANUP_HOOKS+=(abuse_ns_down)
  for ns in $NS_X $NS_B; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    nsx "$ns" sysctl -q -w net.ipv4.ip_forward=0 net.ipv6.conf.all.disable_ipv6=1 \
      net.ipv6.conf.default.disable_ipv6=1 >/dev/null
  done
  ip link add $IF_XG netns "$NS_X" type veth peer name $IF_GX netns $NS_G
  ip link add $IF_XB netns "$NS_X" type veth peer name $IF_BX netns "$NS_B"
  ip -n "$NS_X" addr add $X_X/24 dev $IF_XG
  ip -n $NS_G addr add $X_G/24 dev $IF_GX
  nsx $NS_G sysctl -q -w net.ipv4.conf.$IF_GX.rp_filter=0 >/dev/null
  for l in $IF_XG $IF_XB; do ip -n "$NS_X" link set $l up; done
  ip -n $NS_G link set $IF_GX up
  ip -n "$NS_B" link set $IF_BX up
  # the gateway's answers to spoofed sources go back into the attacker, which drops them
  ip -n $NS_G route add $SPOOF_NET via $X_X dev $IF_GX
  nsx "$NS_X" ping -c1 -W1 -q $X_G >/dev/null || die "attacker link not working"
  if [[ $NEW_CLIENT == 1 ]]; then
    ip netns add "$NS_N"
    ip -n "$NS_N" link set lo up
    nsx "$NS_N" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null
    ip link add $IF_NG netns "$NS_N" type veth peer name $IF_GN netns $NS_G
    ip -n "$NS_N" addr add $N_N/24 dev $IF_NG
    ip -n $NS_G addr add $N_G/24 dev $IF_GN
    nsx $NS_G sysctl -q -w net.ipv4.conf.$IF_GN.rp_filter=0 >/dev/null
    ip -n "$NS_N" link set $IF_NG up
    ip -n $NS_G link set $IF_GN up
    nsx "$NS_N" ping -c1 -W1 -q $N_G >/dev/null || die "new client link not working"
    NEW_DIR=$(mktemp -d /tmp/jumping-abuse-newc.XXXXXX)
    CLEANUP_HOOKS+=(new_rm_dir)
    (umask 077
     PYTHONPATH=$repo python3 -m jumping.cli keygen --out "$NEW_DIR/n.key" >/dev/null
     wg genkey >"$NEW_DIR/wg.key" 2>/dev/null && wg pubkey <"$NEW_DIR/wg.key" >"$NEW_DIR/wg.pub" || true)
  fi
}
new_rm_dir() { [[ -n ${NEW_DIR:-} ]] && rm -rf "$NEW_DIR"; NEW_DIR=; }

# new_client_start GW_PUB PHASE : the second client, NEW_CLIENT_AT s from now (sets NEW_PID);
# its handshake messages are captured on its veth (NEW_CAP_PID) into $SC_DIR/hs.jsonl in the
# atk phase (what report.py reads), into $SC_DIR/PHASE.hs.jsonl otherwise
new_client_start() {
  local gw_pub=$1 hs=$SC_DIR/hs.jsonl
  [[ $2 == atk ]] || hs=$SC_DIR/$2.hs.jsonl
  bg_ns "$NS_N" "$SC_DIR/$2.hs.capture.log" python3 "$here/capture.py" handshakes --if $IF_NG \
    --port "$VPN_PORT" --duration $((DURATION + 8)) --out "$hs"
  NEW_CAP_PID=$LAST_PID
  if [[ $VPN == jumping ]]; then
    cat >"$NEW_DIR/n.toml" <<T
[node]
role = "client"
node_id = "bench-newclient"
private_key = "n.key"
[tun]
name = "jbn0"
address = "$IN_N/$IN_PREFIX"
[gateway]
public_key = "$gw_pub"
[[gateway.endpoints]]
transport = "udp"
host = "$N_G"
port = $VPN_PORT
[[events]]
sink = "jsonl"
path = "$SC_DIR/jumping-newclient-$2-events.jsonl"
T
    bg_ns "$NS_N" "$SC_DIR/jumping-newclient-$2.log" sh -c "sleep $NEW_CLIENT_AT; exec env PYTHONPATH='$J_PYTHONPATH' '$(j_twistd)' -n --pidfile= --logfile=- jumping client --config '$NEW_DIR/n.toml'"
  else
    # wireguard-go initiates on the first packet: a ping through the new tunnel
    bg_ns "$NS_N" "$SC_DIR/wg-newclient-$2.log" sh -c "sleep $NEW_CLIENT_AT
      ( for i in \$(seq 500); do [ -S /var/run/wireguard/wgbn0.sock ] && break; sleep 0.002; done
        wg set wgbn0 private-key '$NEW_DIR/wg.key' peer '$gw_pub' endpoint '$N_G:$VPN_PORT' allowed-ips '$IN_NET'
        ip addr add '$IN_N/$IN_PREFIX' dev wgbn0; ip link set wgbn0 up
        ping -n -c 20 -i 0.05 -W 1 '$IN_G' ) >'$SC_DIR/wg-newclient-$2-ping.log' 2>&1 &
      exec env LOG_LEVEL=error WG_PROCESS_FOREGROUND=1 '$WG_BIN' -f wgbn0"
  fi
  NEW_PID=$LAST_PID
}
new_client_stop() {
  stop_pid "${NEW_PID:-}"
  stop_pid "${NEW_CAP_PID:-}"
  rm -f /var/run/wireguard/wgbn0.sock
  NEW_PID=; NEW_CAP_PID=
}

mac_of() { ip -n "$1" -o link show "$2" | grep -o 'link/ether [0-9a-f:]*' | awk '{print $2}'; }
sysnet() { nsx "$1" cat "/sys/class/net/$2/statistics/$3"; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

rss_sampler() {  # rss_sampler PID OUTFILE : "t rss_kib" every 0.25 s until killed
  local pid=$1 out=$2
  while pid_alive "$pid"; do echo "$(date +%s.%N) $(rss_kib "$pid")" >>"$out"; sleep 0.25; done
}

metrics_scrape() {  # metrics_scrape OUTFILE (Jumping only)
  nsx $NS_G python3 -c "import sys, urllib.request
sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$METRICS_PORT/metrics', timeout=5).read().decode())" \
    >"$1" 2>/dev/null || log "metrics scrape failed ($1)"
}

counters() {  # counters PHASE SUFFIX GW_PID
  local f=$SC_DIR/$1.counters s=$2 pid=$3
  {
    echo "wall$s $(now)"
    echo "gx_rx$s $(sysnet $NS_G $IF_GX rx_packets)"
    echo "gx_tx$s $(sysnet $NS_G $IF_GX tx_packets)"
    echo "bx_rx$s $(sysnet "$NS_B" $IF_BX rx_packets)"
    echo "rcvbuf$s $(ns_drops $NS_G | awk '{print $1}')"
    echo "cpu$s $(cpu_ticks "$pid")"
    if [[ $s == 0 ]]; then echo "rss0 $(rss_kib "$pid")"; fi
  } >>"$f"
}

# phase NAME TARGET_IF TARGET_MAC: ping (and iperf3) through the tunnel around one run of
# the generator; the RSS sampler runs on through SETTLE_S (atk only).
phase() {
  local name=$1 ifc=$2 mac=$3 gw=${VPN_PIDS[1]} ping_pid iperf_pid="" rss_pid settle=$SETTLE_S
  [[ $VPN == jumping ]] || settle=${SETTLE_S_WG:-3}
  : >"$SC_DIR/$name.rss"
  rss_sampler "$gw" "$SC_DIR/$name.rss" & rss_pid=$!; BG_PIDS+=("$rss_pid")
  # -D: a receive timestamp on every line, -O: a line for every unanswered request, so that
  # report.py takes exactly the requests sent while the generator ran
  bg_ns $NS_C "$SC_DIR/$name.ping" ping -n -D -O -i $PING_INTERVAL -w $((DURATION + 2)) "$IN_G"
  ping_pid=$LAST_PID
  if [[ $IPERF == 1 ]]; then
    bg_ns $NS_C "$SC_DIR/$name.iperf.json" iperf3 -c "$S_ADDR" -t "$DURATION" -J; iperf_pid=$LAST_PID
  fi
  sleep 0.5
  if [[ $NEW_CLIENT == 1 ]]; then new_client_start "$GW_PUB" "$name"; fi
  counters "$name" 0 "$gw"
  fg_ns "$NS_X" "$SC_DIR/$name.gen.json" "${GEN_PIN[@]}" "$SC_DIR/flood" -i "$ifc" -m "$mac" \
    -f "$SC_DIR/frames" -r "$RATE" -d "$DURATION" -x $$ $GEN_ARGS || log "generator failed: $(cat "$SC_DIR/$name.gen.json")"
  counters "$name" 1 "$gw"
  if [[ $NEW_CLIENT == 1 ]]; then new_client_stop; fi
  wait_pid "$ping_pid" 4
  if [[ -n $iperf_pid ]]; then wait_pid "$iperf_pid" 5; fi
  if [[ $name == atk ]]; then sleep "$settle"; fi
  stop_pid "$rss_pid"
  echo "rss_end $(rss_kib "$gw")" >>"$SC_DIR/$name.counters"
}

run_scenario() {  # run_scenario VPN SCENARIO LABEL
  local vpn=$1 sc=$2 label=$3 gw_pub repl=""
  SC_DIR=$RUN_DIR/$label-$sc
  mkdir -p "$SC_DIR"
  local run_dir_saved=$RUN_DIR
  RUN_DIR=$SC_DIR            # the adapters write their logs and events there
  vpn_up "$A_G"
  RUN_DIR=$run_dir_saved
  nsx $NS_C ping -c 50 -i 0.02 -W 1 -q "$IN_G" >/dev/null 2>&1 || true   # tunnel warm
  nsx $NS_C ping -c 3 -W 2 -q "$IN_G" >/dev/null || die "$vpn: tunnel does not answer ping"
  if [[ $vpn == jumping ]]; then gw_pub=$(cat "$J_DIR/g.pub"); else gw_pub=$(cat "$WG_KEYDIR/g.pub"); fi
  GW_PUB=$gw_pub
  if [[ $NEW_CLIENT == 1 && $vpn != jumping ]]; then
    nsx $NS_G wg set $WG_GIF peer "$(cat "$NEW_DIR/wg.pub")" allowed-ips "$IN_N/32"
  fi
  if [[ $sc == exact_replay || $sc == bitflip_replay ]]; then
    # sealed packets of the live session, as they arrive at the gateway on path A
    bg_ns $NS_C /dev/null ping -n -i 0.002 -c 2500 -s 200 "$IN_G"
    local pp=$LAST_PID
    fg_ns $NS_G "$SC_DIR/capture.json" python3 "$here/capture.py" replay --if "$IF_GA" \
      --port "$VPN_PORT" --count 2048 --timeout 6 --out "$SC_DIR/replay.frames" ||
      die "capture failed: $(cat "$SC_DIR/capture.json")"
    stop_pid "$pp"
    repl="--capture $SC_DIR/replay.frames"
  fi
  # shellcheck disable=SC2086
  GEN_ARGS=$(python3 "$here/frames.py" --scenario "$sc" --vpn "$vpn" --gw-pub "$gw_pub" \
    --gw "$X_G:$VPN_PORT" --out "$SC_DIR/frames" $repl)
  cp "$RUN_DIR/flood" "$SC_DIR/flood"
  if [[ $vpn == jumping ]]; then metrics_scrape "$SC_DIR/metrics0.txt"
  else nsx $NS_G wg show $WG_GIF latest-handshakes >"$SC_DIR/wg-hs0.txt"; fi
  log "$vpn $sc: baseline (into the blackhole) ${DURATION}s at $RATE pkt/s"
  phase base $IF_XB "$MAC_BX"
  log "$vpn $sc: attack (into the gateway) ${DURATION}s at $RATE pkt/s"
  phase atk $IF_XG "$MAC_GX"
  if [[ $vpn == jumping ]]; then metrics_scrape "$SC_DIR/metrics1.txt"
  else nsx $NS_G wg show $WG_GIF latest-handshakes >"$SC_DIR/wg-hs1.txt"; fi
  pid_alive "${VPN_PIDS[1]}" || log "$vpn $sc: THE GATEWAY DIED (see $SC_DIR)"
  vpn_down
  if [[ $vpn == jumping ]]; then j_rm_dir; else wg_rm_keys; fi
  python3 "$here/report.py" run --dir "$SC_DIR" --vpn "$vpn" --vpn-version "$VPN_VERSION" \
    --scenario "$sc" --rate "$RATE" --duration "$DURATION" --iperf "$IPERF" | tee -a "$RUN_OUT" >>"$OUT"
}

install_trap
new_run abuse
RUN_OUT=$RUN_DIR/results.jsonl
: >"$RUN_OUT"
gcc -O2 -Wall -o "$RUN_DIR/flood" "$here/flood.c"
topo_up
abuse_ns_up
MAC_GX=$(mac_of $NS_G $IF_GX)
MAC_BX=$(mac_of "$NS_B" $IF_BX)
if [[ $IPERF == 1 ]]; then bg_ns $NS_S "$RUN_DIR/iperf3-server.log" iperf3 -s; sleep 0.3; fi
export JUMPING_GW_EXTRA="[metrics]
listen = \"127.0.0.1:$METRICS_PORT\""
if [[ $NEW_CLIENT == 1 ]]; then
  JUMPING_GW_EXTRA+="
[[peers]]
public_key = \"$(cat "$NEW_DIR/n.pub")\"
allowed_ips = [\"$IN_N/32\"]"
fi
# interleaved (per scenario: every VPN in turn), so that a drift of the machine hits all alike
for sc in $SCENARIOS; do
  for word in $VPNS; do
    vpn=${word%%@*}
    root=$repo label=$vpn
    if [[ $word == *@* ]]; then
      root=$(cd "${word#*@}" && pwd)
      label=$vpn@$(git -C "$root" rev-parse --short HEAD 2>/dev/null || basename "$root")
    fi
    VPN=$vpn
    VPN_ADAPTER=""
    if [[ $vpn == jumping ]]; then VPN_ADAPTER=$root/tests/bench/vpn-jumping.sh; fi
    VPN_ADAPTER=$VPN_ADAPTER load_vpn
    run_scenario "$vpn" "$sc" "$label"
  done
done
log "results: $OUT (this run: $RUN_OUT)"
python3 "$here/report.py" table "$RUN_OUT"
