#!/usr/bin/env bash
# Three Jumping gateways sharing session ownership on a 3-member etcd cluster, each in its
# own network namespace (as root).
#
#   gateways.sh start DIR     namespaces, etcd, keys, configs, the 3 gateways; prints a summary
#   gateways.sh status DIR    the gateways' processes and the ownership records in etcd
#   gateways.sh stop DIR      stop everything started from DIR and delete the namespaces
#
# Layout (the root namespace is not touched): a hub namespace holds a bridge 10.210.0.1/24
# and the etcd members (10.210.0.1:23791-23793, peers :23794-23796); gateway N lives in its
# own namespace at 10.210.0.1N (UDP 51820, tunnel 10.99.0.1/24 on every gateway, node_id
# gwN), joined to the bridge by a veth, with [ownership] backend = "etcd" (etcd secure: TLS,
# client certificates, authentication; credentials in DIR/etcd/tls). The gateways share
# one identity key (DIR/gateway.key: the cluster's Noise responder key, as with anycast), so
# a client can resume its session on any of them (takeover). Clients go in further
# namespaces on the same bridge (10.210.0.100+) and list the three gateways as endpoints;
# DIR/client.key and DIR/gateway.pub are the keys to use. Namespace names carry the
# starting shell's pid (stored in DIR/tag) so two runs never collide. Logs: DIR/gwN.log,
# DIR/etcd/m*.log.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
say() { printf '[gateways] %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }
[[ $(id -u) == 0 ]] || fail "run as root (namespaces and TUN devices need it)"
py=${PYTHON:-python3}
export PYTHONPATH="$root:$root/plugins/jumping-etcd${PYTHONPATH:+:$PYTHONPATH}"
twistd=$(command -v twistd || echo "$($py -c 'import sys,os; print(os.path.dirname(sys.executable))')/twistd")
hub_ip=10.210.0.1

cmd=${1:-}; dir=${2:-}
[[ -n $cmd && -n $dir ]] || { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

stop_all() {
  local tag n
  [[ -f $dir/tag ]] || return 0
  tag=$(cat "$dir/tag")
  for n in 1 2 3; do
    if [[ -f $dir/gw$n.pid ]]; then
      kill "$(cat "$dir/gw$n.pid")" 2>/dev/null || true
      rm -f "$dir/gw$n.pid"
    fi
  done
  sleep 0.5
  if [[ -e /run/netns/$tag-hub ]]; then
    ip netns exec "$tag-hub" env ETCD_HOST=$hub_ip bash "$root/deploy/cluster/etcd.sh" stop "$dir/etcd" || true
  fi
  for n in hub 1 2 3; do ip netns del "$tag-$n" 2>/dev/null || true; done
}

case $cmd in
  start)
    mkdir -p "$dir"
    [[ -f $dir/tag ]] && fail "$dir is in use (gateways.sh stop $dir first)"
    tag="jg$$"
    echo "$tag" >"$dir/tag"
    trap 'rc=$?; if ((rc)); then stop_all; rm -f "$dir/tag"; fi' EXIT
    hub=$tag-hub
    ip netns add "$hub"
    ip -n "$hub" link set lo up
    ip -n "$hub" link add br0 type bridge
    ip -n "$hub" addr add $hub_ip/24 dev br0
    ip -n "$hub" link set br0 up
    for n in 1 2 3; do
      ns=$tag-$n
      ip netns add "$ns"
      ip -n "$ns" link set lo up
      ip link add "g$n" netns "$ns" type veth peer name "p$n" netns "$hub"
      ip -n "$hub" link set "p$n" master br0 up
      ip -n "$ns" addr add "10.210.0.1$n/24" dev "g$n"
      ip -n "$ns" link set "g$n" up
    done
    say "etcd cluster in $hub at $hub_ip"
    # secure, as in production: TLS with client certificates, etcd authentication
    eps=$(ip netns exec "$hub" env ETCD_HOST=$hub_ip ETCD_SECURE=1 bash "$root/deploy/cluster/etcd.sh" start "$dir/etcd")
    tls=$dir/etcd/tls
    say "keys"
    cpub=$($py -m jumping.cli keygen --out "$dir/client.key" 2>/dev/null)
    $py -m jumping.cli keygen --out "$dir/gateway.key" >/dev/null 2>&1  # one cluster identity
    for n in 1 2 3; do
      cat >"$dir/gw$n.toml" <<T
[node]
role = "gateway"
node_id = "gw$n"
private_key = "gateway.key"
[tun]
name = "jmpg$n"
address = "10.99.0.1/24"
[[listen]]
transport = "udp"
host = "0.0.0.0"
port = 51820
[[peers]]
public_key = "$cpub"
allowed_ips = ["10.99.0.2/32"]
[ownership]
backend = "etcd"
endpoints = "$eps"
ttl = 5
ca_cert = "$tls/ca.pem"
cert = "$tls/client.pem"
key = "$tls/client.key"
user = "jumping"
password_file = "$tls/jumping.password"
[[events]]
sink = "jsonl"
path = "gw$n-events.jsonl"
T
      ip netns exec "$tag-$n" "$twistd" -n --pidfile= --logfile="$dir/gw$n.log" \
        jumping gateway --config "$dir/gw$n.toml" </dev/null >"$dir/gw$n.out" 2>&1 &
      echo $! >"$dir/gw$n.pid"
    done
    for n in 1 2 3; do
      for _ in $(seq 100); do
        grep -q "jumping gateway gw$n up" "$dir/gw$n.log" 2>/dev/null && break
        kill -0 "$(cat "$dir/gw$n.pid")" 2>/dev/null || fail "gateway gw$n exited: $(tail -n 3 "$dir/gw$n.log")"
        sleep 0.1
      done
      grep -q "jumping gateway gw$n up" "$dir/gw$n.log" || fail "gateway gw$n not up within 10 s; see $dir/gw$n.log"
    done
    trap - EXIT
    say "3 gateways up: 10.210.0.11-13 udp/51820 (namespaces $tag-1..3), etcd $eps"
    say "client key $dir/client.key; stop with: $0 stop $dir"
    ;;
  status)
    [[ -f $dir/tag ]] || fail "nothing started in $dir"
    tag=$(cat "$dir/tag")
    for n in 1 2 3; do
      if kill -0 "$(cat "$dir/gw$n.pid" 2>/dev/null || echo 0)" 2>/dev/null; then s=running; else s=stopped; fi
      say "gw$n: $s"
    done
    ip netns exec "$tag-hub" env ETCD_HOST=$hub_ip bash "$root/deploy/cluster/etcd.sh" ctl \
      "$dir/etcd" get --prefix /jumping/sessions/
    ;;
  stop)
    stop_all
    rm -f "$dir/tag"
    say "stopped"
    ;;
  *) fail "unknown command $cmd" ;;
esac
