#!/usr/bin/env bash
# Entry point of the `kafka` service (official apache/kafka image): create the SCRAM user, then start as usual.
#
#   entrypoint: ["bash", "/opt/minutecast/kafka-entrypoint.sh"]    command: ["/etc/kafka/docker/run"]
#   bash docker/kafka-entrypoint.sh --print-config    # only print the properties rendered from KAFKA_*
#
# The image formats the KRaft storage itself but cannot add SCRAM credentials (its KafkaDockerWrapper runs
# `kafka-storage.sh format` without --add-scram), and a SCRAM listener needs its user before any client
# can log in. So, when the data directory is still empty, this script formats it first with the same
# properties the image renders from the KAFKA_* variables plus `--add-scram` for SCRAM_USERNAME /
# SCRAM_PASSWORD. The image's own start-up then finds the storage "already formatted" (which it expects
# on every restart) and starts the broker. It runs in the broker's own container, so nothing can start
# the broker on an unformatted volume first (podman-compose ignores healthchecks and start-up order).
set -euo pipefail

# Kafka's StorageTool; STORAGE_TOOL only for trying this script outside the image.
storage_tool=${STORAGE_TOOL:-/opt/kafka/bin/kafka-storage.sh}

# KAFKA_FOO_BAR=x -> foo.bar=x, with '___' -> '-' and '__' -> '_', skipping the JVM/launcher variables:
# the same rules as the image's KafkaDockerWrapper.
render_properties() {
  local name key
  while IFS= read -r name; do
    case "$name" in
      KAFKA_VERSION | KAFKA_HOME | KAFKA_HEAP_OPTS | KAFKA_LOG4J_OPTS | KAFKA_OPTS | KAFKA_JMX_OPTS | \
        KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_GC_LOG_OPTS | KAFKA_LOG4J_ROOT_LOGLEVEL | KAFKA_LOG4J_LOGGERS | \
        KAFKA_TOOLS_LOG4J_LOGLEVEL | KAFKA_JMX_HOSTNAME | KAFKA_JMX_PORT) continue ;;
    esac
    key=$(printf '%s' "${name#KAFKA_}" | tr '[:upper:]' '[:lower:]' | sed -e 's/_/./g' -e 's/\.\.\./-/g' -e 's/\.\./_/g')
    printf '%s=%s\n' "$key" "${!name}"
  done < <(compgen -e | grep '^KAFKA_' | LC_ALL=C sort)
}

if [ "${1:-}" = "--print-config" ]; then
  render_properties
  exit 0
fi

: "${CLUSTER_ID:?CLUSTER_ID is not set}"
: "${KAFKA_LOG_DIRS:?KAFKA_LOG_DIRS is not set}"
log_dir=${KAFKA_LOG_DIRS%%,*}

if [ ! -f "$log_dir/meta.properties" ]; then
  : "${SCRAM_USERNAME:?SCRAM_USERNAME is not set}"
  : "${SCRAM_PASSWORD:?SCRAM_PASSWORD is not set (MINUTECAST_KAFKA_SASL_PASSWORD in .env)}"
  case "$SCRAM_USERNAME$SCRAM_PASSWORD" in
    *[!A-Za-z0-9._~-]*)
      echo "kafka: the SCRAM user name and password may only use letters, digits and . _ ~ -" >&2
      exit 1 ;;
  esac
  conf=$(mktemp)
  trap 'rm -f "$conf"' EXIT
  render_properties >"$conf"
  echo "kafka: formatting $log_dir (cluster $CLUSTER_ID) with SCRAM-SHA-512 user $SCRAM_USERNAME"
  # The tool prints the credential record (salt and keys): keep that out of the logs.
  if ! out=$("$storage_tool" format --cluster-id "$CLUSTER_ID" --config "$conf" \
    --add-scram "SCRAM-SHA-512=[name=$SCRAM_USERNAME,password=$SCRAM_PASSWORD]" 2>&1); then
    printf '%s\n' "$out" | sed -E 's/UserScramCredentialRecord\([^)]*\)/UserScramCredentialRecord(redacted)/g' >&2
    exit 1
  fi
  printf '%s\n' "$out" | grep -v 'UserScramCredentialRecord' || true
  rm -f "$conf"
  trap - EXIT
fi

unset SCRAM_PASSWORD  # the broker itself needs no copy
exec "$@"
