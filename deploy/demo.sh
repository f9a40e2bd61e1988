#!/usr/bin/env bash
# Jumping demo: a gateway and a client in two network namespaces, an encrypted tunnel
# between them, proved with ping and a TCP transfer; then everything is torn down and the
# whole event story of the session is printed, from handshake to termination.
#
#   bash deploy/demo.sh          (as root)
#
# What it installs, and where (it says so again before doing it):
#   - Debian packages it needs and does not find: iproute2 (ip), iputils-ping (ping),
#     python3-venv (only if the Python has no venv module)
#   - a virtual environment, $JUMPING_DEMO_VENV (default /var/tmp/jumping-demo-venv),
#     with Jumping installed from this checkout (pip install .) and its dependencies;
#     reused by the next run, removed with: rm -rf /var/tmp/jumping-demo-venv
# Nothing goes into the system Python. Namespaces jdemo-c / jdemo-g joined by a veth
# (10.203.1.0/24), tunnel 10.99.0.0/24, UDP port 51820, memory ownership, JSON-lines
# events; logs and events stay in the directory printed at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
C=jdemo-c G=jdemo-g
venv=${JUMPING_DEMO_VENV:-/var/tmp/jumping-demo-venv}
py=${PYTHON:-python3}
say() { printf '[demo] %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (namespaces and TUN devices need it)"
for ns in $C $G; do [[ -e /run/netns/$ns ]] && die "namespace $ns exists (another demo running? remove it: ip netns del $ns)"; done

# ------------------------------------------------------------------ install, said first
apt=()
command -v ip >/dev/null || apt+=(iproute2)
command -v ping >/dev/null || apt+=(iputils-ping)
"$py" -c 'import venv, ensurepip' 2>/dev/null || apt+=(python3-venv)
if ((${#apt[@]})); then
  say "installing Debian packages: ${apt[*]} (apt-get, system-wide)"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${apt[@]}" >/dev/null ||
    die "apt-get install ${apt[*]} failed"
fi
[[ -e /dev/net/tun ]] || die "/dev/net/tun is missing (load the tun module: modprobe tun)"
if [[ ! -x $venv/bin/python ]]; then
  say "creating the virtual environment $venv (with $("$py" --version 2>&1))"
  "$py" -m venv "$venv" || die "cannot create $venv"
fi
say "installing Jumping from $root and its dependencies (twisted, zope.interface, pynacl,"
say "  cryptography, prometheus-client) into $venv: pip install . (a minute the first time)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$root" ||
  die "pip install into $venv failed"
twistd=$venv/bin/twistd jumpctl=$venv/bin/jumpctl vpy=$venv/bin/python

# ------------------------------------------------------------------ namespaces, keys, configs
dir=$(mktemp -d /tmp/jumping-demo.XXXXXX)
pids=()
stop_daemons() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_daemons
  ip netns del $C 2>/dev/null || true
  ip netns del $G 2>/dev/null || true
  say "namespaces removed; logs and events kept in $dir"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "namespaces $C and $G, veth 10.203.1.1 <-> 10.203.1.2"
ip netns add $C; ip netns add $G
ip link add dc netns $C type veth peer name dg netns $G
ip -n $C addr add 10.203.1.1/24 dev dc; ip -n $G addr add 10.203.1.2/24 dev dg
for ns in $C $G; do ip -n $ns link set lo up; done
ip -n $C link set dc up; ip -n $G link set dg up

say "keys (jumpctl keygen) and configurations in $dir"
cpub=$("$jumpctl" keygen --out "$dir/client.key" 2>/dev/null)
gpub=$("$jumpctl" keygen --out "$dir/gateway.key" 2>/dev/null)
cat >"$dir/gateway.toml" <<T
[node]
role = "gateway"
node_id = "demo-gw"
private_key = "gateway.key"
[tun]
name = "jmpg0"
address = "10.99.0.1/24"
[[listen]]
transport = "udp"
host = "0.0.0.0"
port = 51820
[[peers]]
public_key = "$cpub"
allowed_ips = ["10.99.0.2/32"]
[ownership]
backend = "memory"
[[events]]
sink = "jsonl"
path = "gateway-events.jsonl"
[control]
socket = "$dir/gateway.sock"
T
cat >"$dir/client.toml" <<T
[node]
role = "client"
node_id = "demo-client"
private_key = "client.key"
[tun]
name = "jmpc0"
address = "10.99.0.2/24"
[gateway]
public_key = "$gpub"
[[gateway.endpoints]]
transport = "udp"
host = "10.203.1.2"
port = 51820
[[events]]
sink = "jsonl"
path = "client-events.jsonl"
[control]
socket = "$dir/client.sock"
T

# ------------------------------------------------------------------ run, prove
say "starting the gateway and the client under twistd"
ip netns exec $G "$twistd" -n --pidfile= --logfile="$dir/gateway.log" jumping gateway --config "$dir/gateway.toml" &
pids+=($!)
ip netns exec $C "$twistd" -n --pidfile= --logfile="$dir/client.log" jumping client --config "$dir/client.toml" &
pids+=($!)
for _ in $(seq 100); do
  grep -q '"new_state":"ATTACHED"' "$dir/client-events.jsonl" 2>/dev/null && break
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || die "a daemon exited; see $dir/*.log"; done
  sleep 0.1
done
grep -q '"new_state":"ATTACHED"' "$dir/client-events.jsonl" 2>/dev/null || die "tunnel did not come up within 10 s; see $dir/*.log"
say "tunnel up"

say "ping 10.99.0.1 through the tunnel"
ip netns exec $C ping -c 5 -i 0.2 -W 2 10.99.0.1 | tail -2 || die "ping failed"

say "the live tunnel as the gateway's operator sees it: jumpctl status, jumpctl sessions"
$py -m jumping.cli status --socket "$dir/gateway.sock" || die "jumpctl status failed"
$py -m jumping.cli sessions --socket "$dir/gateway.sock" || die "jumpctl sessions failed"

say "TCP transfer of 16 MiB through the tunnel, checksum on both ends"
ip netns exec $G "$vpy" - >"$dir/transfer-server.out" <<'PY' &
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.1", 5001)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while (b := c.recv(65536)):
    h.update(b); n += len(b)
print(n, h.hexdigest())
PY
srv=$!
sleep 0.3
ip netns exec $C "$vpy" - "$dir" <<'PY' || die "transfer failed"
import hashlib, os, socket, sys, time
data = os.urandom(16 * 1024 * 1024)
t = time.monotonic()
c = socket.create_connection(("10.99.0.1", 5001), timeout=20)
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
dt = time.monotonic() - t
open(os.path.join(sys.argv[1], "transfer-client.out"), "w").write(f"{len(data)} {hashlib.sha256(data).hexdigest()}\n")
print(f"[demo] sent {len(data) >> 20} MiB in {dt:.2f} s ({len(data) * 8 / dt / 1e6:.0f} Mbit/s)", file=sys.stderr)
PY
wait $srv || die "transfer server failed"
cmp -s "$dir/transfer-client.out" "$dir/transfer-server.out" || die "checksums differ"
say "checksums match: $(cut -c1-80 "$dir/transfer-server.out")"

# ------------------------------------------------------------------ teardown, then the story
say "stopping the client and the gateway (SIGTERM: each ends its session and says why)"
stop_daemons
say "the session's events, both nodes, in order (JSON lines, schema jumping.event/1):"
say "  gateway: $dir/gateway-events.jsonl"
say "  client:  $dir/client-events.jsonl"
"$vpy" - "$dir/gateway-events.jsonl" "$dir/client-events.jsonl" <<'PY'
import json, sys
events = []
for path in sys.argv[1:]:
    events += [json.loads(line) for line in open(path)]
events.sort(key=lambda e: (e["ts_ms"], e["node_id"], e["seq"]))
t0 = events[0]["ts_ms"] if events else 0
for e in events:
    if "new_state" in e:
        what = f"{e['previous_state']} -> {e['new_state']} ({e.get('reason_code')})"
    elif e["event_type"] == "OWNERSHIP_CHANGE":
        what = f"owner {e.get('owner')}, fencing token {e.get('fencing_token')}"
    elif e["event_type"] == "SESSION_TERMINATED":
        what = (f"{e.get('reason_code')}, lifetime {e.get('lifetime_ms')} ms, "
                f"{e.get('bytes_in')} bytes in / {e.get('bytes_out')} out")
    elif e["event_type"] == "SESSION_STATS":
        what = f"{e.get('bytes_in')} bytes in / {e.get('bytes_out')} out"
    else:
        what = e.get("transport_id") or e.get("reason_code") or ""
    print(f"[demo]   +{e['ts_ms'] - t0:6d} ms  {e['node_id']:11} #{e['seq']:<3} {e['event_type']:22} {what}")
ends = [e for e in events if e["event_type"] == "SESSION_TERMINATED"]
assert {e["node_id"] for e in ends} == {"demo-gw", "demo-client"}, "a node did not report its end"
PY
say "OK: handshake, ping and transfer through the encrypted tunnel, and a clean end on both sides"
