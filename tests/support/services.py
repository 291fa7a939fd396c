"""Helpers for tests around the real services and subprocesses: skip-or-fail when a service is missing,
free loopback ports, polling for a condition."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.procs import port_open, read_pid

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(msg: str) -> None:
    """A missing service: a failure under CI, a skip on a developer's machine."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


# Ports handed to services come from below the kernel's ephemeral range (net.ipv4.ip_local_port_range,
# 32768-60999 by default): a port picked by binding to 0 is an ephemeral one, and between the test
# releasing it and a JVM binding it seconds later, any outgoing connection on the machine (a Kafka client,
# a browser) may take it as its source port. Found by CI: a KRaft controller failing to bind its port.
_LOW, _HIGH = 20000, 32700


def _ephemeral_floor() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_run(n: int) -> int:
    """A port ``p`` with ``p`` .. ``p + n - 1`` all free on 127.0.0.1 (brokers with their controllers),
    chosen at random below the ephemeral range so that no outgoing connection takes it meanwhile."""
    high = min(_HIGH, _ephemeral_floor()) - n
    for _ in range(200):
        p = random.randrange(_LOW, high)
        if all(_bindable(p + i) for i in range(n)):
            return p
    raise RuntimeError(f"no {n} adjacent free ports in {_LOW}-{high + n}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, below the ephemeral range."""
    return free_port_run(1)


def free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` both free on 127.0.0.1 (a broker's client and controller ports)."""
    return free_port_run(2)


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               procs: list[subprocess.Popen[bytes]] | None = None, poll: float = 0.2) -> None:
    """Poll ``cond`` until it holds; fail on timeout or when one of ``procs`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for p in procs or []:
            assert p.poll() is None, f"worker exited with {p.returncode} while waiting for {what}"
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def aof_mark(data_dir: Path) -> tuple[Path, int]:
    """(the redis-server's newest incremental AOF file under ``data_dir``, its size now): what a power loss
    right now would keep if the disk had everything up to here (``appendfsync everysec`` promises no more
    than the writes of a second ago)."""
    files = sorted((data_dir / "appendonlydir").glob("*.incr.aof"), key=lambda f: int(f.name.split(".")[-3]))
    assert files, f"no incremental AOF under {data_dir}"
    return files[-1], files[-1].stat().st_size


def lose_unsynced_writes(mark: tuple[Path, int]) -> int:
    """After a SIGKILL of the redis-server: cut its AOF back to ``mark`` (:func:`aof_mark`), as a machine
    crash does to the writes not fsynced yet. Returns how many bytes were lost."""
    path, size = mark
    lost = path.stat().st_size - size
    assert lost >= 0, "the AOF was rewritten since the mark"
    with path.open("r+b") as fh:
        fh.truncate(size)
        os.fsync(fh.fileno())
    return lost


def kill_pidfile(pidfile: Path, port: int | None = None) -> None:
    """SIGKILL a service started by infra.services (our child), reap it, and wait until its pidfile is stale
    (and, given ``port``, until nothing answers there any more)."""
    pid = read_pid(pidfile)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    wait_until(lambda: read_pid(pidfile) is None and (port is None or not port_open("127.0.0.1", port)), 30,
               f"{pidfile.name} gone")
