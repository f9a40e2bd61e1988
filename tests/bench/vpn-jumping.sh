# vpn-jumping.sh - adapter for the peer harness ($PEERS_DIR, docs/benchmarks.md): Jumping
# gateway (jg) and client (jc) under twistd. Use from the peers directory:
#   VPN=jumping VPN_ADAPTER=/path/to/repo/tests/bench/vpn-jumping.sh ./throughput.sh out.jsonl
# Our daemons take their whole configuration at start, so vpn_start only makes keys and
# vpn_configure writes the configs and starts both daemons (startup_ms in handshakes.sh
# therefore covers key generation only; configure_ms covers daemon start-up).
# shellcheck shell=bash

JUMPING_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VPN_PORT=${JUMPING_PORT:-51820}
J_CIF=jbc0
J_GIF=jbg0
J_PY=${JUMPING_PYTHON:-python3}
VPN_PIDS=()
J_DIR=
# JUMPING_TRANSPORTS="udp" (default), "quic", "udp quic", "udp tcp"...: the client's endpoints
# (every gateway address, each transport in this order); the gateway listens on each (udp and
# tcp on the Jumping port, quic on JUMPING_QUIC_PORT with a certificate from jumpctl tls-cert,
# pinned by the client). JUMPING_QUIC_OPTIONS adds lines to the quic options of both ends,
# JUMPING_MTU sets [tun] mtu on both (unset: chosen by the node, 1410 with a quic transport).

J_QUIC_PORT=${JUMPING_QUIC_PORT:-443}
J_PYTHONPATH=$JUMPING_ROOT:$JUMPING_ROOT/plugins/jumping-quic

vpn_check() { need_cmds "$J_PY" ip; "$J_PY" -c "import twisted, nacl, cryptography" || die "python deps missing (bash $JUMPING_ROOT/deploy/setup.sh --runtime)"; j_build; }
# The daemons run from the checkout: the data plane's C loops (jumping/core/_dataplane.c) are
# built in place when missing or older than their source (a failed build leaves the
# pure-Python twin; JUMPING_PURE_PYTHON=1 picks it anyway). The version names which ran.
j_build() {
  local so tmp
  local src fresh=1
  for src in jumping/core/_dataplane jumping/service/_fastio; do
    so=$(compgen -G "$JUMPING_ROOT/$src*.so" | head -n1 || true)
    [[ -n $so && ! $JUMPING_ROOT/$src.c -nt $so ]] || fresh=0
  done
  ((fresh)) && return 0
  tmp=$(mktemp -d /tmp/jumping-build.XXXXXX)
  (cd "$JUMPING_ROOT" && "$J_PY" setup.py -q build_ext --inplace --build-temp "$tmp/t" --build-lib "$tmp/l") >"$tmp/log" 2>&1 ||
    echo "vpn-jumping: the C loops did not build (see $tmp/log): pure Python" >&2
  rm -rf "$tmp"
}
vpn_version() {
  local impl
  impl=$(cd "$JUMPING_ROOT" && "$J_PY" -c "import jumping.core.aead as a; print(a.IMPLEMENTATION)" 2>/dev/null || echo "?")
  (cd "$JUMPING_ROOT" && echo "jumping-$(git rev-parse --short HEAD 2>/dev/null || echo src)-$impl")
}

j_twistd() { command -v twistd || echo "$(dirname "$(command -v "$J_PY")")/twistd"; }

vpn_start() {
  [[ -n $J_DIR && -s $J_DIR/c.key ]] && return 0
  J_DIR=$(mktemp -d /tmp/jumping-bench.XXXXXX)
  CLEANUP_HOOKS+=(j_rm_dir)
  PYTHONPATH=$JUMPING_ROOT "$J_PY" -m jumping.cli keygen --out "$J_DIR/c.key" >/dev/null 2>&1
  PYTHONPATH=$JUMPING_ROOT "$J_PY" -m jumping.cli keygen --out "$J_DIR/g.key" >/dev/null 2>&1
  PYTHONPATH=$JUMPING_ROOT "$J_PY" -m jumping.cli tls-cert --out "$J_DIR/gw-tls" --name gw.bench \
    >"$J_DIR/gw-tls.pin" 2>/dev/null
}
j_rm_dir() { [[ -n $J_DIR ]] && rm -rf "$J_DIR"; J_DIR=; }

# Candidates: the endpoint we are told, then every gateway address of the topology (a
# Jumping client is configured with all its gateway's addresses; it picks and jumps itself).
j_endpoints() {
  local ep=$1 seen=" " a addrs=("$1" "$A_G" "$B_G")
  # JUMPING_ENDPOINTS=one: only the endpoint address we are told (one path, several transports)
  [[ ${JUMPING_ENDPOINTS:-all} == one ]] && addrs=("$1")
  for a in "${addrs[@]}"; do
    [[ $seen == *" $a "* ]] && continue
    seen+="$a "
    for t in ${JUMPING_TRANSPORTS:-udp}; do
      if [[ $t == quic ]]; then
        printf '[[gateway.endpoints]]\ntransport = "quic"\nhost = "%s"\nport = %s\n' "$a" "$J_QUIC_PORT"
        printf '[gateway.endpoints.options]\npin_sha256 = "%s"\n%s\n' "$(cat "$J_DIR/gw-tls.pin")" "${JUMPING_QUIC_OPTIONS:-}"
      else
        printf '[[gateway.endpoints]]\ntransport = "%s"\nhost = "%s"\nport = %s\n' "$t" "$a" "$VPN_PORT"
      fi
    done
  done
}

j_listens() {
  local t
  for t in ${JUMPING_TRANSPORTS:-udp}; do
    if [[ $t == quic ]]; then
      printf '[[listen]]\ntransport = "quic"\nhost = "0.0.0.0"\nport = %s\n' "$J_QUIC_PORT"
      printf '[listen.options]\ncertificate_file = "gw-tls.crt"\nprivate_key_file = "gw-tls.key"\n%s\n' "${JUMPING_QUIC_OPTIONS:-}"
    else
      printf '[[listen]]\ntransport = "%s"\nhost = "0.0.0.0"\nport = %s\n' "$t" "$VPN_PORT"
    fi
  done
}

j_mtu() { [[ -n ${JUMPING_MTU:-} ]] && echo "mtu = $JUMPING_MTU"; return 0; }

# JUMPING_POLICY="probe_timeout_multiplier = 2; heartbeat_interval_ms = 250" overrides policy
# values on both daemons (defaults: docs/protocol.md#policy); empty = defaults.
j_policy() {
  [[ -n ${JUMPING_POLICY:-} ]] || return 0
  printf '[policy]\n%s\n' "${JUMPING_POLICY//; /$'\n'}"
}

# JUMPING_GW_EXTRA: TOML appended to the gateway's configuration (e.g. a [metrics] table or
# more [[peers]]); empty = nothing.
j_gw_extra() { [[ -n ${JUMPING_GW_EXTRA:-} ]] && printf '%s\n' "$JUMPING_GW_EXTRA"; return 0; }

vpn_configure() {  # vpn_configure ENDPOINT_IP
  local ep=$1 d=${RUN_DIR:-/tmp} i
  # PATH_B_DOWN=1: path B blackholed before start (a loss test on A with nowhere to jump)
  [[ ${PATH_B_DOWN:-0} == 1 ]] && path_blackhole B
  cat >"$J_DIR/g.toml" <<T
[node]
role = "gateway"
node_id = "bench-gw"
private_key = "g.key"
[tun]
name = "$J_GIF"
address = "$IN_G/$IN_PREFIX"
offload = ${JUMPING_OFFLOAD:-true}
$(j_mtu)
$(j_listens)
[[peers]]
public_key = "$(cat "$J_DIR/c.pub")"
allowed_ips = ["$IN_C/32"]
[[events]]
sink = "jsonl"
path = "$d/jumping-gateway-events.jsonl"
$(j_policy)
$(j_gw_extra)
T
  cat >"$J_DIR/c.toml" <<T
[node]
role = "client"
node_id = "bench-client"
private_key = "c.key"
[tun]
name = "$J_CIF"
address = "$IN_C/$IN_PREFIX"
offload = ${JUMPING_OFFLOAD:-true}
$(j_mtu)
routes = ["$S_NET"]
[gateway]
public_key = "$(cat "$J_DIR/g.pub")"
$(j_endpoints "$ep")
[[events]]
sink = "jsonl"
path = "$d/jumping-client-events.jsonl"
$(j_policy)
T
  rm -f "$d/jumping-client-events.jsonl" "$d/jumping-gateway-events.jsonl"
  bg_ns $NS_G "$d/jumping-gateway.log" env PYTHONPATH="$J_PYTHONPATH" "$(j_twistd)" -n --pidfile= --logfile=- jumping gateway --config "$J_DIR/g.toml"
  VPN_PIDS+=("$LAST_PID")
  local lport=$VPN_PORT
  [[ " ${JUMPING_TRANSPORTS:-udp} " == *" udp "* ]] || lport=$J_QUIC_PORT
  wait_listen $NS_G "$lport" 10 u || die "jumping gateway did not listen (see $d/jumping-gateway.log)"
  bg_ns $NS_C "$d/jumping-client.log" env PYTHONPATH="$J_PYTHONPATH" "$(j_twistd)" -n --pidfile= --logfile=- jumping client --config "$J_DIR/c.toml"
  # client first in VPN_PIDS, as the harness expects
  VPN_PIDS=("$LAST_PID" "${VPN_PIDS[@]}")
  for ((i = 0; i < 500; i++)); do
    grep -q '"new_state":"ATTACHED"' "$d/jumping-client-events.jsonl" 2>/dev/null && return 0
    sleep 0.02
  done
  die "jumping tunnel did not attach (see $d/jumping-*.log)"
}

vpn_up() { vpn_start; vpn_configure "$1"; }

vpn_down() {
  local p
  for p in "${VPN_PIDS[@]}"; do stop_pid "$p"; done
  VPN_PIDS=()
}

vpn_set_endpoint() { :; }  # the client finds its paths itself (see the jumping issue)

# The client's TUN device is up with its address and its routes (route to the gateway's
# tunnel address and to S_NET through it): a packet sent now goes into the tunnel.
j_client_ready() {
  nsx $NS_C ip -o link show dev $J_CIF 2>/dev/null | grep -q '[<,]UP[,>]' &&
    nsx $NS_C ip -o addr show dev $J_CIF 2>/dev/null | grep -q " $IN_C/" &&
    nsx $NS_C ip route get "$IN_G" 2>/dev/null | grep -q "dev $J_CIF" &&
    nsx $NS_C ip route show "$S_NET" 2>/dev/null | grep -q "dev $J_CIF"
}

# Restart the client: a brand-new session (the new daemon handshakes as it starts). Returns
# once the new client's TUN device and routes exist, so the harness's next packet enters the
# tunnel (handshakes.sh's warm case times it: what is left of the handshake + one round
# trip). Not once ATTACHED: that would hide the handshake from the measurement.
vpn_rehandshake() {
  local d=${RUN_DIR:-/tmp} i
  stop_pid "${VPN_PIDS[0]}"
  # the kernel removes the old device (and its routes) when its last descriptor closes
  for ((i = 0; i < 250; i++)); do
    nsx $NS_C ip link show dev $J_CIF >/dev/null 2>&1 || break
    sleep 0.02
  done
  rm -f "$d/jumping-client-events.jsonl"
  bg_ns $NS_C "$d/jumping-client.log" env PYTHONPATH="$J_PYTHONPATH" "$(j_twistd)" -n --pidfile= --logfile=- jumping client --config "$J_DIR/c.toml"
  VPN_PIDS[0]=$LAST_PID
  for ((i = 0; i < 1000; i++)); do
    j_client_ready && return 0
    pid_alive "$LAST_PID" || die "jumping client exited at restart (see $d/jumping-client.log)"
    sleep 0.01
  done
  die "jumping client's TUN device or routes not up 10 s after restart (see $d/jumping-client.log)"
}

vpn_show() { cat "${RUN_DIR:-/tmp}"/jumping-*-events.jsonl 2>/dev/null | tail -n 20; }
