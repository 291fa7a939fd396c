#!/usr/bin/env bash
# Images and clean-up for running docker-compose.yml with podman where there is no Docker engine and no
# image registry (tests/test_compose_run.py, `make compose-test`). Needs root (rootful podman).
#
#   bash docker/podman/compose_test.sh setup    # podman, podman-compose, runc, debootstrap (apt, if missing)
#   bash docker/podman/compose_test.sh build    # + the Debian base (once) and the four images below
#   bash docker/podman/compose_test.sh clean PROJECT   # remove PROJECT's containers, volumes, network
#   bash docker/podman/compose_test.sh rmi      # remove the images `build` named (keeps base + layer cache)
#   bash docker/podman/compose_test.sh purge    # delete the whole store: base, layer cache, everything
#   eval "$(bash docker/podman/compose_test.sh env)"   # then podman / podman-compose by hand
#
# Images: localhost/minutecast:$VERSION from the repository's Dockerfile (PYTHON_IMAGE = Debian's Python 3.11,
# docker/podman/Containerfile.python-base), and stand-ins of the same version for apache/kafka and redis
# (Containerfile.kafka, Containerfile.redis) that docker/podman/docker-compose.podman.yml swaps in.
# Machine-specific options stay here, out of the Dockerfiles: the host's CA bundle (PyPI through a
# TLS-intercepting proxy) and Java trust store (Maven) are mounted at build time only.
# Everything lives in a podman store of its own under $CACHE_DIR/storage (CONTAINERS_STORAGE_CONF), not in
# the machine's /var/lib/containers: the Debian base image and podman's layer cache stay there between runs
# (a repeat rebuilds only what changed); `rmi` removes the images' names, so no image of a run is left,
# only cache layers under $CACHE_IMAGE tags. A run never needs the cache: `purge` deletes the store.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE_DIR=${MINUTECAST_PODMAN_CACHE:-${HOME}/.cache/minutecast/podman}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' "$REPO/infra/maven/kafka-pom.xml")
DEBIAN_IMAGE=localhost/debian:bookworm
PYTHON_IMAGE=localhost/minutecast-podman/python:3.11
KAFKA_IMAGE=localhost/minutecast-podman/kafka:$KAFKA_VERSION
REDIS_IMAGE=localhost/minutecast-podman/redis:7
APP_IMAGE=localhost/minutecast:$VERSION
CACHE_IMAGE=localhost/minutecast-podman/cache  # tags that hold the layer cache (see rmi)
HOST_CA=/etc/ssl/certs/ca-certificates.crt   # PEM bundle: pip
HOST_TRUSTSTORE=/etc/ssl/certs/java/cacerts  # Java trust store with the same CAs: Maven
MAVEN_OPTS_BUILD="-Djavax.net.ssl.trustStore=/run/minutecast/cacerts -Djavax.net.ssl.trustStorePassword=changeit"
export CONTAINERS_CONF=$CACHE_DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$CACHE_DIR/storage.conf

log() { printf '[compose_test %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

config() {
  mkdir -p "$CACHE_DIR"
  # These sandboxes refuse setrlimit inside containers and run cgroups in hybrid mode. A private file
  # (CONTAINERS_CONF) instead of /etc/containers/containers.conf: nothing else on the machine changes.
  printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n' \
    >"$CONTAINERS_CONF"
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' \
    "$CACHE_DIR/storage" "/run/minutecast-podman" >"$CONTAINERS_STORAGE_CONF"
  # pip in the build reads /etc/pip.conf: trust the mounted host bundle (the proxy's CA).
  printf '[global]\ncert = %s\n' "$HOST_CA" >"$CACHE_DIR/pip.conf"
}

setup() {
  local tool missing=()
  for tool in podman podman-compose runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman podman-compose runc debootstrap >/dev/null
  fi
}

base() {
  if podman image exists "$DEBIAN_IMAGE"; then return; fi
  log "making $DEBIAN_IMAGE with debootstrap (about 30 s)"
  local rootfs
  rootfs=$(mktemp -d /tmp/minutecast-rootfs.XXXXXX)
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  tar -C "$rootfs" -c . | podman import -q - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
}

build() {
  setup
  base
  log "building $PYTHON_IMAGE, $REDIS_IMAGE, $KAFKA_IMAGE, $APP_IMAGE"
  # --layers: every step is cached in podman's storage, so a repeat only rebuilds what changed.
  podman build --layers -q -f "$REPO/docker/podman/Containerfile.python-base" -t "$PYTHON_IMAGE" \
    --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" "$REPO/docker/podman" >/dev/null
  podman build --layers -q -f "$REPO/docker/podman/Containerfile.redis" -t "$REDIS_IMAGE" \
    --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" "$REPO/docker/podman" >/dev/null
  # No PEM bundle mount here: on the bare base apt installs ca-certificates, which rewrites that file.
  local target
  # The build stages are tagged too (cache tags): their layers (Maven, pip, horovod) are the slow ones.
  for target in jars ""; do
    podman build --layers -q -f "$REPO/docker/podman/Containerfile.kafka" \
      ${target:+--target "$target"} -t "${target:+$CACHE_IMAGE:kafka-}${target:-$KAFKA_IMAGE}" \
      --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" --build-arg MAVEN_OPTS="$MAVEN_OPTS_BUILD" \
      --volume "$HOST_TRUSTSTORE:/run/minutecast/cacerts:ro" "$REPO" >/dev/null
  done
  for target in jars build ""; do
    podman build --layers -q -f "$REPO/Dockerfile" \
      ${target:+--target "$target"} -t "${target:+$CACHE_IMAGE:app-}${target:-$APP_IMAGE}" \
      --build-arg PYTHON_IMAGE="$PYTHON_IMAGE" --build-arg MAVEN_OPTS="$MAVEN_OPTS_BUILD" \
      --volume "$HOST_CA:$HOST_CA:ro" --volume "$HOST_TRUSTSTORE:/run/minutecast/cacerts:ro" \
      --volume "$CACHE_DIR/pip.conf:/etc/pip.conf:ro" "$REPO" >/dev/null
  done
  log "built; $(df -h --output=avail / | tail -1 | tr -d ' ') free on /"
}

clean() {  # PROJECT: everything podman-compose made for it (found by its label), even half-started
  local project=${1:?project name}
  local label="io.podman.compose.project=$project"
  # rm -v: also the anonymous volumes of the images' VOLUME lines (apache/kafka's /etc/kafka/secrets, ...),
  # which podman-compose 1.0's `down -v` leaves behind (docker compose's removes them).
  podman ps -aq --filter "label=$label" | xargs -r podman rm -f -v -t 5 >/dev/null
  podman volume ls -q --filter "label=$label" | xargs -r podman volume rm -f >/dev/null
  # podman-compose 1.0's `down` leaves the project network.
  podman network ls -q --filter "label=$label" | xargs -r podman network rm -f >/dev/null
}

rmi() {
  # The images go under their names; their layers stay as the cache, held by $CACHE_IMAGE tags (podman
  # deletes untagged parent layers with an image, and `image prune` deletes whole untagged chains).
  # Then the chains of earlier builds that no cache tag holds any more are pruned: one build's worth stays.
  local image name
  for image in "$APP_IMAGE" "$KAFKA_IMAGE" "$REDIS_IMAGE" "$PYTHON_IMAGE"; do
    name=${image##*/}
    if podman image exists "$image"; then
      podman tag "$image" "$CACHE_IMAGE:${name%%:*}"
      podman untag "$image" "$image" >/dev/null
    fi
  done
  podman image prune -f >/dev/null
}

purge() {  # the store is ours alone: every container and image in it, then the directory
  podman rm -af -v >/dev/null
  podman rmi -af >/dev/null
  rm -rf "$CACHE_DIR/storage"
}

cmd=${1:-}
shift || true
case "$cmd" in
  setup) config; setup ;;
  build) config; build ;;
  clean) config; clean "$@" ;;
  rmi) config; rmi ;;
  purge) config; purge ;;
  env) printf 'export CONTAINERS_CONF=%s\nexport CONTAINERS_STORAGE_CONF=%s\n' "$CONTAINERS_CONF" \
         "$CONTAINERS_STORAGE_CONF" ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
