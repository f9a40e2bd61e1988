#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, broker+controller) on 127.0.0.1 for tests and trials.
#   bash deploy/kafka/broker.sh start|stop|status DIR      (env KAFKA_PORT=19092; the controller
#   uses KAFKA_PORT+1). Jars from deploy/kafka/install.sh ($JUMPING_KAFKA_HOME). DIR keeps the
#   config, data (a restart with the same DIR keeps the topics) and kafka.log.
# Loopback only: this is not a production deployment (one replica, no TLS, no auth).
set -euo pipefail
cmd=${1:?usage: broker.sh start|stop|status DIR}
dir=${2:?usage: broker.sh start|stop|status DIR}
home=${JUMPING_KAFKA_HOME:-$HOME/.cache/jumping/kafka}
port=${KAFKA_PORT:-19092}
cport=$((port + 1))
pidf=$dir/kafka.pid
alive() { [[ -f $pidf ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; }
case $cmd in
  start)
    alive && { echo "broker already running (pid $(cat "$pidf"))"; exit 0; }
    [[ -d $home/libs ]] || { echo "broker.sh: no Kafka in $home (run deploy/kafka/install.sh)" >&2; exit 1; }
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<P
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
P
    cat >"$dir/log4j.properties" <<'P'
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
P
    cp=("$home/libs/*")
    if [[ ! -f $dir/data/meta.properties ]]; then
      cid=$(java -cp "${cp[0]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
      java -Dlog4j.configuration="file:$dir/log4j.properties" -cp "${cp[0]}" kafka.tools.StorageTool format \
        -t "$cid" -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
        { echo "broker.sh: storage format failed:" >&2; cat "$dir/format.log" >&2; exit 1; }
    fi
    # a test broker shares the machine with the nodes under test: lowest CPU priority, one GC
    # thread and the quick JIT, so its start and stop do not starve them (KAFKA_NICE=0 to undo)
    read -r -a jvm <<<"${KAFKA_JVM_OPTS:--Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
    nohup nice -n "${KAFKA_NICE:-19}" java "${jvm[@]}" -Dlog4j.configuration="file:$dir/log4j.properties" \
      -cp "${cp[0]}" kafka.Kafka "$dir/server.properties" >"$dir/kafka.log" 2>&1 &
    echo $! >"$pidf"
    # ready = answers a metadata request (kcat), or at least accepts connections
    ready() {
      if command -v kcat >/dev/null; then kcat -b "127.0.0.1:$port" -L -m 2 >/dev/null 2>&1
      else (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; fi
    }
    for _ in $(seq 600); do
      alive || { echo "broker.sh: broker exited:" >&2; tail -20 "$dir/kafka.log" >&2; exit 1; }
      if ready; then echo "broker up on 127.0.0.1:$port (pid $(cat "$pidf"))"; exit 0; fi
      sleep 0.1
    done
    echo "broker.sh: broker not ready within 60 s" >&2; exit 1 ;;
  stop)
    if alive; then
      pid=$(cat "$pidf"); kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"; echo "broker stopped" ;;
  status) alive && echo "running (pid $(cat "$pidf"))" || { echo "not running"; exit 1; } ;;
  *) echo "usage: broker.sh start|stop|status DIR" >&2; exit 2 ;;
esac
