#!/usr/bin/env bash
# Set up everything minutecast needs on a fresh Debian machine; idempotent and quick on repeats.
#   bash infra/bootstrap.sh        (what `make setup` runs)
# System packages (Java 17, Maven, redis-server, cmake, a C++ compiler, npm, chromium) come from apt when missing;
# Python packages go into a virtualenv under the cache ($MINUTECAST_CACHE, default ~/.cache/minutecast);
# horovod is built from source against the pinned TensorFlow; Maven jars land in the cache too.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${MINUTECAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/minutecast}
VENV=${MINUTECAST_VENV:-$CACHE/venv}
log() { printf '[setup] %s\n' "$*"; }

missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
command -v npm >/dev/null || missing+=(npm)            # vendors the dashboard's chart library (web/vendor.sh)
command -v chromium >/dev/null || missing+=(chromium)  # headless browser of the dashboard test
if [ ${#missing[@]} -gt 0 ]; then
  log "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=$(command -v python3.11 || command -v python3)
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "minutecast needs Python 3.11 (found $($PY --version))" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
fi
stamp="$VENV/.minutecast-deps"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing Python packages (TensorFlow, pyspark, faust, ...): a few minutes the first time"
  "$VENV/bin/pip" install -q -e ".[dev]"
  echo "$want" > "$stamp"
else
  "$VENV/bin/pip" install -q --no-deps -e . 2>/dev/null
fi
if ! "$VENV/bin/python" -c 'import horovod.tensorflow' 2>/dev/null; then
  log "building horovod 0.28.1 (Gloo, TensorFlow) from source: about 4 minutes on 2 cores"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
  HOROVOD_WITHOUT_MXNET=1 "$VENV/bin/pip" install -q --no-build-isolation --no-cache-dir "horovod==0.28.1"
fi
log "vendoring the dashboard's browser libraries (npm ci, web/package-lock.json) into web/static/vendor"
bash web/vendor.sh
log "fetching Maven jars (Kafka broker, Spark Kafka connector) into $CACHE/jars"
MINUTECAST_CACHE="$CACHE" "$VENV/bin/minutecast" infra fetch >/dev/null
log "ready: $VENV"
