#!/usr/bin/env bash
# kafka-run-class.sh of the stand-in Kafka image: run a class of /opt/kafka/libs with the usual variables
# (KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_OPTS, KAFKA_LOG4J_OPTS), as Kafka's own script does.
set -euo pipefail
home=${KAFKA_HOME:-/opt/kafka}
heap=${KAFKA_HEAP_OPTS:--Xmx256M}
perf=${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}
log4j=${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$home/config/tools-log4j2.yaml}
# shellcheck disable=SC2086 # the option variables are word lists, as in Kafka's script
exec java $heap $perf $log4j ${KAFKA_OPTS:-} -cp "$home/libs/*" "$@"
