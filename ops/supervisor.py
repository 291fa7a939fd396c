"""The supervisor's parts for `minutecast run` (split from ops/run.py): each service runs under a guard
(``infra.procs.guard``) in a session of its own, with a pid file per namespace and service, so that

- no service outlives the run, whatever ends it: a clean stop, SIGHUP, SIGTERM, a broken stdout
  (``minutecast run | head -1``, a killed ``tee``), or SIGKILL of the supervisor (the guards get a
  parent-death signal and watch their parent);
- a second run of the same namespace refuses to start beside the first (a lock the running supervisor holds,
  and the pid files, believed only while the recorded pid is alive and carries the service's tag);
- pid files left by a run that died (dead pid, or a pid reused by another program) are found and removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from infra import procs
from infra.runstate import DONE, service_pidfile, service_pidfiles, service_pids, service_tag
from minutecast import dependency
from minutecast.errors import MinutecastError
from minutecast.kafka import make_admin
from minutecast.redis import connect
from minutecast.settings import RunSettings

# `--fake-services` (a test hook, hidden from --help): every service runs this instead, through the same guard,
# pid files and restarts. A shell that leaves its two sleeps behind when it is killed, so a test sees that the
# guard ends a service's whole tree, not only the process it started.
FAKE_SERVICE = ["sh", "-c", "sleep 600 & sleep 600"]


class AlreadyRunning(MinutecastError):
    """Services of this namespace are running already (another `minutecast run`, or its leftovers)."""


@contextlib.contextmanager
def claim(run_dir: Path, namespace: str, grace_s: float, say: Any = print) -> Any:
    """Hold the namespace for this run: refuse (:class:`AlreadyRunning`) while another supervisor of the
    namespace holds its lock or services of it still run; remove stale pid files (saying so)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / f"run.{namespace}.lock"
    fh = _lock(lock_path)
    if isinstance(fh, str):
        live = {n: pid for n, pid in service_pids(run_dir, namespace).items() if pid}
        shown = ", ".join(f"{n} {pid}" for n, pid in live.items()) or "starting"
        raise AlreadyRunning(
            f"namespace {namespace!r} is already running (`minutecast run` pid {fh}; services: {shown}); "
            f"stop it first (Ctrl-C in its terminal, or kill -TERM {fh}), or set MINUTECAST_NAMESPACE")
    try:
        live = {}
        for name, path in service_pidfiles(run_dir, namespace).items():
            pid, why = procs.read_tagged_pid(path, service_tag(namespace, name))
            if pid is None:
                finished = why == "unreadable" and path.read_text().strip() == DONE
                path.unlink(missing_ok=True)
                if not finished:  # a one-shot service's record of the last run, not a stale file
                    say(f"removed a stale pid file {path} ({why})")
            else:
                live[name] = pid
        if live:
            shown = ", ".join(f"{n} {pid}" for n, pid in live.items())
            raise AlreadyRunning(
                f"services of namespace {namespace!r} are still running without their `minutecast run` ({shown}); "
                f"they stop by themselves within {grace_s + procs.SWEEP_S:g} s, or end them now: "
                + "; ".join(f"kill -TERM -{pid}" for pid in live.values()))
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still locked: a run that opened this file sees it gone (_lock)
        fh.close()  # releases the lock


def _lock(path: Path) -> IO[str] | str:
    """The locked open file of ``path``, or the pid written in it by the run that holds it. The kernel frees
    the lock when its holder dies, however; a holder that exits removes the file, so a lock taken on a file
    that was just removed is retried on the new one."""
    for _ in range(5):
        fh = open(path, "a+")  # noqa: SIM115 - held (locked) for the whole run
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            return holder
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                return fh
        fh.close()  # locked a removed file: its holder just exited; lock the new one
    raise AlreadyRunning(f"could not lock {path}: runs of this namespace keep starting and stopping")


class Screen:
    """The supervisor's stdout. A reader that went away (``| head -1``, a killed ``tee``) is noticed -- by the
    failed write, or by polling the pipe between writes -- and turns into a request to stop: never an
    exception that would skip stopping the services."""

    def __init__(self) -> None:
        self.broken = False

    def say(self, text: str) -> None:
        if self.broken:
            return
        try:
            print(text, flush=True)
        except (ValueError, OSError):  # BrokenPipeError is an OSError; ValueError: sys.stdout was closed
            self._gone()

    def gone(self) -> bool:
        """Whether stdout lost its reader (a pipe with no reader polls POLLERR; a hung-up tty POLLHUP)."""
        if not self.broken:
            with contextlib.suppress(OSError, ValueError, AttributeError):  # no stdout at all: nothing to watch
                poller = select.poll()
                poller.register(sys.stdout.fileno(), select.POLLERR | select.POLLHUP)
                if any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in poller.poll(0)):
                    self._gone()
        return self.broken

    def _gone(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError):
            # Writes (and Python's flush at exit) now go nowhere instead of raising again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            print("minutecast run: stdout was closed; stopping the services", file=sys.stderr, flush=True)


def _default_budget() -> procs.RestartBudget:
    fields = RunSettings.model_fields
    return procs.RestartBudget(fields["restart_max"].default, fields["restart_healthy_s"].default)


@dataclass
class Service:
    name: str
    argv: list[str]  # `minutecast ARGV...`
    oneshot: bool = False  # exit code 0 means done (a replay that finished), not a crash
    cmd: list[str] | None = None  # the whole command instead of `minutecast ARGV` (--fake-services)
    budget: procs.RestartBudget = field(default_factory=_default_budget)  # run: from its settings
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None  # monotonic s: crashed, restart due then
    done: bool = False
    log: IO[bytes] | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        return self.cmd or [sys.executable, "-m", "minutecast.cli", *self.argv]

    def start(self, logs: Path, run_dir: Path, namespace: str, grace_s: float) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        if self.log is None:
            self.log = open(logs / f"{self.name}.log", "ab")  # noqa: SIM115 - kept open while it runs
        self.log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.command())}\n".encode())
        self.log.flush()
        # Own session (Ctrl-C reaches only us, and we stop the services in order), under a guard that ends
        # the service and all it started when we stop it or die.
        cmd = procs.guard_command(os.getpid(), service_tag(namespace, self.name), self.command(), grace_s)
        # Its name (what it waits for is reported under it: minutecast.dependency); a producer waits for the
        # broker at start without a limit (standalone it fails fast after MINUTECAST_CONNECT_TIMEOUT_S).
        env = os.environ | {"MINUTECAST_SERVICE": self.name, "MINUTECAST_CONNECT_TIMEOUT_S": "0"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env)
        service_pidfile(run_dir, namespace, self.name).write_text(f"{self.proc.pid}\n")
        self.restart_at = None
        self.budget.started()

    def ended(self) -> None:
        """After the guard exited (and was reaped) by itself: end anything of its session still there."""
        if self.proc is not None:
            procs.kill_tree(self.proc.pid, include_root=False)

    def stop(self, run_dir: Path, namespace: str, grace_s: float) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)  # the guard stops its service, then what it left
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(grace_s + procs.SWEEP_S + 5)
            # A guard that hung (still our unreaped child: its pid is safe to signal), and whatever its
            # session still holds.
            procs.kill_tree(self.proc.pid, include_root=self.proc.poll() is None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        service_pidfile(run_dir, namespace, self.name).unlink(missing_ok=True)
        if self.log is not None:
            self.log.close()
            self.log = None


class Outages:
    """Whether Kafka or Redis is away, as the supervisor sees it: its own probes (:meth:`check`, on each crash
    and each summary) and what the services report waiting for (:func:`minutecast.dependency.waiting`). A
    service that ends during an outage, or within ``grace_s`` after one, is restarted without spending its
    restart budget (:meth:`infra.procs.RestartBudget.crashed`)."""

    def __init__(self, s: Any, grace_s: float = 60.0, clock: Any = time.monotonic) -> None:
        self.s, self.grace_s, self.clock = s, grace_s, clock
        self.down: dict[str, float] = {}  # dependency -> epoch s it was first seen away (this outage)
        self.last_down: dict[str, float] = {}  # dependency -> monotonic s it was last seen away
        self._admin: Any = None

    def _probe(self, dep: str) -> bool:
        try:
            if dep == "redis":
                client = connect(self.s.redis, wait=False, socket_timeout=2, socket_connect_timeout=2)
                try:
                    client.ping()
                finally:
                    client.close()
            else:
                if self._admin is None:
                    self._admin = make_admin(self.s.kafka, log_level=0)
                self._admin.list_topics(timeout=3)
        except Exception:  # noqa: BLE001 - any failure means: away
            return False
        return True

    def check(self) -> dict[str, float]:
        """Probe both now; returns {dependency: since} of those away (services' reports included)."""
        for dep in dependency.DEPENDENCIES:
            if self._probe(dep):
                self.down.pop(dep, None)
            else:
                self.down.setdefault(dep, time.time())
                self.last_down[dep] = self.clock()
        return self.away_now()

    def waiting(self) -> dict[str, dict[str, float]]:
        return dependency.waiting(self.s.home / "run", self.s.namespace)

    def away_now(self) -> dict[str, float]:
        away = dict(self.down)
        for deps in self.waiting().values():
            for dep, since in deps.items():
                away[dep] = min(since, away.get(dep, since))
        return away

    def outage(self) -> dict[str, float]:
        """{dependency: since} away now or within ``grace_s`` (a crash this soon after is the outage's)."""
        away = self.check()
        now = self.clock()
        for dep, at in self.last_down.items():
            if dep not in away and now - at < self.grace_s:
                away[dep] = time.time() - (now - at)
        return away
