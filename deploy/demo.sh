#!/usr/bin/env bash
# Jumping demo: a gateway and a client in two network namespaces, an encrypted tunnel
# between them, proved with ping and a TCP transfer; then everything is torn down.
#
#   bash deploy/demo.sh          (as root; installs what is missing first)
#
# Embedded defaults: namespaces jdemo-c / jdemo-g joined by a veth (10.203.1.0/24), tunnel
# 10.99.0.0/24, UDP port 51820, memory ownership, JSON-lines events. Logs and events stay
# in the directory printed at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
C=jdemo-c G=jdemo-g
say() { printf '[demo] %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (namespaces and TUN devices need it)"
bash "$root/deploy/setup.sh" --runtime >/dev/null 2>&1 || bash "$root/deploy/setup.sh" --runtime
for ns in $C $G; do [[ -e /run/netns/$ns ]] && die "namespace $ns exists (another demo running? remove it: ip netns del $ns)"; done

dir=$(mktemp -d /tmp/jumping-demo.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del $C 2>/dev/null || true
  ip netns del $G 2>/dev/null || true
  say "torn down; logs and events kept in $dir"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
twistd=$(command -v twistd || echo "$($py -c 'import sys,os; print(os.path.dirname(sys.executable))')/twistd")

say "namespaces $C and $G, veth 10.203.1.1 <-> 10.203.1.2"
ip netns add $C; ip netns add $G
ip link add dc netns $C type veth peer name dg netns $G
ip -n $C addr add 10.203.1.1/24 dev dc; ip -n $G addr add 10.203.1.2/24 dev dg
for ns in $C $G; do ip -n $ns link set lo up; done
ip -n $C link set dc up; ip -n $G link set dg up

say "keys"
cpub=$($py -m jumping.cli keygen --out "$dir/client.key" 2>/dev/null)
gpub=$($py -m jumping.cli keygen --out "$dir/gateway.key" 2>/dev/null)
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
T

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

say "TCP transfer of 16 MiB through the tunnel, checksum on both ends"
ip netns exec $G $py - >"$dir/transfer-server.out" <<'PY' &
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.1", 5001)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while (b := c.recv(65536)):
    h.update(b); n += len(b)
print(n, h.hexdigest())
PY
srv=$!
pids+=($srv)
sleep 0.3
ip netns exec $C $py - "$dir" <<'PY' || die "transfer failed"
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

say "events (JSON lines, schema jumping.event/1):"
say "  gateway: $dir/gateway-events.jsonl"
say "  client:  $dir/client-events.jsonl"
$py - "$dir/gateway-events.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    e = json.loads(line)
    if "new_state" in e:
        what = f"{e['previous_state']} -> {e['new_state']} ({e.get('reason_code')})"
    elif e["event_type"] == "OWNERSHIP_CHANGE":
        what = f"owner {e.get('owner')}, fencing token {e.get('fencing_token')}"
    else:
        what = e.get("transport_id") or e.get("reason_code") or ""
    print(f"[demo]   #{e['seq']} {e['event_type']:22} {what}")
PY
say "OK: handshake, ping and transfer through the encrypted tunnel"
