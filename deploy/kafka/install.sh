#!/usr/bin/env bash
# Install an Apache Kafka broker from Maven Central (org.apache.kafka jars, run with java):
# the broker (kafka_2.13, KRaft) and the admin tools (kafka-tools: TopicCommand...).
#   bash deploy/kafka/install.sh [DEST]       (default $JUMPING_KAFKA_HOME or ~/.cache/jumping/kafka)
#   KAFKA_VERSION=3.9.1 (default)
# Idempotent. No download from anywhere but Maven Central, through mvn. No Docker.
set -euo pipefail
KAFKA_VERSION=${KAFKA_VERSION:-3.9.1}
dest=${1:-${JUMPING_KAFKA_HOME:-$HOME/.cache/jumping/kafka}}
if [[ -f $dest/libs/.complete-$KAFKA_VERSION ]]; then echo "kafka $KAFKA_VERSION already in $dest"; exit 0; fi
command -v mvn >/dev/null || { echo "install.sh: maven (mvn) is required" >&2; exit 1; }
command -v java >/dev/null || { echo "install.sh: java is required" >&2; exit 1; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>jumping</groupId><artifactId>kafka-broker</artifactId><version>0</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
POM
mkdir -p "$dest"
echo "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $dest/libs" >&2
# into a fresh directory, moved into place only when complete: never a mix of versions
rm -rf "$dest/libs.new"
(cd "$tmp" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$dest/libs.new" -DincludeScope=runtime) ||
  { echo "install.sh: mvn could not fetch the Kafka jars (is Maven Central reachable?)" >&2; exit 1; }
[[ -f $dest/libs.new/kafka_2.13-$KAFKA_VERSION.jar ]] ||
  { echo "install.sh: kafka_2.13-$KAFKA_VERSION.jar missing after mvn" >&2; exit 1; }
touch "$dest/libs.new/.complete-$KAFKA_VERSION"
rm -rf "$dest/libs" && mv "$dest/libs.new" "$dest/libs"
echo "kafka $KAFKA_VERSION installed: $(ls "$dest/libs" | wc -l) jars" >&2
