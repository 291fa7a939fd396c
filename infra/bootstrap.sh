#!/usr/bin/env bash
# Set up everything minutecast needs on a fresh Debian machine; idempotent and quick on repeats.
#   bash infra/bootstrap.sh                   (what `make setup` and `make test` run)
#   bash infra/bootstrap.sh --defer-horovod   (what `make run` runs: horovod builds in the background)
# System packages (Java 17, Maven, redis-server, cmake, a C++ compiler, npm, chromium) come from apt when missing;
# Python packages go into a virtualenv under the cache ($MINUTECAST_CACHE, default ~/.cache/minutecast);
# horovod is built from source against the pinned TensorFlow (last: only the trainer needs it); Maven jars land
# in the cache too.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${MINUTECAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/minutecast}
VENV=${MINUTECAST_VENV:-$CACHE/venv}
log() { printf '[setup] %s\n' "$*"; }
DEFER_HOROVOD=0
[ "${1:-}" = --defer-horovod ] && DEFER_HOROVOD=1

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
# horovod (and, under --defer-horovod, TensorFlow and the test tools) may be installing in the background from an
# earlier run: never a second pip in the same virtualenv at once.
HVD_STATUS="$VENV/.minutecast-horovod-build" HVD_LOG="$VENV/horovod-build.log"
hvd_building() {  # a background install/build of an earlier run still going
  local s; s=$(cat "$HVD_STATUS" 2>/dev/null || true)
  [[ $s == building\ * ]] && kill -0 "${s#building }" 2>/dev/null
}
if hvd_building && [ "$DEFER_HOROVOD" = 0 ]; then
  log "waiting for the background install (TensorFlow, horovod; log $HVD_LOG)"
  while hvd_building; do sleep 5; done
fi
stamp="$VENV/.minutecast-deps"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
STAGE2=0  # 1: TensorFlow and the dev tools go in the background (make run on a fresh virtualenv)
if hvd_building; then
  log "the background install of an earlier run is still going (log $HVD_LOG)"
elif [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ "$DEFER_HOROVOD" = 1 ] && ! "$VENV/bin/python" -c 'import tensorflow' 2>/dev/null; then
    # Forecasts first: the pipeline (Kafka, Redis, Faust, Spark, the web app) needs no TensorFlow until a model
    # is promoted, so only its packages go in now; TensorFlow, the test tools and horovod follow in the background.
    log "installing the pipeline's Python packages (TensorFlow and horovod follow in the background)"
    "$PY" -c 'import tomllib; [print(d) for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
               if not d.startswith("tensorflow")]' > "$VENV/.minutecast-core-requirements.txt"
    "$VENV/bin/pip" install -q -r "$VENV/.minutecast-core-requirements.txt"
    "$VENV/bin/pip" install -q --no-deps -e .
    STAGE2=1
  else
    log "installing Python packages (TensorFlow, pyspark, faust, ...): a few minutes the first time"
    "$VENV/bin/pip" install -q -e ".[dev]"
    echo "$want" > "$stamp"
  fi
else
  "$VENV/bin/pip" install -q --no-deps -e . 2>/dev/null
fi
log "vendoring the dashboard's browser libraries (npm ci, web/package-lock.json) into web/static/vendor"
bash web/vendor.sh
log "fetching Maven jars (Kafka broker, Spark Kafka connector) into $CACHE/jars"
MINUTECAST_CACHE="$CACHE" "$VENV/bin/minutecast" infra fetch >/dev/null

# horovod: only the trainer needs it. --defer-horovod (make run) builds it in the background (after TensorFlow and
# the test tools on a fresh virtualenv), so the pipeline starts now and the trainer when the build is done
# (infra/horovod_build.py reads the status file).
build_horovod() {
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
  HOROVOD_WITHOUT_MXNET=1 "$VENV/bin/pip" install -q --no-build-isolation --no-cache-dir "horovod==0.28.1"
}
install_rest() {  # stage 2 of a fresh make run: TensorFlow and the dev tools, then the deps stamp
  "$VENV/bin/pip" install -q -e ".[dev]" && echo "$WANT" > "$VENV/.minutecast-deps"
}
if ! "$VENV/bin/python" -c 'import horovod.tensorflow' 2>/dev/null; then
  if hvd_building; then
    if [ "$DEFER_HOROVOD" = 1 ]; then
      log "horovod: the background build is still running (log $HVD_LOG)"
    else
      log "waiting for the background horovod build (log $HVD_LOG)"
      while hvd_building; do sleep 5; done
      "$VENV/bin/python" -c 'import horovod.tensorflow' 2>/dev/null \
        || { echo "the horovod build failed: see $HVD_LOG" >&2; exit 1; }
    fi
  elif [ "$DEFER_HOROVOD" = 1 ]; then
    what="building horovod 0.28.1"
    [ "$STAGE2" = 1 ] && what="installing TensorFlow and the test tools, then building horovod 0.28.1"
    log "$what in the background (about 5 minutes on 2 cores; only the trainer waits for it; log $HVD_LOG)"
    # setsid + nohup: the build outlives this script and a Ctrl-C of `make run`; it records its own result.
    # nice 19: on 2 cores the compiler would otherwise compete with the Spark job's start (first forecasts).
    setsid nohup nice -n 19 bash -c "$(declare -f install_rest build_horovod); VENV='$VENV' WANT='$want'
      if { [ $STAGE2 = 0 ] || install_rest; } && build_horovod; then echo ok > '$HVD_STATUS'
      else echo \"failed \$?\" > '$HVD_STATUS'; fi" >"$HVD_LOG" 2>&1 < /dev/null &
    echo "building $!" > "$HVD_STATUS"
  else
    log "building horovod 0.28.1 (Gloo, TensorFlow) from source: about 4 minutes on 2 cores"
    build_horovod
    echo ok > "$HVD_STATUS"
  fi
fi
log "ready: $VENV"
