"""Waiting out a dependency (minutecast/dependency.py, issue #29): the report a waiting process leaves, the
restart budget that an outage does not spend, and a Redis client that waits inside a command while a real
redis-server is away.

    ~/.cache/minutecast/venv/bin/python -m pytest tests/test_outage_units.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis as redislib
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr

from infra import procs
from infra.services import LocalRedis
from minutecast import dependency
from minutecast.errors import ServiceUnavailable
from minutecast.metrics import register_dependencies
from minutecast.redis import connect, wait_for_redis
from minutecast.settings import RedisSettings
from ops import status
from ops.supervisor import Outages
from tests.support.services import free_port, kill_pidfile


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process reports as service ``unit`` of namespace ``ns`` under a private home; a fresh state."""
    monkeypatch.setenv("MINUTECAST_HOME", str(tmp_path))
    monkeypatch.setenv("MINUTECAST_NAMESPACE", "ns")
    monkeypatch.setenv("MINUTECAST_SERVICE", "unit")
    monkeypatch.setattr(dependency, "STATE", dependency._State())
    return tmp_path / "run"


def test_wait_reports_the_outage_while_it_lasts_and_clears_it(reports: Path) -> None:
    tries: list[float] = []
    seen: list[dict[str, dict[str, float]]] = []

    def probe() -> str:
        tries.append(time.time())
        seen.append(dependency.waiting(reports, "ns"))
        if len(tries) < 4:
            raise redislib.ConnectionError("connection refused")
        return "PONG"

    assert dependency.wait("redis", probe, lambda e: isinstance(e, redislib.ConnectionError)) == "PONG"
    assert seen[0] == {}  # first try: not waiting yet
    assert set(seen[1]) == {"unit"} and set(seen[1]["unit"]) == {"redis"}
    assert seen[3]["unit"]["redis"] == seen[1]["unit"]["redis"] <= tries[1]  # since the first failure
    assert dependency.describe(seen[3]["unit"]).startswith("waiting for Redis since ")
    assert dependency.waiting(reports, "ns") == {} and dependency.is_up("redis")  # back: cleared


def test_a_limited_wait_gives_up_without_leaving_a_report(reports: Path) -> None:
    rs = RedisSettings(port=free_port(), password=SecretStr("x"))  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="did not answer within 2 s"):
        wait_for_redis(rs, timeout_s=1.5)
    assert time.monotonic() - t0 < 15
    assert dependency.waiting(reports, "ns") == {} and dependency.is_up("redis")


def test_reports_of_ended_processes_are_ignored_and_removed(reports: Path) -> None:
    reports.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = reports / f"deps.ns.produce.{dead.stdout.strip()}.json"
    stale.write_text(json.dumps({"redis": 1.0}))
    live = reports / f"deps.ns.infer.{os.getpid()}.json"
    live.write_text(json.dumps({"kafka": 2.0}))
    other = reports / f"deps.other.infer.{os.getpid()}.json"
    other.write_text(json.dumps({"kafka": 3.0}))
    assert dependency.waiting(reports, "ns") == {"infer": {"kafka": 2.0}}
    assert not stale.exists() and other.exists()


def test_the_gauge_says_which_dependency_this_process_waits_for(reports: Path) -> None:
    registry = CollectorRegistry()
    register_dependencies(registry)
    register_dependencies(registry)  # once per registry
    dependency.mark_down("kafka", "all brokers down")
    text = generate_latest(registry).decode()
    assert 'minutecast_dependency_up{dependency="kafka"} 0.0' in text
    assert 'minutecast_dependency_up{dependency="redis"} 1.0' in text
    dependency.mark_up("kafka")
    assert 'minutecast_dependency_up{dependency="kafka"} 1.0' in generate_latest(registry).decode()


def test_status_shows_a_waiting_service() -> None:
    out = {"namespace": "ns", "services": {"redis": {"up": False}, "produce": {
        "up": True, "state": "waiting", "waiting_for": {"redis": 0.0},
        "detail": dependency.describe({"redis": time.mktime((2026, 12, 6, 14, 45, 2, 0, 0, -1))})}},
        "model_version": "persistence"}
    text = status.render(out)
    assert "waiting for Redis since 14:45:02" in text and "DOWN" in text


def test_an_outage_does_not_spend_the_restart_budget() -> None:
    now = [0.0]
    budget = procs.RestartBudget(max_restarts=1, healthy_s=600.0, clock=lambda: now[0])
    for _ in range(10):  # ends while a dependency is away: restarted every time, never given up on
        budget.started()
        now[0] += 30
        assert budget.crashed(outage=True)
    assert budget.restarts == 0
    budget.started()
    assert budget.crashed()  # a crash of its own: counted
    budget.started()
    assert not budget.crashed()


@pytest.mark.integration
def test_a_waiting_client_rides_out_a_redis_restart(private_redis: tuple[LocalRedis, RedisSettings],
                                                    reports: Path) -> None:
    """SIGKILL the redis-server, start it again 4 s later: a command issued meanwhile waits and succeeds, and
    the process reports Redis away meanwhile; a client that does not wait fails at once."""
    server, rs = private_redis
    client = connect(rs, wait=True)
    client.set("k", "v")
    client.bgrewriteaof()  # the value survives the SIGKILL (AOF)
    time.sleep(1.5)
    kill_pidfile(server.pidfile, rs.port)
    with pytest.raises(redislib.ConnectionError):
        connect(rs, wait=False).get("k")
    seen: list[dict[str, dict[str, float]]] = []

    def restart() -> None:
        time.sleep(4)
        seen.append(dependency.waiting(reports, "ns"))
        server.up()

    t = threading.Thread(target=restart)
    t.start()
    t0 = time.monotonic()
    assert client.get("k") == b"v"  # waited for the restart
    t.join()
    assert time.monotonic() - t0 >= 3.5
    assert seen and "redis" in seen[0].get("unit", {}), seen
    assert dependency.is_up("redis") and dependency.waiting(reports, "ns") == {}


def test_the_supervisor_counts_a_crash_soon_after_an_outage_as_the_outage_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outages: what its probes see away, what the services report waiting for, and a grace after the return
    (a service failing on a timeout that ran out during the outage)."""
    now = [0.0]
    o = Outages(SimpleNamespace(home=tmp_path, namespace="ns"), grace_s=60.0, clock=lambda: now[0])
    up = {"redis": False, "kafka": True}
    monkeypatch.setattr(o, "_probe", lambda dep: up[dep])
    assert set(o.outage()) == {"redis"}
    up["redis"] = True
    now[0] = 30.0
    assert set(o.outage()) == {"redis"}  # back 30 s ago: still the outage's
    now[0] = 91.0
    assert o.outage() == {}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / f"deps.ns.infer.{os.getpid()}.json").write_text(json.dumps({"kafka": 5.0}))
    assert o.outage() == {"kafka": 5.0}  # a service reports waiting although the probe got through
