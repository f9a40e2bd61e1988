#!/usr/bin/env bash
# Coverage-guided fuzzing of the wire with atheris, offline: runs the harness in chunks of
# CHUNK_S seconds (so a shared machine can interleave other work) until EXECS executions,
# growing a work corpus seeded from the committed one. Prints executions, coverage and any
# crash (crash-* files land in $WORK). Needs: pip install atheris.
#   EXECS=10000000 CHUNK_S=240 WORK=/tmp/jumping-fuzz tests/fuzz/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
EXECS=${EXECS:-10000000}
CHUNK_S=${CHUNK_S:-240}
WORK=${WORK:-/tmp/jumping-fuzz}
RUNNER=${RUNNER:-}            # e.g. RUNNER=jt-test to take a shared machine lock per chunk
mkdir -p "$WORK/corpus"
cp -n "$here"/corpus/* "$WORK/corpus/" 2>/dev/null || true
done_execs=0
[[ -f $WORK/execs ]] && done_execs=$(cat "$WORK/execs")
while (( done_execs < EXECS )); do
  left=$(( EXECS - done_execs ))
  log="$WORK/chunk-$(date +%s).log"
  (cd "$WORK" && PYTHONPATH="$root" $RUNNER python3 "$here/harness.py" -max_total_time="$CHUNK_S" \
      -runs="$left" -print_final_stats=1 -rss_limit_mb=2048 "$WORK/corpus" >"$log" 2>&1) || {
    echo "fuzzer stopped with an error (a crash?): see $log"; tail -30 "$log"; exit 1; }
  n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  done_execs=$(( done_execs + ${n:-0} ))
  echo "$done_execs" >"$WORK/execs"
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "$(date -u +%H:%M:%S) chunk: ${n:-0} executions, total $done_execs, $cov, corpus $(ls "$WORK/corpus" | wc -l)"
done
echo "done: $done_execs executions; crashes: $(ls "$WORK"/crash-* 2>/dev/null | wc -l)"
