#!/usr/bin/env bash
# A 3-member etcd cluster on 127.0.0.1 for Jumping's `etcd` ownership backend.
#
#   etcd.sh start DIR            start members m1..m3 (data and logs under DIR), wait for health
#   etcd.sh stop DIR             stop every member started from DIR (SIGTERM, then SIGKILL)
#   etcd.sh start-member DIR N   (re)start member N (1..3) on its existing data
#   etcd.sh stop-member DIR N    stop member N only (quorum tests, rolling restarts)
#   etcd.sh kill-member DIR N    SIGKILL member N (a crash, for fault tests)
#   etcd.sh freeze-member DIR N  SIGSTOP member N: its connections stay open, nothing answers
#   etcd.sh thaw-member DIR N    SIGCONT member N
#   etcd.sh isolate-member DIR N cut member N from the other two (nftables, in the network
#                                namespace etcd.sh runs in); its clients still reach it
#   etcd.sh rejoin-member DIR N  undo isolate-member
#   etcd.sh status DIR           `etcdctl endpoint status` of the cluster
#   etcd.sh endpoints [DIR]      print the client URLs, comma-separated
#   etcd.sh ctl DIR ARGS...      etcdctl ARGS on the cluster (as etcd's root user if secure)
#
# Security: ETCD_SECURE=1 at `start` (remembered in DIR) serves clients over TLS only, with
# client certificates required (--client-cert-auth), and enables etcd authentication. It
# makes a CA and certificates under DIR/tls (ca.pem; member.pem, CN etcd-member, for
# 127.0.0.1/localhost/$HOST; client.pem/client.key, no CN: etcd's JSON gateway answers 400
# to a client certificate with a CN when --client-cert-auth is on), a `root` user and
# a user `jumping` with the role `jumping` (readwrite on the prefix /jumping/), their
# passwords in DIR/tls/root.password and DIR/tls/jumping.password (mode 0600). Peer
# traffic stays on plain http (loopback).
#
# Isolation: ETCD_ISOLATABLE=1 at `start` (root only; remembered in DIR) runs member N with
# its own group id ${ETCD_GID_BASE:-47900}+N, so that isolate-member can tell its peer
# traffic from the others': every packet to or from its peer port is dropped, and so is
# every packet of a connection it opened to another member's peer port (marked by its gid).
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

scheme=http
client_url() { echo "$scheme://$host:$((base + $1))"; }
peer_url() { echo "http://$host:$((base + 3 + $1))"; }
endpoints() { echo "$(client_url 1),$(client_url 2),$(client_url 3)"; }
cluster() { echo "m1=$(peer_url 1),m2=$(peer_url 2),m3=$(peer_url 3)"; }

isolatable() { [[ -f $1/isolatable ]]; }
member_gid() { echo $((${ETCD_GID_BASE:-47900} + $1)); }
nft_table() { echo "jumping_etcd_iso_$base"; }

secure() { [[ -f $1/secure ]]; }
ctl() {  # ctl DIR ARGS...: etcdctl with the cluster's TLS and root credentials
  local dir=$1; shift
  local sec=()
  if secure "$dir"; then
    sec=(--cacert "$dir/tls/ca.pem" --cert "$dir/tls/client.pem" --key "$dir/tls/client.key")
    [[ -f $dir/tls/auth-enabled ]] && sec+=(--user "root:$(cat "$dir/tls/root.password")")
  fi
  "$etcdctl_bin" "${sec[@]}" "$@"
}

make_tls() {  # CA, member and client certificates, passwords (once per DIR)
  local t=$1/tls
  [[ -f $t/client.pem ]] && return 0
  command -v openssl >/dev/null || fail "openssl not found (apt-get install openssl)"
  mkdir -p "$t"; chmod 700 "$t"
  (
    cd "$t"
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj /CN=jumping-test-ca -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=etcd-member \
      -keyout member.key -out member.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' \
      "$host" >member.ext
    openssl x509 -req -in member.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile member.ext -out member.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /O=jumping/OU=gateway \
      -keyout client.key -out client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
      -extfile client.ext -out client.pem 2>/dev/null
    openssl rand -hex 16 >root.password
    openssl rand -hex 16 >jumping.password
    rm -f ./*.csr ./*.ext
    chmod 644 ca.pem member.pem client.pem
  ) || fail "openssl could not make the test certificates in $t"
}

enable_auth() {  # users, role, `auth enable` (once per DIR)
  local dir=$1 t=$1/tls
  [[ -f $t/auth-enabled ]] && return 0
  local c=(ctl "$dir" --endpoints "$(endpoints)")
  { "${c[@]}" user add "root:$(cat "$t/root.password")" &&
    "${c[@]}" role add jumping &&
    "${c[@]}" role grant-permission jumping --prefix=true readwrite /jumping/ &&
    "${c[@]}" user add "jumping:$(cat "$t/jumping.password")" &&
    "${c[@]}" user grant-role jumping jumping &&
    "${c[@]}" auth enable; } >>"$dir/ctl.log" 2>&1 ||
    fail "could not set up etcd authentication; see $dir/ctl.log"
  touch "$t/auth-enabled"
}

running() { [[ -f $1/m$2.pid ]] && kill -0 "$(cat "$1/m$2.pid")" 2>/dev/null; }

start_member() {
  local dir=$1 n=$2
  running "$dir" "$n" && return 0
  mkdir -p "$dir/m$n.data"
  chmod 700 "$dir/m$n.data"
  local as=()
  if isolatable "$dir"; then
    as=(setpriv "--regid=$(member_gid "$n")" --clear-groups)
  fi
  local tls=()
  if secure "$dir"; then
    tls=(--cert-file "$dir/tls/member.pem" --key-file "$dir/tls/member.key"
         --client-cert-auth --trusted-ca-file "$dir/tls/ca.pem")
  fi
  setsid "${as[@]}" "$etcd_bin" --name "m$n" --data-dir "$dir/m$n.data" "${tls[@]}" \
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
    kill -CONT "$pid" 2>/dev/null || true  # a frozen member acts on its signal
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
    if ctl "$dir" --endpoints "$eps" --dial-timeout 1s --command-timeout 2s \
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
if [[ -n ${2:-} && -f ${2:-}/secure ]] || [[ $cmd == start && ${ETCD_SECURE:-0} == 1 ]]; then
  scheme=https
fi
case $cmd in
  start)
    dir=${2:?usage: etcd.sh start DIR}
    command -v "$etcd_bin" >/dev/null || fail "$etcd_bin not found (apt-get install etcd-server)"
    command -v "$etcdctl_bin" >/dev/null || fail "$etcdctl_bin not found (apt-get install etcd-client)"
    mkdir -p "$dir"
    if [[ ${ETCD_ISOLATABLE:-0} == 1 ]]; then
      [[ $(id -u) == 0 ]] || fail "ETCD_ISOLATABLE=1 needs root (members run with their own gids)"
      command -v setpriv >/dev/null || fail "setpriv not found (apt-get install util-linux)"
      touch "$dir/isolatable"
    fi
    if [[ ${ETCD_SECURE:-0} == 1 ]]; then
      touch "$dir/secure"
      make_tls "$dir"
    fi
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
    if secure "$dir"; then enable_auth "$dir"; fi
    echo "$(endpoints)"
    ;;
  stop)
    dir=${2:?usage: etcd.sh stop DIR}
    if isolatable "$dir"; then nft delete table inet "$(nft_table)" 2>/dev/null || true; fi
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
  freeze-member|thaw-member)
    dir=${2:?usage: etcd.sh $cmd DIR N}; n=${3:?member number 1..3}
    running "$dir" "$n" || fail "member m$n is not running"
    if [[ $cmd == freeze-member ]]; then kill -STOP "$(cat "$dir/m$n.pid")"
    else kill -CONT "$(cat "$dir/m$n.pid")"; fi
    ;;
  isolate-member)
    dir=${2:?usage: etcd.sh isolate-member DIR N}; n=${3:?member number 1..3}
    isolatable "$dir" || fail "$dir was not started with ETCD_ISOLATABLE=1"
    command -v nft >/dev/null || fail "nft not found (apt-get install nftables)"
    others=""
    for m in 1 2 3; do [[ $m == "$n" ]] || others+="${others:+, }$((base + 3 + m))"; done
    nft delete table inet "$(nft_table)" 2>/dev/null || true
    nft -f - <<EOF || fail "nft refused the isolation rules"
table inet $(nft_table) {
  chain out {
    type filter hook output priority 0; policy accept;
    tcp dport $((base + 3 + n)) drop
    tcp sport $((base + 3 + n)) drop
    meta skgid $(member_gid "$n") tcp dport { $others } ct mark set 0x4a45
    ct mark 0x4a45 drop
  }
}
EOF
    ;;
  rejoin-member)
    dir=${2:?usage: etcd.sh rejoin-member DIR N}
    nft delete table inet "$(nft_table)" 2>/dev/null || true
    ;;
  health)
    wait_healthy "${2:?usage: etcd.sh health DIR}"
    ;;
  status)
    ctl "${2:?usage: etcd.sh status DIR}" --endpoints "$(endpoints)" --dial-timeout 1s \
      endpoint status -w table
    ;;
  ctl)
    dir=${2:?usage: etcd.sh ctl DIR ARGS...}; shift 2
    ctl "$dir" --endpoints "$(endpoints)" "$@"
    ;;
  endpoints)
    endpoints
    ;;
  *)
    awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2
    exit 2
    ;;
esac
