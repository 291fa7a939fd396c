"""Small helpers to run a local server as a detached process with a pid file and a log file, and the guard
that `minutecast run` starts each service under (a service never outlives its supervisor):

    python -m infra.procs guard --parent PID --tag TAG [--grace-s 30] -- CMD [ARGS...]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import retry, retry_if_result, stop_after_delay, wait_fixed


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def read_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    # A zombie (exited child not yet reaped) counts as dead.
    with contextlib.suppress(FileNotFoundError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return None
    return pid


def spawn(cmd: list[str], pidfile: Path, logfile: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` in its own session (it outlives us), stdout+stderr appended to ``logfile``."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    pidfile.write_text(str(proc.pid))
    return proc.pid


def stop(pidfile: Path, timeout_s: float = 30.0) -> bool:
    """SIGTERM the process in ``pidfile``, SIGKILL after ``timeout_s``. True if one was running."""
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and read_pid(pidfile) is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    if read_pid(pidfile) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    pidfile.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (parallel test sessions starting the same services)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def terminate(procs: list[subprocess.Popen[Any]], timeout_s: float = 30.0, *, group: bool = False) -> None:
    """SIGTERM every process still running, then wait for each; SIGKILL those that outlive ``timeout_s``
    (``group``: their whole process group, for processes started with ``start_new_session=True``)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            if group:
                os.killpg(p.pid, signal.SIGKILL)
            else:
                p.kill()
            p.wait(10)


# --- Supervised services (`minutecast run`): nothing a service started outlives the supervisor. ---------------

PR_SET_PDEATHSIG = 1  # prctl(2) options (linux/prctl.h)
PR_SET_CHILD_SUBREAPER = 36
WATCHDOG_S = 0.5  # how often a guard checks that its supervisor is still its parent
SWEEP_S = 10.0  # SIGTERM -> SIGKILL for what is left of a service's process tree once the service itself ended


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {value}): {os.strerror(err)}")


def _proc_stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, ppid, session id) of a process from /proc, None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
    return fields[0], int(fields[1]), int(fields[3])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, counts as dead)."""
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def tree(root: int) -> set[int]:
    """The live processes that belong to ``root``: its descendants and the members of the session it leads
    (a guard's session id is its pid), ``root`` itself excluded. Works after ``root`` is gone as well."""
    table = {int(p.name): st for p in Path("/proc").iterdir() if p.name.isdigit() and (st := _proc_stat(p.name))}
    found = {pid for pid, (_s, _pp, sid) in table.items() if sid == root}
    frontier = [root, *found]
    while frontier:
        parent = frontier.pop()
        kids = {pid for pid, (_s, pp, _sid) in table.items() if pp == parent and pid not in found}
        found |= kids
        frontier.extend(kids)
    return {pid for pid in found - {root, os.getpid()} if table[pid][0] not in ("Z", "X")}


def kill_tree(root: int, sig: int = signal.SIGKILL, include_root: bool = True) -> None:
    """Send ``sig`` to ``root`` and everything in :func:`tree` (the supervisor's last resort). Leave
    ``include_root`` off once ``root`` was reaped: its pid may belong to another program by then."""
    for pid in [root] * include_root + sorted(tree(root)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap() -> None:
    """Collect adopted orphans that exited (a subreaper's duty), so they stop counting as alive."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def sweep(root: int, grace_s: float = SWEEP_S) -> None:
    """SIGTERM what is left of ``root``'s tree, SIGKILL what still runs ``grace_s`` later."""

    left = tree(root)
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)

    @retry(stop=stop_after_delay(grace_s), wait=wait_fixed(0.1), retry=retry_if_result(bool),
           retry_error_callback=lambda state: state.outcome.result() if state.outcome else set())
    def still_running() -> set[int]:
        _reap()
        return {pid for pid in left if alive(pid)} | tree(root)

    for pid in still_running():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _reap()


def guard(parent: int, cmd: list[str], grace_s: float) -> int:
    """Run ``cmd`` until it exits, we are signalled, or ``parent`` (the supervisor) dies -- by any means,
    SIGKILL included: the kernel sends us SIGTERM then (parent-death signal), and a watchdog sees the parent
    change as well. Then SIGTERM the service, SIGKILL it after ``grace_s``, and end every process it left
    behind. Returns the service's exit status (128 + signal number when a signal ended it)."""
    stop_now = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: stop_now.set())
    # Set here, first thing in the child, not in a preexec_fn: preexec_fn is not safe in a parent with
    # threads (the supervisor has librdkafka's); the getppid check below closes the window before it.
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the service re-parent to us, so we can end them
    if os.getppid() != parent:  # the supervisor died before the prctl: its signal would never come
        return 1
    child = subprocess.Popen(cmd)  # stdio inherited: the service's log file
    while child.poll() is None and not stop_now.is_set() and os.getppid() == parent:
        stop_now.wait(WATCHDOG_S)
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    sweep(os.getpid())
    rc = child.returncode
    return rc if rc >= 0 else 128 - rc


def guard_command(parent: int, tag: str, cmd: list[str], grace_s: float) -> list[str]:
    """The command line that runs ``cmd`` under :func:`guard`; ``tag`` makes its /proc cmdline
    recognisable (pid files are only believed when the recorded pid still carries it)."""
    return [sys.executable, "-m", "infra.procs", "guard", "--parent", str(parent), "--tag", tag,
            "--grace-s", f"{grace_s:g}", "--", *cmd]


def read_tagged_pid(pidfile: Path, tag: str) -> tuple[int | None, str]:
    """(pid, "") when ``pidfile`` names a live process whose command line carries ``tag``; else
    (None, why the file is stale: missing, unreadable, dead pid, or a pid now reused by another program)."""
    try:
        pid = int(pidfile.read_text().strip())
    except FileNotFoundError:
        return None, "no pid file"
    except (ValueError, OSError):
        return None, "unreadable"
    if not alive(pid):
        return None, f"pid {pid} is not running"
    args = cmdline(pid)
    if args is None or tag not in args:
        return None, f"pid {pid} now runs another program ({' '.join(args or ['?'])[:60]})"
    return pid, ""


@dataclass
class RestartBudget:
    """How often a crashing service is restarted: ``max_restarts`` crashes in a row, then it is given up
    on; a run of ``healthy_s`` seconds without a crash starts a fresh budget. ``clock``: seconds."""

    max_restarts: int
    healthy_s: float
    clock: Callable[[], float] = time.monotonic
    restarts: int = 0
    up_since: float | None = None

    def started(self) -> None:
        self.up_since = self.clock()

    def crashed(self, outage: bool = False) -> bool:
        """Count a crash; True when the service may be restarted. ``outage``: it ended while a dependency (Kafka,
        Redis) was away: not a crash of ours, not counted (the budget is for crash-looping bugs)."""
        if self.up_since is not None and self.clock() - self.up_since >= self.healthy_s:
            self.restarts = 0
        self.up_since = None
        if outage:
            return True
        self.restarts += 1
        return self.restarts <= self.max_restarts

    def backoff_s(self) -> float:
        """Seconds to wait before the restart: 2, 4, 8, ... at most 30."""
        return min(2.0 ** self.restarts, 30.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m infra.procs", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("guard", help="run a command under a supervisor's guard (minutecast run does this)")
    g.add_argument("--parent", type=int, required=True, help="the supervisor's pid")
    g.add_argument("--tag", required=True, help="marks the command line (pid files check it)")
    g.add_argument("--grace-s", type=float, default=30.0, help="SIGTERM -> SIGKILL of the service")
    g.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("guard needs a command after --")
    return guard(args.parent, cmd, args.grace_s)


if __name__ == "__main__":
    sys.exit(main())
