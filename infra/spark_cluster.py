"""A local Spark standalone cluster (a master and N workers) from the pyspark package's own launcher.

    minutecast infra spark-up --workers 2      # master on spark://127.0.0.1:7077, web UI :8090
    MINUTECAST_MASTER=spark://127.0.0.1:7077 minutecast infer
    minutecast infra spark-down

The processes are Spark's own (``bin/spark-class org.apache.spark.deploy.master.Master`` and
``...deploy.worker.Worker``), each in its own session with a pid file under ``<home>/run``; the same
classes a real cluster runs, on one machine. On more machines, start the workers there with the master's
URL (Spark's ``sbin/start-worker.sh spark://HOST:7077``): nothing here is home-made scheduling.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from infra.procs import port_open, read_pid, spawn, stop
from minutecast.errors import InfraError
from minutecast.settings import InfraSettings

_SPEC = importlib.util.find_spec("pyspark")  # its location only: importing pyspark is the job's business
SPARK_HOME = Path(_SPEC.origin).resolve().parent if _SPEC and _SPEC.origin else Path("pyspark")
MASTER_PORT = 7077
MASTER_UI_PORT = 8090  # Spark's default 8080 is `minutecast serve`'s


@dataclass(frozen=True)
class Cluster:
    """Where a standalone cluster listens and keeps its files (``home``: ``<home>/spark-cluster``)."""

    home: Path
    host: str = "127.0.0.1"
    port: int = MASTER_PORT
    ui_port: int = MASTER_UI_PORT

    @classmethod
    def of(cls, s: InfraSettings, port: int = MASTER_PORT, ui_port: int = MASTER_UI_PORT) -> Cluster:
        return cls(s.home / "spark-cluster", port=port, ui_port=ui_port)

    @property
    def url(self) -> str:
        return f"spark://{self.host}:{self.port}"

    def _pidfile(self, name: str) -> Path:
        return self.home / "run" / f"{name}.pid"

    def _env(self) -> dict[str, str]:
        # Executors start Python workers with this interpreter (pandas, TensorFlow); loopback only.
        return os.environ | {"SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable,
                             "SPARK_LOCAL_IP": self.host, "SPARK_LOG_DIR": str(self.home / "logs"),
                             "SPARK_WORKER_DIR": str(self.home / "work")}

    def _launch(self, name: str, cls_args: list[str]) -> None:
        if read_pid(self._pidfile(name)) is not None:
            return
        spawn([str(SPARK_HOME / "bin" / "spark-class"), *cls_args], self._pidfile(name),
              self.home / "logs" / f"{name}.log", env=self._env())

    def alive_workers(self) -> int:
        """Workers the master lists as ALIVE (its web UI's JSON); 0 while the master does not answer."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.ui_port}/json/", timeout=2) as r:  # noqa: S310
                state = json.load(r)
        except (OSError, ValueError, urllib.error.URLError):
            return 0
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def up(self, workers: int = 2, cores: int = 1, memory: str = "1g", timeout_s: float = 120.0) -> None:
        """Start the master and ``workers`` workers (``cores`` cores, ``memory`` each) unless running; wait
        until the master lists them all as ALIVE."""
        if read_pid(self._pidfile("master")) is None and port_open(self.host, self.port):
            raise InfraError(f"port {self.host}:{self.port} is taken by another process (a Spark master "
                             "not started by minutecast?)")
        (self.home / "work").mkdir(parents=True, exist_ok=True)
        self._launch("master", ["org.apache.spark.deploy.master.Master", "--host", self.host,
                                "--port", str(self.port), "--webui-port", str(self.ui_port)])
        for i in range(workers):
            self._launch(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", self.url, "--host", self.host,
                                         "--cores", str(cores), "--memory", memory, "--webui-port", "0",
                                         "--work-dir", str(self.home / "work" / str(i))])
        try:
            Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(1),
                     retry=retry_if_result(lambda n: n < workers))(self.alive_workers)
        except RetryError as exc:
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                             for p in sorted((self.home / "logs").glob("*.log")))
            raise InfraError(f"Spark cluster at {self.url}: {self.alive_workers()} of {workers} workers alive "
                             f"after {timeout_s:.0f} s\n{logs}") from exc

    def down(self) -> list[str]:
        """Stop the workers, then the master. Returns the names that were running."""
        names = sorted((p.stem for p in (self.home / "run").glob("worker-*.pid")), reverse=True) + ["master"]
        return [n for n in names if stop(self._pidfile(n), timeout_s=30)]
