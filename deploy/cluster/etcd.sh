#!/usr/bin/env bash
# A 3-member etcd cluster on 127.0.0.1 for Jumping's `etcd` ownership backend.
#
#   etcd.sh start DIR            start members m1..m3 (data and logs under DIR), wait for health
#   etcd.sh stop DIR             stop every member started from DIR (SIGTERM, then SIGKILL)
#   etcd.sh start-member DIR N   (re)start member N (1..3) on its existing data
#   etcd.sh stop-member DIR N    stop member N only (quorum tests, rolling restarts)
#   etcd.sh kill-member DIR N    SIGKILL member N (a crash, for fault tests)
#   etcd.sh status DIR           `etcdctl endpoint status` of the cluster
#   etcd.sh endpoints            print the client URLs, comma-separated
#
# Ports: client $HOST:$BASE+N, peer $HOST:$BASE+3+N with BASE=${ETCD_BASE_PORT:-23790} and
# HOST=${ETCD_HOST:-127.0.0.1}, so the default cluster uses 23791-23796 on loopback.
# Set ETCD_BIN / ETCDCTL_BIN for other binaries.
# Put DIR on tmpfs (/dev/shm) for tests: etcd fsyncs every commit.
set -euo pipefail
base=${ETCD_BASE_PORT:-23790}
host=${ETCD_HOST:-127.0.0.1}
etcd_bin=${ETCD_BIN:-etcd}
etcdctl_bin=${ETCDCTL_BIN:-etcdctl}
export ETCDCTL_API=3
fail() { printf 'etcd.sh: error: %s\n' "$*" >&2; exit 1; }

client_url() { echo "http://$host:$((base + $1))"; }
peer_url() { echo "http://$host:$((base + 3 + $1))"; }
endpoints() { echo "$(client_url 1),$(client_url 2),$(client_url 3)"; }
cluster() { echo "m1=$(peer_url 1),m2=$(peer_url 2),m3=$(peer_url 3)"; }

running() { [[ -f $1/m$2.pid ]] && kill -0 "$(cat "$1/m$2.pid")" 2>/dev/null; }

start_member() {
  local dir=$1 n=$2
  running "$dir" "$n" && return 0
  mkdir -p "$dir/m$n.data"
  chmod 700 "$dir/m$n.data"
  setsid "$etcd_bin" --name "m$n" --data-dir "$dir/m$n.data" \
    --listen-client-urls "$(client_url "$n")" --advertise-client-urls "$(client_url "$n")" \
    --listen-peer-urls "$(peer_url "$n")" --initial-advertise-peer-urls "$(peer_url "$n")" \
    --initial-cluster "$(cluster)" --initial-cluster-state new \
    --initial-cluster-token "jumping-$base" \
    --heartbeat-interval 100 --election-timeout 1000 --logger zap --log-level warn \
    </dev/null >>"$dir/m$n.log" 2>&1 &
  echo $! >"$dir/m$n.pid"
}

stop_member() {
  local dir=$1 n=$2 sig=${3:-TERM} pid i
  [[ -f $dir/m$n.pid ]] || return 0
  pid=$(cat "$dir/m$n.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/m$n.pid"
}

wait_healthy() {  # every running member answers and the cluster has a leader
  local dir=$1 eps="" n i
  for n in 1 2 3; do running "$dir" "$n" && eps+="${eps:+,}$(client_url "$n")"; done
  [[ -n $eps ]] || fail "no member is running"
  for i in $(seq 150); do
    if "$etcdctl_bin" --endpoints "$eps" --dial-timeout 1s --command-timeout 2s \
         endpoint health >/dev/null 2>&1; then
      return 0
    fi
    for n in 1 2 3; do
      [[ -f $dir/m$n.pid ]] && ! running "$dir" "$n" &&
        fail "member m$n exited; see $dir/m$n.log: $(tail -n 3 "$dir/m$n.log" | tr '\n' ' ')"
    done
    sleep 0.2
  done
  fail "cluster at $eps not healthy after 30 s; logs in $dir/m*.log"
}

cmd=${1:-}
case $cmd in
  start)
    dir=${2:?usage: etcd.sh start DIR}
    command -v "$etcd_bin" >/dev/null || fail "$etcd_bin not found (apt-get install etcd-server)"
    command -v "$etcdctl_bin" >/dev/null || fail "$etcdctl_bin not found (apt-get install etcd-client)"
    mkdir -p "$dir"
    for n in 1 2 3; do
      running "$dir" "$n" && continue
      for port in $((base + n)) $((base + 3 + n)); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
          fail "port $port is in use (another cluster? stop it: etcd.sh stop ITS_DIR)"
        fi
      done
    done
    for n in 1 2 3; do start_member "$dir" "$n"; done
    wait_healthy "$dir"
    echo "$(endpoints)"
    ;;
  stop)
    dir=${2:?usage: etcd.sh stop DIR}
    for n in 1 2 3; do stop_member "$dir" "$n"; done
    ;;
  start-member)
    dir=${2:?usage: etcd.sh start-member DIR N}; n=${3:?member number 1..3}
    start_member "$dir" "$n"
    ;;
  stop-member)
    dir=${2:?usage: etcd.sh stop-member DIR N}; n=${3:?member number 1..3}
    stop_member "$dir" "$n"
    ;;
  kill-member)
    dir=${2:?usage: etcd.sh kill-member DIR N}; n=${3:?member number 1..3}
    stop_member "$dir" "$n" KILL
    ;;
  health)
    wait_healthy "${2:?usage: etcd.sh health DIR}"
    ;;
  status)
    "$etcdctl_bin" --endpoints "$(endpoints)" --dial-timeout 1s endpoint status -w table
    ;;
  endpoints)
    endpoints
    ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
