"""Helpers for tests around the real services and subprocesses: skip-or-fail when a service is missing,
free loopback ports, polling for a condition."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(msg: str) -> None:
    """A missing service: a failure under CI, a skip on a developer's machine."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(n: int) -> int:
    """A port ``p`` with ``p`` .. ``p + n - 1`` all free on 127.0.0.1 (brokers with their controllers)."""
    for _ in range(50):
        p = free_port()
        if p + n > 65000:
            continue
        with contextlib.ExitStack() as held:
            try:
                for i in range(n):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", p + i))
            except OSError:
                continue
            return p
    raise RuntimeError(f"no {n} adjacent free ports")


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
