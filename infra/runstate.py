"""What runs on this machine, as `minutecast status` and ``GET /api/status`` report it: the pid-file layout of
`minutecast run`'s services (one file per namespace and service, written by ``ops/supervisor.py``) and
:func:`local`, the probe of the local processes that :func:`minutecast.status.collect` takes as its input.
"""

from __future__ import annotations

import contextlib
import glob
from pathlib import Path
from typing import Any

from infra import horovod_build, procs
from infra.services import status as infra_status
from minutecast.status import Local

DONE = "done"  # a one-shot service's pid file after it finished (exit 0): not a crash, not running


def service_tag(namespace: str, name: str) -> str:
    """Marks a service's guard command line: a pid file is believed only while its pid carries this."""
    return f"minutecast-run:{namespace}:{name}"


def service_pidfile(run_dir: Path, namespace: str, name: str) -> Path:
    return run_dir / f"svc.{namespace}.{name}.pid"


def service_pidfiles(run_dir: Path, namespace: str) -> dict[str, Path]:
    """This namespace's pid files by service name (service names hold no dot; namespaces may)."""
    prefix = f"svc.{namespace}."
    found = {p.name[len(prefix):-len(".pid")]: p for p in run_dir.glob(f"{glob.escape(prefix)}*.pid")}
    return {name: p for name, p in sorted(found.items()) if name and "." not in name}


def service_pids(run_dir: Path, namespace: str) -> dict[str, int | None]:
    """Each recorded service of the namespace: its guard's pid while it runs, else None (`minutecast status`)."""
    return {name: procs.read_tagged_pid(p, service_tag(namespace, name))[0]
            for name, p in service_pidfiles(run_dir, namespace).items()}


def mark_done(run_dir: Path, namespace: str, name: str) -> None:
    """Record that a one-shot service (a replay) finished, so `minutecast status` does not call it DOWN."""
    service_pidfile(run_dir, namespace, name).write_text(f"{DONE}\n")


def service_states(run_dir: Path, namespace: str) -> dict[str, str]:
    """Each recorded service of the namespace: ``up`` (its guard runs), ``done`` (finished) or ``down``."""
    states = {}
    for name, path in service_pidfiles(run_dir, namespace).items():
        with contextlib.suppress(OSError):
            if path.read_text().strip() == DONE:
                states[name] = DONE
                continue
        states[name] = "up" if procs.read_tagged_pid(path, service_tag(namespace, name))[0] else "down"
    return states


def local(s: Any) -> Local:
    """This machine's Kafka/Redis processes (`minutecast infra`), the namespace's `minutecast run` services and
    the horovod build, for :func:`minutecast.status.collect` (``s``: InfraSettings)."""
    rows = {r.name: {"up": r.up, "version": r.version, "address": r.address} for r in infra_status(s)}
    return Local(infra=rows, runs=service_states(s.home / "run", s.namespace), horovod=horovod_build.state())
