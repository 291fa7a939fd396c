"""The pipeline :mod:`benchmarks.e2e` runs and feeds: the bar feed (:class:`Feed`), a random model promoted into a
private registry, the Faust worker and Spark job as subprocesses, their memory watched, everything stopped and the
namespace deleted afterwards. Not an entry point: ``python -m benchmarks.e2e`` runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.namespace import delete_namespace
from benchmarks.rss import RssSampler, listener_pid
from infra.procs import read_pid, terminate
from infra.spark_cluster import Cluster
from minutecast.errors import ModelError
from minutecast.features import Scaler
from minutecast.kafka import ensure_topics, make_producer
from minutecast.keys import Keys
from minutecast.model import build_model, get_preset
from minutecast.redis import connect
from minutecast.registry import Registry
from minutecast.schemas import Bar
from minutecast.settings import InferenceSettings
from minutecast.topics import Topics
from minutecast.window import SESSION_TZ

REPO = Path(__file__).resolve().parents[1]


def session_start() -> int:
    """00:00 New York two days ago (epoch s): a whole session of past minutes, none in the future."""
    day = (datetime.now(SESSION_TZ) - timedelta(days=2)).date()
    return int(datetime(day.year, day.month, day.day, tzinfo=SESSION_TZ).timestamp())


class Feed:
    """Random-walk bars for every ticker, one minute at a time, published with the producer's clock.

    Every bar's delivery latency (librdkafka: ``produce()`` -> broker ack) is kept, per minute index and
    ticker, in :attr:`delivery_s` (NaN until its delivery report comes). librdkafka measures it when the
    report is served, so a thread serves them as they arrive (:meth:`serve_reports`); served only by the publishing
    loop's ``poll`` they would read as the time to the next minute."""

    def __init__(self, names: list[str], start: int, kafka: Any, topic: str) -> None:
        self.names, self.start, self.topic = names, start, topic
        self.index = {n.encode(): i for i, n in enumerate(names)}
        self.rng = np.random.default_rng(0)
        self.close = 50 + 400 * self.rng.random(len(names))
        self.producer = make_producer(kafka)
        self.sent = 0
        self.failed = 0
        self.delivery_s: dict[int, np.ndarray] = {}  # minute index -> s per ticker (array: 8 B a bar)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve, name="delivery-reports", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)  # returns as soon as a report is there (librdkafka is thread-safe)

    def serve_reports(self) -> None:
        self._poller.start()

    def stop_reports(self) -> None:
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join(5)

    def _delivered(self, i: int, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            return
        latency = msg.latency()
        if latency is not None:
            self.delivery_s[i][self.index[msg.key()]] = latency

    def delivery(self, ticker: str, minute: int) -> float | None:
        """The delivery latency (s) of ``ticker``'s bar at ``minute`` (epoch s), None if unknown."""
        arr = self.delivery_s.get((minute - self.start) // 60)
        x = None if arr is None else float(arr[self.index[ticker.encode()]])
        return None if x is None or x != x else x

    def minute(self, i: int) -> float:
        """Publish minute i of every ticker; returns the publish time of its first bar."""
        self.close *= np.exp(self.rng.normal(0, 5e-4, len(self.names)))
        vol = self.rng.integers(1_000, 100_000, len(self.names))
        self.delivery_s[i] = np.full(len(self.names), np.nan)
        on_delivery = partial(self._delivered, i)
        t0 = time.time()
        for name, c, v in zip(self.names, self.close, vol, strict=True):
            c = round(float(c), 4)
            bar = Bar(name, self.start + 60 * i, c, c, c, c, float(v), "bench", published_at=time.time())
            while True:
                try:
                    self.producer.produce(self.topic, bar.to_json(), name.encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0.01)
        self.sent += len(self.names)
        self.producer.poll(0)
        return t0


def promote_random_model(models_dir: Path) -> str:
    """A randomly initialised default-architecture model, promoted: the model's speed is what counts here."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before build_model imports TensorFlow
    registry = Registry(models_dir)
    version = registry.save(build_model(get_preset("default")), Scaler(
        ret_scale=1e-3, gap_scale=3e-3, range_scale=1.5e-3, logvol_mean=9.0, logvol_std=1.0, mkt_ret_scale=3e-4,
        mkt_range_scale=5e-4, target_scale=2e-3),
                            {"note": "benchmarks.e2e: random weights"})
    registry.promote(version)
    return version


def promote_in_subprocess(models_dir: Path) -> str:
    """promote_random_model in a child process: TensorFlow stays out of this process (the producer), so the
    producer's RSS is the producer's."""
    code = ("import sys; from pathlib import Path; from benchmarks.e2e_pipeline import promote_random_model; "
            "print(promote_random_model(Path(sys.argv[1])))")
    res = subprocess.run([sys.executable, "-c", code, str(models_dir)], cwd=REPO, capture_output=True, text=True,
                         env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300, check=False)
    if res.returncode != 0:
        raise ModelError(f"could not promote a random model: {res.stderr[-2000:]}")
    return res.stdout.strip().splitlines()[-1]


@dataclass
class Pipeline:
    """One run's namespace, its settings and environments, and the processes serving it."""

    ns: str
    work: Path  # logs, the private registry and checkpoint, the job's per-batch stats
    base: InferenceSettings
    env: dict[str, str]  # the Faust worker's
    infer_env: dict[str, str]  # the Spark job's: env plus its private MINUTECAST_HOME and the partitioning flags
    cluster: Cluster | None  # --standalone: the private Spark master + workers
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def topics(self) -> Topics:
        return Topics(self.ns)

    @property
    def keys(self) -> Keys:
        return Keys(self.ns)

    @property
    def stats_path(self) -> Path:
        return self.work / "batches.jsonl"


def start(pipe: Pipeline, trigger_ms: int, persistence: bool, result: dict[str, Any]) -> None:
    """Topics, a promoted random model (unless ``persistence``), the standalone cluster, then the Faust worker and
    the Spark job as subprocesses logging into ``pipe.work``."""
    ensure_topics(pipe.base.kafka, pipe.topics.specs())
    if not persistence:
        result["model_version"] = promote_in_subprocess(pipe.work / "home" / "models")
    if pipe.cluster is not None:
        pipe.cluster.up(workers=2, cores=1, memory="1g", timeout_s=180)
        result["spark_master"] = pipe.cluster.url
    master = ["--master", pipe.cluster.url] if pipe.cluster is not None else []
    for name, cmd, e in (
        ("stream", ["stream", "--web-port", "0", "--metrics-port", "0", "--no-rebuild"], pipe.env),
        ("infer", ["infer", "--metrics-port", "0", "--trigger-ms", str(trigger_ms),
                   "--stats-jsonl", str(pipe.stats_path), *master], pipe.infer_env),
    ):
        log = open(pipe.work / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        pipe.procs.append(subprocess.Popen([sys.executable, "-m", "minutecast.cli", *cmd], env=e, cwd=REPO,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))


def watch_memory(pipe: Pipeline, rss: RssSampler, timeline: bool) -> None:
    """Every service's memory: this process is the producer (the Feed); the workers' trees include Spark's JVM and
    Python workers; Redis reports its own pid; Kafka is whatever listens on the bootstrap port."""
    base = pipe.base
    rss.watch("producer", os.getpid(), tree=False)
    rss.watch("faust_worker", pipe.procs[0].pid)
    rss.watch("spark_driver_jvm_python_workers", pipe.procs[1].pid)
    rss.watch("redis", int(connect(base.redis).info("server")["process_id"]), tree=False)
    rss.watch("kafka", listener_pid(int(base.kafka.bootstrap.split(",")[0].rsplit(":", 1)[1])), tree=False)
    if pipe.cluster is not None:  # the executors and their Python workers run under the workers, not the driver
        rss.watch("spark_master", read_pid(pipe.cluster.home / "run" / "master.pid"), tree=False)
        for i in range(2):
            rss.watch(f"spark_worker_{i}", read_pid(pipe.cluster.home / "run" / f"worker-{i}.pid"))
    if timeline:
        gauge_client = connect(base.redis)
        rss.gauges["redis_used_memory"] = lambda: gauge_client.info("memory")["used_memory"] / 2**20
    rss.start()


def stop(pipe: Pipeline, keep: bool) -> None:
    """Stop the processes (SIGTERM, SIGKILL to the group after 60 s, then to what is left of the group: JVM,
    Python workers) and the cluster; unless ``keep``, delete the namespace's keys and topics."""
    terminate(pipe.procs, 60, group=True)
    for p in pipe.procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # leftovers of the group (JVM, Python workers)
        except ProcessLookupError:
            pass
    if pipe.cluster is not None:
        pipe.cluster.down()
    if not keep:
        delete_namespace(pipe.base.redis, pipe.base.kafka, pipe.ns)
