"""Peak resident memory per service during a benchmark (:class:`RssSampler`), and the pid of a local
listener (the Kafka broker) to watch. Used by :mod:`benchmarks.e2e`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil


def listener_pid(port: int) -> int | None:
    """The pid of the local process listening on ``port`` (the Kafka broker), None if not visible."""
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    except psutil.AccessDenied:
        pass
    return None


class RssSampler:
    """Peak resident memory (MiB) of each service's process tree, sampled every ``every`` s in a thread.

    A service is a root pid; its tree (children, recursively: the Spark JVM and its Python workers) is
    summed at each sample, and the peak of that sum is kept. Sampling VmRSS (not VmHWM) because Redis and
    Kafka are long-lived and shared: their lifetime high-water mark says nothing about this run.
    """

    def __init__(self, every: float = 0.5, timeline_s: float | None = None) -> None:
        self.every = every
        self.roots: dict[str, tuple[int, bool]] = {}  # name -> (pid, include children)
        self.peak_mb: dict[str, float] = {}
        self.samples = 0
        # With ``timeline_s``: every that many seconds, (seconds since start, MiB) per service and per gauge
        # (a soak run's growth); gauges are extra callables giving MiB (Redis's used_memory).
        self.timeline_s = timeline_s
        self.timeline: dict[str, list[tuple[float, float]]] = {}
        self.gauges: dict[str, Callable[[], float]] = {}
        self._t0 = time.monotonic()
        self._next = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: int | None, tree: bool = True) -> None:
        if pid is not None:
            self.roots[name] = (pid, tree)

    def sample(self) -> None:
        for name, (pid, tree) in list(self.roots.items()):
            try:
                root = psutil.Process(pid)
                procs = [root, *(root.children(recursive=True) if tree else [])]
            except psutil.Error:
                continue
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass  # a Python worker that just exited
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), total / 2**20)
            self._record(name, total / 2**20)
        if self.timeline_s is not None and time.monotonic() - self._t0 >= self._next:
            for name, gauge in self.gauges.items():
                try:
                    self._record(name, gauge(), force=True)
                except Exception:  # noqa: BLE001, S112 - a gauge that fails once (Redis busy) skips a point
                    continue
            self._next += self.timeline_s
        self.samples += 1

    def _record(self, name: str, mb: float, force: bool = False) -> None:
        if self.timeline_s is not None and (force or time.monotonic() - self._t0 >= self._next):
            self.timeline.setdefault(name, []).append((round(time.monotonic() - self._t0, 1), round(mb, 1)))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        return {k: round(v, 1) for k, v in sorted(self.peak_mb.items())}
