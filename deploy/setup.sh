#!/usr/bin/env bash
# Set up a fresh Debian 12 machine (as root) for Jumping.
#
#   bash deploy/setup.sh            everything the test suite needs
#   bash deploy/setup.sh --runtime  only what the demo needs (iproute2, ping, Python deps)
#
# Idempotent: what is already there is not installed again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-all}
step() { printf '==> %s\n' "$*" >&2; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || fail "run as root (network namespaces and TUN devices need it)"

# command -> Debian package
# (gcc builds the data plane's C loops at `pip install .`, jumping/core/_dataplane.c and
# jumping/service/_fastio.c; without it the install falls back to their pure-Python twins;
# openssl makes the certificates of the secure etcd test cluster, deploy/cluster/etcd.sh ETCD_SECURE=1)
declare -A runtime=([ip]=iproute2 [ping]=iputils-ping [nft]=nftables [iperf3]=iperf3 [gcc]=gcc)
declare -A testing=([tcpdump]=tcpdump [wireguard-go]=wireguard-go [wg]=wireguard-tools
                    [etcd]=etcd-server [etcdctl]=etcd-client [kcat]=kcat [promtool]=prometheus
                    [jq]=jq [cargo]=cargo [java]=default-jre-headless [mvn]=maven
                    [systemd-analyze]=systemd [setpriv]=util-linux [unshare]=util-linux
                    [ss]=iproute2 [gcc]=gcc [openssl]=openssl)
missing=()
for c in "${!runtime[@]}"; do command -v "$c" >/dev/null || missing+=("${runtime[$c]}"); done
# OpenSSL's headers for the same C loops (libcrypto itself is on every Debian machine)
[[ -e /usr/include/openssl/evp.h ]] || missing+=(libssl-dev)
if [[ $mode != --runtime ]]; then
  for c in "${!testing[@]}"; do command -v "$c" >/dev/null || missing+=("${testing[$c]}"); done
fi
if ((${#missing[@]})); then
  step "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || fail "apt-get update failed"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    fail "apt-get install ${missing[*]} failed"
else
  step "system packages already present"
fi
[[ -e /dev/net/tun ]] || fail "/dev/net/tun is missing (load the tun module: modprobe tun)"

py=${PYTHON:-python3}
pkgs=("twisted>=23.10" "zope.interface>=6" "pynacl>=1.5" "cryptography>=42" "prometheus-client>=0.17")
[[ $mode != --runtime ]] && pkgs+=(tox "pytest>=8" "pytest-twisted>=1.14" "hypothesis>=6.100" "jsonschema>=4"
                                  "etcd3gw>=2.4" "kafka-python>=2.1,<3"
                                  "aioquic>=1.7,<2" "atheris>=3.0,<4" "ocsf-emitter==0.3.0")
if ! "$py" -c "import twisted, nacl, cryptography, zope.interface, prometheus_client" 2>/dev/null ||
   { [[ $mode != --runtime ]] && ! command -v tox >/dev/null; } ||
   { [[ $mode != --runtime ]] && ! "$py" -c "import etcd3gw, kafka, aioquic, atheris, ocsf_emitter" 2>/dev/null; }; then
  step "pip install ${pkgs[*]}"
  "$py" -m pip install -q "${pkgs[@]}" || fail "pip install failed"
else
  step "Python packages already present"
fi

if [[ $mode != --runtime ]]; then
  step "Apache Kafka jars from Maven Central (deploy/kafka/install.sh)"
  bash "$root/deploy/kafka/install.sh" >&2 || fail "could not install the Kafka jars"
  step "Noise test vectors"
  bash "$root/tests/data/fetch-noise-vectors.sh" >&2 || fail "could not fetch the Noise test vectors"
fi
step "setup done"
