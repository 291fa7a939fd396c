# The minutecast image: every minutecast service (producer, Faust worker, Spark job, trainer, web) and the CLI.
#
#   docker build -t minutecast:0.1.0 .                      # or: docker compose build
#   docker build -t minutecast:0.1.0-gpu --build-arg TF_PACKAGE='tensorflow[and-cuda]==2.15.1' .
#   docker run --rm minutecast:0.1.0 --help
#
# Stages: `jars` fetches Spark's Kafka connector with Maven (versions from infra/maven/spark-pom.xml); `web`
# vendors the dashboard's chart library with npm (web/package-lock.json);
# `build` installs the pinned Python packages from pyproject.toml into /opt/venv and builds horovod from
# source against them (Gloo, TensorFlow; no MPI), then the project itself; the final stage is Python 3.11
# with Java 17 (Spark), the venv and the jars, running as a non-root user. No compilers in it.
# PYTHON_IMAGE may name any Debian bookworm image with python3.11 (+ venv and headers) on PATH as python3.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- Spark's Kafka connector jars, laid out as infra/jars.py expects under $MINUTECAST_CACHE ----------
FROM ${PYTHON_IMAGE} AS jars
# Maven honours MAVEN_OPTS (e.g. a trust store for a TLS-intercepting proxy); empty by default.
ARG MAVEN_OPTS=""
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends maven \
 && rm -rf /var/lib/apt/lists/*
COPY infra/maven/ /src/infra/maven/
RUN version=$(sed -n 's:.*<spark.version>\([^<]*\)</spark.version>.*:\1:p' /src/infra/maven/spark-pom.xml) \
 && test -n "$version" \
 && mvn -q -B -s /src/infra/maven/settings.xml -f /src/infra/maven/spark-pom.xml \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="/cache/jars/spark-kafka-$version" \
 && ls "/cache/jars/spark-kafka-$version/"spark-sql-kafka-*.jar \
 && rm -rf /root/.m2

# ---- the dashboard's browser libraries (uPlot, swagger-ui), pinned in web/package-lock.json ----------------
# Debian's npm in a throwaway stage; only the vendored files go on (nothing is loaded from a CDN at run time).
FROM ${PYTHON_IMAGE} AS web
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm \
 && rm -rf /var/lib/apt/lists/*
COPY web/package.json web/package-lock.json web/vendor.sh /src/web/
RUN bash /src/web/vendor.sh && ls /src/web/static/vendor/uPlot.iife.min.js

# ---- Python packages and horovod ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# Another TensorFlow build instead of pyproject's tensorflow-cpu (the GPU image); empty: pyproject's.
ARG TF_PACKAGE=""
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ make cmake \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv \
 && pip install "setuptools>=77,<85" "wheel>=0.43"
# The pinned dependencies first: this layer survives code changes.
COPY pyproject.toml /src/pyproject.toml
COPY docker/requirements.py /src/docker/requirements.py
RUN python /src/docker/requirements.py /src/pyproject.toml --tensorflow "$TF_PACKAGE" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
# horovod's last release, built against the TensorFlow just installed (as infra/bootstrap.sh does locally).
RUN HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    pip install --no-build-isolation "horovod==0.28.1" \
 && python -c "import horovod.tensorflow as hvd; assert hvd.gloo_built(), 'horovod without Gloo'" \
 && find /opt/venv -path '*horovod*' -name '*.so' -exec strip --strip-unneeded {} +
COPY README.md /src/README.md
COPY minutecast/ /src/minutecast/
COPY ops/ /src/ops/
COPY infra/ /src/infra/
COPY producers/ /src/producers/
COPY streams/ /src/streams/
COPY training/ /src/training/
COPY benchmarks/ /src/benchmarks/
COPY web/ /src/web/
COPY --from=web /src/web/static/vendor/ /src/web/static/vendor/
RUN pip install --no-deps /src \
 && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

# ---- the image --------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="minutecast" \
      org.opencontainers.image.description="5-minute-ahead forecasts of S&P 500 stocks from live 1-minute bars" \
      org.opencontainers.image.licenses="Apache-2.0"
# Java 17 for Spark; ssh for horovodrun -H across hosts; tini comes from the engine (compose `init: true`).
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openjdk-17-jre-headless libstdc++6 openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/minutecast \
      --shell /usr/sbin/nologin minutecast \
 && mkdir -p /var/lib/minutecast/models /var/lib/minutecast/checkpoints /var/lib/minutecast/reports \
      /var/lib/minutecast/logs \
 && chown -R minutecast:minutecast /var/lib/minutecast
# (named volumes mounted on these directories start as copies of them, owned by minutecast)
COPY --from=build /opt/venv /opt/venv
COPY --from=jars /cache/jars /opt/minutecast/cache/jars
COPY docker/entrypoint.py /opt/minutecast/entrypoint.py
# MINUTECAST_CACHE: infra.jars finds the baked connector jars there (never fetches at run time).
ENV PATH=/opt/venv/bin:$PATH \
    MINUTECAST_HOME=/var/lib/minutecast \
    MINUTECAST_CACHE=/opt/minutecast/cache \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER minutecast
WORKDIR /home/minutecast
ENTRYPOINT ["python", "/opt/minutecast/entrypoint.py"]
CMD ["--help"]
