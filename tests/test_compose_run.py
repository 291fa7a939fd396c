"""docker-compose.yml for real: build the images, start the stack with podman-compose, see forecasts come out.

    make compose-test     # = python -m pytest -m compose tests/test_compose_run.py  (root: rootful podman)

There is no Docker engine on our machines and no image registry, so (docker/podman/compose_test.sh):
the project's image is built from the repository's Dockerfile on Debian bookworm's Python 3.11 (a Debian
base made with debootstrap), and docker/podman/docker-compose.podman.yml swaps only the two official
images that cannot be pulled, apache/kafka and redis, for local builds of the same role and version.
Then the test starts Kafka (SASL/SCRAM), Redis, the topic init, the replay producer on a slice of
recorded bars (3 tickers, 150 minutes; a copy in a temporary directory), the Faust worker and the Spark
inference job exactly as docker-compose.yml defines them, and checks from OUTSIDE the containers, over
the published loopback ports with the credentials of its own .env, that the last ready window of every
ticker got a forecast on the forecasts topic, that every forecast there is for a ready window of the
slice, that nothing was dead-lettered, and that Redis holds each ticker's latest forecast. Afterwards no
container, volume, network or image of the run is left; the Debian base and the layer cache stay in the
test's own podman store under ~/.cache/minutecast/podman, so a repeat is fast (a run never needs them).
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import redis as redis_lib
import yaml
from confluent_kafka import ConsumerGroupState

from infra import jars
from minutecast.forecast_store import ForecastStore
from minutecast.kafka import end_offsets, ensure_topics, make_admin, make_consumer, make_producer, wait_for_kafka
from minutecast.keys import Keys
from minutecast.schemas import Forecast
from minutecast.settings import KafkaSettings, RedisSettings, StreamSettings
from minutecast.topics import Topics
from minutecast.window import ready_windows
from tests.support.compose import ha_env
from tests.support.kafka import read_topic, replicated_partitions, topic_config
from tests.support.services import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docker" / "podman" / "compose_test.sh"
OVERRIDE = REPO / "docker" / "podman" / "docker-compose.podman.yml"
# What the test starts: the default services minus the live producer (Yahoo is not reachable) and the
# trainer (retraining is not what is checked here; serving falls back to persistence without a model),
# then the `replay` profile's producer once the Faust worker has joined its group, so the worker takes the
# bars live (a worker that starts after them takes its start-up rebuild path instead).
# podman-compose 1.0 (Debian) has no --profile: services are named explicitly.
SERVICES = ("kafka", "redis", "topics", "stream", "infer", "web")
PRODUCER = "producer-replay"
TICKERS = ("AAPL", "MSFT", "NVDA")
DAY, FIRST, MINUTES = "2025-12-30", "09:30", 150  # a regular session's first 150 minutes
BUILD_TIMEOUT_S = 3000  # cold: pip (TensorFlow, pyspark) + horovod from source on 2 cores
FORECAST_TIMEOUT_S = 900


def _podman_env() -> dict[str, str]:
    """The environment podman needs here: compose_test.sh's engine configuration and image store."""
    out = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    pairs = (line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export "))
    return {**os.environ, **dict(pairs)}


def _password() -> str:
    return "t" + secrets.token_hex(16)  # letters and digits: what the Kafka entry point accepts


def write_slice(shared: Path, dest: Path) -> dict[str, np.ndarray]:
    """Copy the slice's bars to ``dest/<T>.csv.gz``; return each ticker's ready window ends (epoch s)."""

    dest.mkdir(parents=True)
    expected: dict[str, np.ndarray] = {}
    for ticker in TICKERS:
        with gzip.open(shared / f"{ticker}.csv.gz", "rt") as f:
            header, *rows = f.read().splitlines()
        day = [r for r in rows if r.startswith(f"{DAY}T") and r[11:16] >= FIRST][:MINUTES]
        assert len(day) >= 100, f"{ticker}: only {len(day)} bars on {DAY}"
        with gzip.open(dest / f"{ticker}.csv.gz", "wt") as f:
            f.write("\n".join([header, *day]) + "\n")
        frame = pd.read_csv(dest / f"{ticker}.csv.gz")
        minutes = pd.to_datetime(frame["Datetime"], utc=True).astype("int64").to_numpy() // 10**9
        ohlcv = frame[["Open", "High", "Low", "Close", "Volume"]].to_numpy(dtype=np.float64)
        expected[ticker] = ready_windows(minutes, ohlcv).ends
    return expected


class Stack:
    """One podman-compose project of docker-compose.yml + the podman override, in its own directory."""

    def __init__(self, workdir: Path, project: str, env: dict[str, str]) -> None:
        self.dir, self.project, self.env = workdir, project, env
        # The compose files are copied beside the test's .env (podman-compose 1.0 reads .env only next to
        # the first file and has no --env-file); the relative paths they use (./docker/...) point back
        # into the repository through a symlink. The images are built by compose_test.sh (--no-build).
        shutil.copy(REPO / "docker-compose.yml", workdir / "docker-compose.yml")
        shutil.copy(OVERRIDE, workdir / "docker-compose.podman.yml")
        (workdir / "docker").symlink_to(REPO / "docker")

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = ["podman-compose", "-p", self.project, "-f", "docker-compose.yml", "-f", "docker-compose.podman.yml",
               *args]
        return subprocess.run(cmd, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def podman(self, *args: str) -> str:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=120,
                              check=True).stdout

    def names(self, kind: str) -> list[str]:
        """Containers / volumes / networks that podman-compose labelled with this project."""
        fmt = {"ps": "{{.Names}}", "volume": "{{.Name}}", "network": "{{.Name}}"}[kind]
        args = ["ps", "-a"] if kind == "ps" else [kind, "ls"]
        out = self.podman(*args, "--filter", f"label=io.podman.compose.project={self.project}", "--format", fmt)
        return out.split()

    def logs(self, tail: int = 40) -> str:
        parts = []
        for name in self.names("ps"):
            state = self.podman("inspect", "--format", "{{.State.Status}} exit={{.State.ExitCode}}", name).strip()
            out = subprocess.run(["podman", "logs", "--tail", str(tail), name], env=self.env, capture_output=True,
                                 text=True, check=False)
            parts.append(f"----- {name} ({state})\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    def volumes_in_use(self) -> list[str]:
        """Every volume the project's containers mount, the images' anonymous VOLUMEs included."""
        fmt = '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}'
        return [v for name in self.names("ps") for v in self.podman("inspect", "--format", fmt, name).split()]

    def down(self) -> list[str]:
        """``podman-compose down -v``, then what podman-compose 1.0 leaves: the network, anonymous volumes
        (docker compose's ``down -v`` removes both), anything half-started. Returns the volumes it used."""
        volumes = self.volumes_in_use()
        self.compose("down", "-v", "-t", "20", timeout=300)
        subprocess.run(["bash", str(SCRIPT), "clean", self.project], env=self.env, check=False, timeout=300)
        for volume in volumes:
            subprocess.run(["podman", "volume", "rm", "-f", volume], env=self.env, capture_output=True, check=False)
        return volumes


@pytest.fixture(scope="module")
def podman_ready() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the compose test needs root (rootful podman)")
        pytest.skip("the compose test needs root (rootful podman)")


def _wait_for_topic(ks: KafkaSettings, topic: str, deadline: float) -> None:

    admin = make_admin(ks, log_level=2)  # quiet: "connection refused" until the broker is up
    while time.monotonic() < deadline:
        try:
            if topic in admin.list_topics(timeout=5).topics:
                return
        except Exception:  # noqa: BLE001, S110 - the broker is still starting: try again
            pass
        time.sleep(2)
    raise AssertionError(f"topic {topic} never appeared")


def _wait_for_group(ks: KafkaSettings, group: str, deadline: float) -> None:
    """Until the consumer group has a member and is stable (the Faust worker is consuming)."""

    admin = make_admin(ks, log_level=2)  # quiet: "connection refused" until the broker is up
    while time.monotonic() < deadline:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            if desc.state == ConsumerGroupState.STABLE and desc.members:
                return
        except Exception:  # noqa: BLE001, S110 - the group does not exist yet: try again
            pass
        time.sleep(2)
    raise AssertionError(f"consumer group {group} never became stable")


def _forecasts(ks: KafkaSettings, topic: str, group: str, want: set[tuple[str, int]],
               deadline: float) -> Iterator[Forecast]:
    """Forecasts read from ``topic`` until every (ticker, as_of) in ``want`` was seen or the deadline."""

    consumer = make_consumer(ks, group)
    consumer.subscribe([topic])
    seen: set[tuple[str, int]] = set()
    try:
        while time.monotonic() < deadline and not want <= seen:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            f = Forecast.from_json(msg.value())
            seen.add((f.ticker, f.as_of))
            yield f
    finally:
        consumer.close()


def _yaml(path: Path) -> dict[str, Any]:

    return dict(yaml.safe_load(path.read_text()))


def test_podman_override_only_swaps_the_official_images_for_the_same_versions() -> None:
    """What runs under podman is docker-compose.yml itself, except the two images no registry serves here."""

    base, override = _yaml(REPO / "docker-compose.yml")["services"], _yaml(OVERRIDE)
    assert set(override) == {"services"} and set(override["services"]) == {"kafka", "kafka-2", "kafka-3", "redis"}
    assert all(set(s) == {"image"} for s in override["services"].values())
    kafka, redis_image = override["services"]["kafka"]["image"], override["services"]["redis"]["image"]
    version = jars.kafka_version()
    for node in ("kafka", "kafka-2", "kafka-3"):  # the ha profile's nodes: one image, one version
        assert base[node]["image"] == f"apache/kafka:{version}" and override["services"][node]["image"] == kafka
    assert kafka.endswith(f":{version}")
    assert base["redis"]["image"].startswith("redis:7.") and redis_image.endswith(":7")
    assert set(SERVICES) | {PRODUCER} <= set(base)
    assert "replay" in base[PRODUCER]["profiles"]


def test_kafka_stand_in_starts_like_the_official_image() -> None:
    """The compose file's Kafka command and entry point find in the stand-in what apache/kafka has."""
    base = _yaml(REPO / "docker-compose.yml")["services"]["kafka"]
    run = (REPO / "docker" / "podman" / "kafka" / "docker" / "run").read_text()
    containerfile = (REPO / "docker" / "podman" / "Containerfile.kafka").read_text()
    assert base["command"] == ["/etc/kafka/docker/run"] and 'CMD ["/etc/kafka/docker/run"]' in containerfile
    assert "kafka.docker.KafkaDockerWrapper setup" in run and "kafka-server-start.sh" in run
    assert (REPO / "docker" / "podman" / "kafka" / "bin" / "kafka-storage.sh").exists()  # kafka-entrypoint.sh's tool
    assert "infra/maven/kafka-pom.xml" in containerfile  # the local broker's jars
    # The official start-up refuses an advertised SASL listener without KAFKA_OPTS, and so does the stand-in.
    assert "ensure KAFKA_OPTS" in run
    env = base["environment"]
    assert "SASL_" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] and env["KAFKA_OPTS"].strip()


def _check_web(url: str, token: str, tickers: set[str]) -> None:
    """The `web` service serves the dashboard, its vendored chart library and the forecasts (token required)."""

    auth = {"Authorization": f"Bearer {token}"}
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "/static/vendor/uPlot.iife.min.js" in page.text
    assert httpx.get(url + "static/vendor/uPlot.iife.min.js", timeout=30).status_code == 200
    assert httpx.get(url + "api/forecasts", timeout=30).status_code == 401
    body = httpx.get(url + "api/forecasts", headers=auth, timeout=30).json()
    assert {f["ticker"] for f in body["forecasts"]} >= tickers
    assert httpx.get(url + "api/status", headers=auth, timeout=60).json()["services"]["kafka"]["up"]


@pytest.mark.compose
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_compose_stack_forecasts_replayed_bars(podman_ready: None, shared_data: Path, tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    build = subprocess.run(["bash", str(SCRIPT), "build"], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                           check=False)
    assert build.returncode == 0, f"image build failed:\n{build.stdout[-4000:]}\n{build.stderr[-8000:]}"
    timings["build_s"] = time.monotonic() - t0

    expected = write_slice(shared_data, tmp_path / "replay")
    want = {(t, int(end)) for t, ends in expected.items() for end in ends}  # every ready window
    last = {(t, int(ends.max())) for t, ends in expected.items()}  # each ticker's last one
    namespace = "ct" + uuid.uuid4().hex[:8]
    kafka_port, redis_port, web_port = free_port(), free_port(), free_port()
    user, kafka_pw, redis_pw, web_token = "minutecast", _password(), _password(), _password()
    project_dir = tmp_path / "project"
    project_dir.mkdir()
    (project_dir / ".env").write_text("\n".join([
        f"MINUTECAST_REDIS_PASSWORD={redis_pw}", f"MINUTECAST_KAFKA_SASL_PASSWORD={kafka_pw}",
        f"MINUTECAST_KAFKA_SASL_USERNAME={user}", f"MINUTECAST_NAMESPACE={namespace}",
        f"MINUTECAST_SERVE_TOKEN={web_token}", f"WEB_HOST_PORT={web_port}",
        f"KAFKA_HOST_PORT={kafka_port}", f"REDIS_HOST_PORT={redis_port}", f"REPLAY_DATA={tmp_path / 'replay'}",
        "REPLAY_SPEED=0", "",
    ]))
    stack = Stack(project_dir, f"minutecast-test-{namespace}", _podman_env())
    ks = KafkaSettings(bootstrap=f"127.0.0.1:{kafka_port}", security_protocol="SASL_PLAINTEXT",
                       sasl_mechanism="SCRAM-SHA-512", sasl_username=user, sasl_password=kafka_pw)
    rs = RedisSettings(host="127.0.0.1", port=redis_port, password=redis_pw)
    topics, keys = Topics(namespace), Keys(namespace)
    try:
        t1 = time.monotonic()
        up = stack.compose("up", "-d", "--no-build", *SERVICES)
        assert up.returncode == 0, f"podman-compose up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        timings["up_s"] = time.monotonic() - t1
        deadline = time.monotonic() + FORECAST_TIMEOUT_S
        _wait_for_group(ks, f"{StreamSettings.model_fields['app_id'].default}-{namespace}", deadline)
        timings["worker_ready_s"] = time.monotonic() - t1
        up = stack.compose("up", "-d", "--no-build", PRODUCER)
        assert up.returncode == 0, f"podman-compose up {PRODUCER} failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        _wait_for_topic(ks, topics.forecasts, deadline)
        got: dict[tuple[str, int], Forecast] = {}
        for f in _forecasts(ks, topics.forecasts, f"{namespace}-check", last, deadline):
            if not got:
                timings["first_forecast_s"] = time.monotonic() - t1
            got[(f.ticker, f.as_of)] = f
        timings["last_forecasts_s"] = time.monotonic() - t1
        # The Faust worker announces the newest ready window of each batch of a ticker's bars (bars at
        # full replay speed arrive in few batches): which windows in between get one is timing, the last
        # one of every ticker is not.
        assert last <= got.keys(), f"no forecast for the last window of {sorted(last - got.keys())}"
        assert got.keys() <= want, f"forecasts for windows that are not ready: {sorted(got.keys() - want)[:5]}"
        for f in got.values():
            assert f.horizon_min == 5 and np.isfinite(f.predicted_close) and f.forecast_at >= f.window_ready_at
        assert sum(end_offsets(ks, topics.deadletter).values()) == 0, "dead letters from clean recorded bars"

        client = redis_lib.Redis(host=rs.host, port=rs.port, password=redis_pw, decode_responses=True)
        for ticker, as_of in sorted(last):
            stored = ForecastStore(keys).latest_now(client, ticker)  # the latest forecast, from the Spark job
            assert stored, f"no forecast of {ticker} in Redis"
            f = Forecast.from_json(stored)
            assert f.as_of == as_of, (ticker, stored)
            assert f.predicted_close == pytest.approx(got[(ticker, as_of)].predicted_close)
        client.close()
        _check_web(f"http://127.0.0.1:{web_port}/", web_token, {t for t, _ in last})
    except BaseException:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        t2 = time.monotonic()
        used_volumes = stack.down()
        timings["down_s"] = time.monotonic() - t2
        rmi = subprocess.run(["bash", str(SCRIPT), "rmi"], env=stack.env, capture_output=True, text=True,
                             check=False, timeout=300)
        timings["total_s"] = time.monotonic() - t0
        print("compose-test timings: " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
    assert rmi.returncode == 0, rmi.stderr
    left = {kind: stack.names(kind) for kind in ("ps", "volume", "network")}
    left["anonymous volumes"] = sorted(set(used_volumes) & set(stack.podman("volume", "ls", "-q").split()))
    assert used_volumes and not any(left.values()), f"left behind: {left}"
    # The store is the test's own (compose_test.sh): only the Debian base and the cache tags may stay.
    images = stack.podman("images", "--format", "{{.Repository}}:{{.Tag}}").split()
    kept = ("localhost/debian:", "localhost/minutecast-podman/cache:", "<none>:")
    assert not [i for i in images if not i.startswith(kept)], images


@pytest.mark.compose
@pytest.mark.ha
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compose_ha_profile_replicates_every_bar_across_three_brokers(podman_ready: None, tmp_path: Path) -> None:
    """The ha block of .env.example as a user sets it: three nodes form one quorum, topics get RF 3 with two
    in sync, and with the leader of a bar partition SIGKILLed the topic still takes and keeps every bar once."""
    build = subprocess.run(["bash", str(SCRIPT), "build"], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                           check=False)
    assert build.returncode == 0, build.stderr[-4000:]
    namespace = f"ha{uuid.uuid4().hex[:10]}"
    ports = [free_port() for _ in range(3)]
    user, kafka_pw = "minutecast", _password()
    project_dir = tmp_path / "project"
    project_dir.mkdir()
    ha = ha_env(REPO / ".env.example")
    (project_dir / ".env").write_text("\n".join([
        f"MINUTECAST_REDIS_PASSWORD={_password()}", f"MINUTECAST_KAFKA_SASL_PASSWORD={kafka_pw}",
        f"MINUTECAST_SERVE_TOKEN={_password()}", f"KAFKA_HOST_PORT={ports[0]}", f"KAFKA_2_HOST_PORT={ports[1]}",
        f"KAFKA_3_HOST_PORT={ports[2]}", *(f"{k}={v}" for k, v in ha.items()), ""]))
    stack = Stack(project_dir, f"minutecast-test-{namespace}", _podman_env())
    ks = KafkaSettings(bootstrap=",".join(f"127.0.0.1:{p}" for p in ports), security_protocol="SASL_PLAINTEXT",
                       sasl_mechanism="SCRAM-SHA-512", sasl_username=user, sasl_password=kafka_pw, min_brokers=3)
    topics = Topics(namespace)
    try:
        up = stack.compose("up", "-d", "--no-build", "kafka", "kafka-2", "kafka-3")
        assert up.returncode == 0, f"podman-compose up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        wait_for_kafka(ks, 300)
        ensure_topics(ks, topics.specs(3, 1), timeout_s=300)  # waits for all three (min_brokers), as `topics` does
        admin = make_admin(ks)  # held: a client dropped early destroys the handle under its futures
        spec = next(t for t in topics.specs(3, 1) if t.name == topics.bars)
        parts = replicated_partitions(admin, topics.bars, spec.partitions, 3)  # fails unless RF 3, all in sync
        conf = topic_config(admin, topics.bars)  # asked again while a broker has not applied the new topic yet
        assert conf["min.insync.replicas"].value == "2" and conf["unclean.leader.election.enable"].value == "false"
        producer = make_producer(ks)
        sent = [f"{i:05d}".encode() for i in range(600)]
        for v in sent[:300]:
            producer.produce(topics.bars, v, b"AAPL", partition=0)
        assert producer.flush(60) == 0
        leader = parts[0].leader  # node id = the service's KAFKA_NODE_ID
        service = "kafka" if leader == 1 else f"kafka-{leader}"
        victim = next(n for n in stack.names("ps") if n.endswith(f"_{service}_1"))  # podman-compose 1.0 names
        stack.podman("kill", "--signal", "KILL", victim)
        for v in sent[300:]:
            producer.produce(topics.bars, v, b"AAPL", partition=0)
        assert producer.flush(120) == 0, "acks=all writes stopped with one of three brokers down"
        got = [v for _, v in read_topic(ks, topics.bars, timeout=120)]
        assert got == sent, f"{len(sent) - len(set(got) & set(sent))} lost, {len(got) - len(set(got))} duplicated"
    except BaseException:
        print(stack.logs(), file=sys.stderr)
        raise
    finally:
        stack.down()
        subprocess.run(["bash", str(SCRIPT), "rmi"], env=stack.env, capture_output=True, check=False, timeout=300)
