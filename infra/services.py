"""`minutecast infra up | down | status`: a real Kafka broker (KRaft) and a real Redis, locally.

Data lives under ``<home>/data``, logs under ``<home>/logs``, pid files under ``<home>/run``.
Everything is idempotent: ``up`` on running services only checks they answer.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from infra import jars
from infra.procs import file_lock, port_open, read_pid, spawn, stop
from minutecast.errors import InfraError, MinutecastError
from minutecast.kafka import ensure_topics, wait_for_kafka
from minutecast.redis import wait_for_redis
from minutecast.settings import InfraSettings
from minutecast.topics import replication

CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class ServiceStatus:
    name: str
    up: bool
    version: str
    address: str
    pid: int | None
    detail: str = ""

    def line(self) -> str:
        state = "up" if self.up else "down"
        pid = f"pid {self.pid}" if self.pid else ""
        return f"{self.name:<6} {state:<5} {self.version:<10} {self.address:<22} {pid} {self.detail}".rstrip()


def _host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0]
    host, _, port = first.rpartition(":")
    return host or "127.0.0.1", int(port)


def new_cluster_id() -> str:
    """A random KRaft cluster id (base64url of a uuid) that does not start with "-": kafka-storage would read
    one that does as an option ("argument --cluster-id/-t: expected one argument", 1 format in 64)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class LocalKafka:
    """KRaft broker+controller ``node`` (1-based) of a local cluster of ``nodes``, run with the installed Java
    from Maven jars. Node i listens on the bootstrap port + 2(i-1), its controller one port above; node 1
    keeps the single-node file names (``kafka.pid``, ``data/kafka``)."""

    def __init__(self, s: InfraSettings, node: int = 1, nodes: int | None = None) -> None:
        self.s = s
        self.node, self.nodes = node, nodes or s.kafka_brokers
        self.host, self.base_port = _host_port(s.kafka.bootstrap)  # the first address is node 1's
        self.port = self.base_port + 2 * (node - 1)
        self.controller_port = self.port + 1
        suffix = "" if node == 1 else f"-{node}"
        self.name = f"kafka{suffix}"
        self.data = s.home / "data" / f"kafka{suffix}"
        self.pidfile = s.home / "run" / f"kafka{suffix}.pid"
        self.logfile = s.home / "logs" / f"kafka{suffix}.log"
        self.config = s.home / "run" / f"kafka{suffix}.properties"

    def voters(self) -> str:
        return ",".join(f"{i}@{self.host}:{self.base_port + 2 * (i - 1) + 1}" for i in range(1, self.nodes + 1))

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise InfraError("Java is missing: Kafka and Spark need Java 17 "
                             "(`apt-get install openjdk-17-jre-headless`)")
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
        try:
            major = int(out.split('"')[1].split(".")[0])
        except (IndexError, ValueError):
            major = 0
        if major < 17:
            raise InfraError(f"Java 17 or newer is needed for Kafka {jars.kafka_version()}; "
                             f"found: {out.splitlines()[0] if out else 'no version'}")
        return java

    def _write_config(self) -> None:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        rf, isr = replication(self.nodes)
        self.config.write_text(
            "\n".join([
                "process.roles=broker,controller",
                f"node.id={self.node}",
                f"controller.quorum.voters={self.voters()}",
                f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.data}",
                "num.partitions=6",
                # One broker: nothing to replicate. Three: every topic (ours, the consumer offsets, the
                # producer's idempotence state) on three brokers with two in sync, no unclean election.
                f"default.replication.factor={rf}",
                f"min.insync.replicas={isr}",
                "unclean.leader.election.enable=false",
                f"offsets.topic.replication.factor={rf}",
                f"transaction.state.log.replication.factor={rf}",
                f"transaction.state.log.min.isr={isr}",
                f"share.coordinator.state.topic.replication.factor={rf}",
                f"share.coordinator.state.topic.min.isr={isr}",
                "group.initial.rebalance.delay.ms=0",
                # Our topics are created explicitly with partitions and retention (minutecast/topics.py);
                # auto-creation stays on only as a safety net for Faust's internal topics.
                "auto.create.topics.enable=true",
                "log.retention.check.interval.ms=300000",
                "",
            ])
        )

    def _classpath(self) -> str:
        return str(jars.kafka_libs(self.s.cache) / "*")

    def _cluster_id(self) -> str:
        """One id for every node of the cluster (KRaft refuses a node formatted with another)."""
        path = self.s.home / "run" / "kafka-cluster-id"
        if not path.exists():
            path.write_text(new_cluster_id() + "\n")
        return path.read_text().strip()

    def _format(self, java: str) -> None:
        if (self.data / "meta.properties").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        cluster_id = self._cluster_id() if self.nodes > 1 else new_cluster_id()
        proc = subprocess.run(
            [java, "-cp", self._classpath(), f"-Dlog4j2.configurationFile={CONF_DIR / 'log4j2.properties'}",
             "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise InfraError(f"formatting Kafka storage failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")

    def status(self) -> ServiceStatus:
        pid = read_pid(self.pidfile)
        up = pid is not None and port_open(self.host, self.port)
        detail = ("KRaft single node" if self.nodes == 1 else f"KRaft node {self.node} of {self.nodes}") if up else ""
        return ServiceStatus(self.name, up, jars.kafka_version(), f"{self.host}:{self.port}", pid, detail)

    def start(self) -> bool:
        """Start this node unless it runs (no wait: a cluster answers once a quorum of nodes is up)."""
        if read_pid(self.pidfile) is not None:
            return False
        for p in (self.port, self.controller_port):
            if port_open(self.host, p):
                raise InfraError(f"port {self.host}:{p} is taken by another process; stop it or point "
                                 "MINUTECAST_KAFKA_BOOTSTRAP at another port")
        java = self._java()
        self._write_config()
        self._format(java)
        cmd = [java, f"-Xmx{self.s.kafka_heap}", "-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={CONF_DIR / 'log4j2.properties'}",
               "-cp", self._classpath(), "kafka.Kafka", str(self.config)]
        spawn(cmd, self.pidfile, self.logfile)
        return True

    def wait(self) -> None:
        """Until this node answers (raises InfraError with its log's tail, having stopped it)."""
        try:
            # This node alone, with the cluster's client settings (SASL where configured).
            wait_for_kafka(self.s.kafka.model_copy(update={"bootstrap": f"{self.host}:{self.port}"}),
                           self.s.start_timeout_s)
        except MinutecastError as exc:
            tail = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            stop(self.pidfile)
            raise InfraError(f"Kafka node {self.node} did not start: {exc}\n--- {self.logfile} (tail) ---\n"
                             f"{tail}") from exc

    def up(self) -> bool:
        """Start the broker unless ours is running and wait until it answers. True if it was started now."""
        started = self.start()
        self.wait()
        return started

    def down(self) -> bool:
        return stop(self.pidfile, timeout_s=60)


class LocalRedis:
    """Debian's redis-server: password required, AOF on, bound to loopback."""

    def __init__(self, s: InfraSettings) -> None:
        self.s = s
        self.data = s.home / "data" / "redis"
        self.pidfile = s.home / "run" / "redis.pid"
        self.logfile = s.home / "logs" / "redis.log"
        self.config = s.home / "run" / "redis.conf"
        self.secret = s.home / "secrets" / "redis-password"

    def password(self) -> str:
        """The configured password, else the one generated on first `up` (kept mode 0600)."""
        if os.environ.get("MINUTECAST_REDIS_PASSWORD"):
            return os.environ["MINUTECAST_REDIS_PASSWORD"]
        if not self.secret.exists():
            self.secret.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        return self.secret.read_text().strip()

    def _write_config(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        self.config.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join([
            "bind 127.0.0.1 -::1",
            "protected-mode yes",
            f"port {self.s.redis.port}",
            f"requirepass {self.password()}",
            "appendonly yes",
            "appendfsync everysec",
            f"dir {self.data}",
            "daemonize no",
            "save 300 100",
            f"maxmemory {self.s.redis_maxmemory}",
            "maxmemory-policy noeviction",  # a write past maxmemory fails loudly (Faust: fatal, in status)
            "",
        ])
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)

    def status(self) -> ServiceStatus:
        pid = read_pid(self.pidfile)
        version = "?"
        up = False
        if pid is not None:
            try:
                client = wait_for_redis(self.s.redis, timeout_s=2)
                version = str(client.info("server")["redis_version"])
                up = True
            except MinutecastError:
                up = False
        return ServiceStatus("redis", up, version, f"127.0.0.1:{self.s.redis.port}", pid,
                             "password, AOF" if up else "")

    def up(self) -> bool:
        if read_pid(self.pidfile) is not None:
            wait_for_redis(self.s.redis, self.s.start_timeout_s)
            return False
        server = shutil.which("redis-server")
        if server is None:
            raise InfraError("redis-server is missing: `apt-get install redis-server`, or run infra/bootstrap.sh")
        if port_open("127.0.0.1", self.s.redis.port):
            raise InfraError(f"port 127.0.0.1:{self.s.redis.port} is taken by another process; stop it or "
                             "set MINUTECAST_REDIS_PORT")
        self._write_config()
        spawn([server, str(self.config)], self.pidfile, self.logfile)
        try:
            wait_for_redis(self.s.redis, self.s.start_timeout_s)
        except MinutecastError as exc:
            tail = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            stop(self.pidfile)
            raise InfraError(f"Redis did not start: {exc}\n{tail}") from exc
        return True

    def down(self) -> bool:
        return stop(self.pidfile)


def _settings_with_password(s: InfraSettings) -> InfraSettings:
    """Make sure the Redis password exists before any client reads settings."""
    pw = LocalRedis(s).password()
    if s.redis.password is None or s.redis.password.get_secret_value() != pw:
        s.redis.password = SecretStr(pw)
    return s


def brokers(s: InfraSettings) -> list[LocalKafka]:
    """The local cluster's nodes (``MINUTECAST_KAFKA_BROKERS``: 1, or 3 for replication)."""
    return [LocalKafka(s, i) for i in range(1, s.kafka_brokers + 1)]


def bootstrap(s: InfraSettings) -> str:
    """Every node's address, for clients of a cluster (any live one answers for all)."""
    return ",".join(f"{k.host}:{k.port}" for k in brokers(s))


def up(s: InfraSettings | None = None, create_topics: bool = True) -> list[ServiceStatus]:
    s = _settings_with_password(s or InfraSettings())
    with file_lock(s.home / "run" / "infra.lock"):
        LocalRedis(s).up()
        nodes = brokers(s)
        for k in nodes:  # all first: a KRaft quorum of three answers only once two of them run
            k.start()
        for k in nodes:
            k.wait()
        if create_topics:
            ensure_topics(s.kafka, s.topic_specs())
    return status(s)


def down(s: InfraSettings | None = None) -> list[str]:
    s = s or InfraSettings()
    stopped = []
    with file_lock(s.home / "run" / "infra.lock"):
        for k in reversed(brokers(s)):
            if k.down():
                stopped.append(k.name)
        if LocalRedis(s).down():
            stopped.append("redis")
    return stopped


def status(s: InfraSettings | None = None) -> list[ServiceStatus]:
    s = _settings_with_password(s or InfraSettings())
    return [*(k.status() for k in brokers(s)), LocalRedis(s).status()]
