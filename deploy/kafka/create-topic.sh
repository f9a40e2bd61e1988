#!/usr/bin/env bash
# Create the Jumping event topic with deploy/kafka/topic.properties, using Kafka's own admin
# tool (org.apache.kafka.tools.TopicCommand from the jars of install.sh). Idempotent.
#   bash deploy/kafka/create-topic.sh BOOTSTRAP [TOPIC]        (TOPIC default: jumping-events)
#   env PARTITIONS=6 REPLICATION=3; with REPLICATION < 3, min.insync.replicas is lowered so
#   that acks=all writes still succeed (a single test broker: REPLICATION=1).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bootstrap=${1:?usage: create-topic.sh BOOTSTRAP [TOPIC]}
topic=${2:-jumping-events}
partitions=${PARTITIONS:-6}
replication=${REPLICATION:-3}
home=${JUMPING_KAFKA_HOME:-$HOME/.cache/jumping/kafka}
[[ -d $home/libs ]] || { echo "create-topic.sh: no Kafka in $home (run deploy/kafka/install.sh)" >&2; exit 1; }
[[ $partitions =~ ^[1-9][0-9]*$ && $replication =~ ^[1-9][0-9]*$ ]] ||
  { echo "create-topic.sh: PARTITIONS and REPLICATION must be positive integers" >&2; exit 2; }
configs=()
while IFS='=' read -r k v; do
  [[ -z $k || $k == \#* ]] && continue
  if [[ $k == min.insync.replicas ]] && ((v > replication - 1)); then v=$((replication > 1 ? replication - 1 : 1)); fi
  configs+=(--config "$k=$v")
done <"$here/topic.properties"
log4j=$(mktemp); trap 'rm -f "$log4j"' EXIT
printf 'log4j.rootLogger=ERROR, e\nlog4j.appender.e=org.apache.log4j.ConsoleAppender\nlog4j.appender.e.layout=org.apache.log4j.PatternLayout\nlog4j.appender.e.Target=System.err\n' >"$log4j"
tool() { java -Xmx256m -Dlog4j.configuration="file:$log4j" -cp "$home/libs/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" "$@"; }
tool --create --if-not-exists --topic "$topic" --partitions "$partitions" \
  --replication-factor "$replication" "${configs[@]}"
tool --describe --topic "$topic"
