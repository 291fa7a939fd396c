"""Riding out an outage of Kafka or Redis: the one definition of how a service waits for a dependency that is
away, and how it says so.

A dependency being away (a Redis restart, a broker restart, a network blip) is not a crash of ours: a
service waits for it with exponential back-off (:func:`wait`, tenacity) for as long as it takes, unless given
a limit, and resumes by itself. A Redis client built with ``wait=True`` (:func:`minutecast.redis.connect`)
does the same inside every command (:class:`WaitingRetry`: redis-py's own retry, without a limit).

While it waits, a process says so in three places:

* a log line when the wait starts and when it ends;
* the Prometheus gauge ``minutecast_dependency_up{dependency="redis"|"kafka"}`` (1 up, 0 away) on the
  ``/metrics`` endpoint of the process (:func:`minutecast.metrics.serve` registers :class:`Collector`);
* a small JSON file ``<home>/run/deps.<namespace>.<service>.<pid>.json`` ({dependency: epoch seconds it has
  been away since}), which `minutecast run`'s supervisor (its restart budget and summary line), `minutecast
  status` and the web API's status read back with :func:`waiting` (files of dead processes are ignored and
  removed). ``<service>`` is ``MINUTECAST_SERVICE`` (set by the supervisor for its services), else the
  subcommand of the command line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as _PromCollector
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from tenacity import Retrying, retry_if_exception, stop_after_delay, stop_never, wait_exponential

from minutecast.settings import default_home

log = logging.getLogger(__name__)
T = TypeVar("T")
DEPENDENCIES = ("kafka", "redis")
NAMES = {"kafka": "Kafka", "redis": "Redis"}


class DependencySettings(BaseSettings):
    """How every service waits for Kafka and Redis (``MINUTECAST_*``; shared, like the connection blocks)."""

    model_config = SettingsConfigDict(env_prefix="MINUTECAST_", extra="ignore")

    namespace: str = "minutecast"
    home: Path = Field(default_factory=default_home)
    service: str = ""  # this process's service name in `minutecast run` (set by the supervisor)
    # Longest wait for a dependency that is away, in seconds (0: no limit, the default: wait it out).
    dependency_wait_s: float = 0.0
    dependency_backoff_max_s: float = 5.0  # cap of the back-off between two tries while it stays away


def _service() -> str:
    s = DependencySettings()
    if s.service:
        return s.service
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    return args[0] if args else Path(sys.argv[0]).stem or "python"


class _State:
    """This process's view: {dependency: monotonic-free epoch seconds it has been away since}."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.down: dict[str, float] = {}
        self.path: Path | None = None

    def _file(self) -> Path:
        if self.path is None:
            s = DependencySettings()
            self.path = s.home / "run" / f"deps.{s.namespace}.{_service()}.{os.getpid()}.json"
        return self.path

    def _write(self) -> None:
        path = self._file()
        with contextlib.suppress(OSError):  # reporting must never take a service down
            if self.down:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.down))
                tmp.replace(path)
            else:
                path.unlink(missing_ok=True)

    def mark_down(self, dep: str, why: object) -> None:
        with self.lock:
            if dep in self.down:
                return
            self.down[dep] = time.time()
            self._write()
        log.warning("waiting for %s (%s); the service resumes by itself once it answers", NAMES[dep], why)

    def mark_up(self, dep: str) -> None:
        with self.lock:
            since = self.down.pop(dep, None)
            if since is None:
                return
            self._write()
        log.warning("%s answers again after %.0f s away; resuming", NAMES[dep], time.time() - since)

    def forget(self, dep: str) -> None:
        with self.lock:
            if self.down.pop(dep, None) is not None:
                self._write()


STATE = _State()


def mark_down(dep: str, why: object = "") -> None:
    """Record that ``dep`` ("kafka" or "redis") is away (from now, unless it already was)."""
    STATE.mark_down(dep, why)


def mark_up(dep: str) -> None:
    STATE.mark_up(dep)


def is_up(dep: str) -> bool:
    return dep not in STATE.down


def wait(dep: str, probe: Callable[[], T], retryable: Callable[[BaseException], bool],
         limit_s: float | None = None) -> T:
    """``probe()`` until it returns, retrying the errors ``retryable`` accepts with exponential back-off;
    ``limit_s`` (None: ``MINUTECAST_DEPENDENCY_WAIT_S``, 0 or inf: no limit) bounds the wait (then the last
    error is raised). The wait is reported while it lasts."""
    s = DependencySettings()
    limit = limit_of(limit_s)
    stop = stop_never if not limit or math.isinf(limit) else stop_after_delay(limit)
    retrying = Retrying(stop=stop, wait=wait_exponential(multiplier=0.25, max=s.dependency_backoff_max_s),
                        retry=retry_if_exception(retryable), reraise=True,
                        before_sleep=lambda rs: mark_down(dep, rs.outcome.exception() if rs.outcome else ""))
    try:
        result = retrying(probe)
    except BaseException:
        STATE.forget(dep)  # given up: no longer waiting (the caller reports the error)
        raise
    mark_up(dep)
    return result


def limit_of(limit_s: float | None) -> float:
    """The wait's limit in seconds: ``limit_s``, or ``MINUTECAST_DEPENDENCY_WAIT_S`` when None (0: none)."""
    return DependencySettings().dependency_wait_s if limit_s is None else limit_s


class WaitingRetry(Retry):
    """redis-py's retry without a limit, reporting Redis as away while a command waits for it (the clients of
    the services: :func:`minutecast.redis.connect` with ``wait=True``)."""

    def __init__(self, backoff_max_s: float) -> None:
        super().__init__(ExponentialWithJitterBackoff(base=0.1, cap=backoff_max_s), retries=-1)

    def call_with_retry(self, do: Callable[[], T], fail: Any, is_retryable: Any = None,
                        with_failure_count: bool = False) -> T:
        failed = False

        def report(error: Exception, *count: int) -> Any:
            nonlocal failed
            failed = True
            mark_down("redis", error)
            return fail(error, *count)

        result = super().call_with_retry(do, report, is_retryable, with_failure_count)
        if failed or not is_up("redis"):
            mark_up("redis")
        return result


class Collector(_PromCollector):
    """``minutecast_dependency_up{dependency}``: 1 while this process reaches it, 0 while it waits for it."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("minutecast_dependency_up", "1: the dependency answers this process; 0: it waits "
                              "for it (an outage)", labels=["dependency"])
        for dep in DEPENDENCIES:
            g.add_metric([dep], 0.0 if dep in STATE.down else 1.0)
        yield g


def waiting(run_dir: Path, namespace: str) -> dict[str, dict[str, float]]:
    """What the processes of ``namespace`` wait for now: {service: {dependency: since (epoch s)}}, the
    earliest since over a service's processes. Files of processes that ended are removed."""
    out: dict[str, dict[str, float]] = {}
    prefix = f"deps.{namespace}."
    for path in run_dir.glob(f"{prefix}*.json"):
        service, _, pid = path.name[len(prefix):-len(".json")].rpartition(".")
        if not service or not pid.isdigit() or "." in service:
            continue
        if not _alive(int(pid)):
            path.unlink(missing_ok=True)
            continue
        try:
            down = {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, AttributeError):
            continue  # being replaced right now
        mine = out.setdefault(service, {})
        for dep, since in down.items():
            mine[dep] = min(since, mine.get(dep, since))
    return {k: v for k, v in sorted(out.items()) if v}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    return True


def describe(down: dict[str, float], template: str = "waiting for {name} since {since}") -> str:
    """``waiting for Redis since 14:45:02`` (local clock) for {dependency: since}, one per dependency."""
    return ", ".join(template.format(name=NAMES.get(d, d), since=time.strftime("%H:%M:%S", time.localtime(t)))
                     for d, t in sorted(down.items(), key=lambda x: x[1]))
