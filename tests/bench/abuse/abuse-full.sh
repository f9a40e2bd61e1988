#!/usr/bin/env bash
# abuse-full.sh - the full wire-abuse matrix (docs/benchmarks.md, "Wire abuse"): every
# scenario at every rate and duration, Jumping beside wireguard-go, REPEAT times, into one
# results file, then the medians over the repeats (report.py summary).
#
#   PEERS_DIR=/path/to/peers WG_BIN=/path/to/wireguard-go \
#     bash tests/bench/abuse/abuse-full.sh [results.jsonl]
#
# Env: RATES ("20000 100000" pkt/s), DURATIONS ("10 60" s of flood), REPEAT (1: runs of each
# cell; one 10 s run's throughput kept is good to about +-0.15 on a 2-core machine, so use 3
# or more to judge by), and everything abuse-matrix.sh takes (VPNS, SCENARIOS, IPERF, which
# is 1 here unless set, NEW_CLIENT...). Each pass is one abuse-matrix.sh run, which sets up
# and removes its own namespaces; a pass that fails is reported and the next one runs.
# The whole matrix at the defaults takes about 75 minutes per repeat; it prints an estimate
# first and a line per pass.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/tmp/jumping-abuse-full.jsonl}
RATES=${RATES:-"20000 100000"}
DURATIONS=${DURATIONS:-"10 60"}
REPEAT=${REPEAT:-1}
export IPERF=${IPERF:-1}
VPNS=${VPNS:-"wireguard-go jumping"}
SCENARIOS=${SCENARIOS:-"junk_100k_sources random_garbage spoofed_handshake_size valid_mac1_init_flood exact_replay bitflip_replay"}
export VPNS SCENARIOS
die() { echo "$(basename "$0"): $*" >&2; exit 2; }
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, got '$REPEAT'"
for r in $RATES; do [[ $r =~ ^[1-9][0-9]*$ ]] || die "RATES: '$r' is not a rate in pkt/s"; done
for d in $DURATIONS; do [[ $d =~ ^[1-9][0-9]*$ ]] || die "DURATIONS: '$d' is not seconds"; done
[[ -n ${PEERS_DIR:-} ]] || die "set PEERS_DIR to the peer harness directory (see docs/benchmarks.md)"

n_sc=$(wc -w <<<"$SCENARIOS")
n_vpn=$(wc -w <<<"$VPNS")
est=0
for d in $DURATIONS; do est=$((est + n_sc * n_vpn * (2 * d + 30) * $(wc -w <<<"$RATES"))); done
est=$((est * REPEAT))
passes=$((REPEAT * $(wc -w <<<"$RATES") * $(wc -w <<<"$DURATIONS")))
echo "[$(date +%T)] $passes passes of $n_sc scenarios x $n_vpn VPNs, about $((est / 60)) min; results: $OUT" >&2
pass=0 failed=0
for rep in $(seq "$REPEAT"); do
  for d in $DURATIONS; do
    for r in $RATES; do
      pass=$((pass + 1))
      echo "[$(date +%T)] pass $pass/$passes: repeat $rep, $r pkt/s, $d s" >&2
      if ! RATE=$r DURATION=$d bash "$here/abuse-matrix.sh" "$OUT"; then
        failed=$((failed + 1))
        echo "[$(date +%T)] pass $pass FAILED (its output above); going on" >&2
      fi
    done
  done
done
echo "[$(date +%T)] done: $passes passes, $failed failed" >&2
python3 "$here/report.py" summary "$OUT"
[[ $failed == 0 ]]
