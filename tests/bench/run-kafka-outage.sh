#!/usr/bin/env bash
# The spool's long outage: the real Kafka broker down OUTAGE_S seconds (600) while a twistd
# tunnel in namespaces carries traffic and the gateway emits RATE events/s (120: policy
# reloads), the gateway SIGKILLed half-way and started again. Afterwards every
# (node_id, boot_id, seq) must be in the topic (kafka-python and kcat), jumpctl audit --kafka
# finds no gap, nothing was dropped, the spool stayed within its bound; this script also
# checks that the TCP throughput during the outage is >= 95 % of before (both with the
# reloads running: the spool against the shipper, not the reloads' own cost).
#   bash tests/bench/run-kafka-outage.sh [report.json]
# Needs root, java and the jars of deploy/kafka/install.sh, and the kafka tox env (it runs
# the CI test plugins/jumping-kafka/tests/test_kafka_long_outage.py with a longer outage).
# Wall time: OUTAGE_S + about 2 minutes (broker restart, tox setup, delivery, audit).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-/tmp/jumping-kafka-outage.json}
export JUMPING_KAFKA_OUTAGE_S=${OUTAGE_S:-600}
export JUMPING_KAFKA_EVENT_RATE=${RATE:-120}
export JUMPING_KAFKA_IPERF_S=${IPERF_S:-10}
export JUMPING_REQUIRE_KAFKA=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cd "$here"
set +e
tox -e kafka -- -s -k test_a_long_outage_and_a_gateway_killed_in_it_lose_nothing \
  -o junit_family=xunit1 >"$log" 2>&1
rc=$?
set -e
tail -n 40 "$log" | grep -v '^$' >&2 || true
line=$(grep -o 'long outage: {.*}' "$log" | tail -n1 | sed 's/^long outage: //')
if [[ -z $line ]]; then echo "run-kafka-outage: no report (test rc $rc)" >&2; exit 1; fi
printf '%s\n' "$line" >"$out"
python3 - "$out" "$rc" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rc = int(sys.argv[2])
ratio = r["down_tcp_mbps"] / r["up_tcp_mbps"] if r["up_tcp_mbps"] else 0.0
events_per_s = r["reloads"] / r["down_s"] if r["down_s"] else 0.0
print(f"outage {r['down_s']} s, {r['reloads']} reloads ({events_per_s:.0f} events/s) on the gateway")
print(f"tcp before {r['up_tcp_mbps']:.0f} Mbit/s, during {r['down_tcp_mbps']:.0f} Mbit/s: {ratio:.3f}")
print(f"spool at the end of the outage: {r['spool_at_end']}")
print(f"after: {r['after']}; the test (every identity in the topic, kcat, audit): "
      + ("passed" if rc == 0 else f"FAILED (rc {rc})"))
ok = rc == 0 and ratio >= 0.95 and events_per_s >= 100
print("result:", "OK" if ok else "NOT MET")
sys.exit(0 if ok else 1)
PY
