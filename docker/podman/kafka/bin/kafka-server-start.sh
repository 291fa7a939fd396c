#!/usr/bin/env bash
# kafka-server-start.sh CONFIG: the broker, with Kafka's defaults for heap and logging.
home=${KAFKA_HOME:-/opt/kafka}
export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}
export KAFKA_LOG4J_OPTS=${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$home/config/log4j2.yaml}
exec "$(dirname "$0")/kafka-run-class.sh" kafka.Kafka "$@"
