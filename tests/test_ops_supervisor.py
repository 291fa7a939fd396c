"""`minutecast run`'s supervisor (ops/supervisor.py, infra/procs.py): no service outlives it, whatever
ends it; a second run of a namespace is refused; stale pid files are found; the restart budget resets.

The supervisor is the real one, run as a user runs it (`python -m minutecast.cli run`); only its services are
replaced (`--fake-services`: a shell with two sleeps, started through the same guard, pid files and restarts),
so these tests need no Kafka, Redis or Spark and take seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tenacity import retry, retry_if_exception_type, retry_if_result, stop_after_delay, wait_fixed

from infra import procs
from minutecast.settings import InfraSettings
from ops.status import collect
from ops.supervisor import service_pidfile, service_pidfiles, service_pids, service_tag

REPO = Path(__file__).resolve().parents[1]
NAMES = {"stream", "infer", "produce"}  # the services --fake-services starts


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


PREFIX = f"sup{uuid.uuid4().hex[:6]}"  # every namespace of this module: what a failed test leaves is found by it


def new_namespace() -> str:
    return f"{PREFIX}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started; whatever of them, or of this module's guards, a failed test leaves is killed."""
    mine: list[subprocess.Popen[str]] = []
    yield mine
    for proc in mine:
        if proc.poll() is None:
            procs.kill_tree(proc.pid)
            proc.wait(10)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and any(a.startswith(f"minutecast-run:{PREFIX}") for a in
                                        procs.cmdline(int(entry.name)) or []):
            procs.kill_tree(int(entry.name))


def run_cmd(home: Path, namespace: str, *extra: str, **env: str) -> tuple[list[str], dict[str, str]]:
    return ([sys.executable, "-m", "minutecast.cli", "run", "--fake-services", *extra],
            {**os.environ, "MINUTECAST_HOME": str(home), "MINUTECAST_NAMESPACE": namespace, **env})


def start_run(started: list[subprocess.Popen[str]], home: Path, namespace: str, *extra: str,
              stdout: int = subprocess.DEVNULL, **env: str) -> subprocess.Popen[str]:
    cmd, environ = run_cmd(home, namespace, *extra, **env)
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, env=environ, cwd=REPO)
    started.append(proc)
    return proc


def run_once(home: Path, namespace: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd, environ = run_cmd(home, namespace, *extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, cwd=REPO, timeout=60, check=False)


@retry(stop=stop_after_delay(30), wait=wait_fixed(0.2), retry=retry_if_exception_type(AssertionError), reraise=True)
def running(home: Path, namespace: str) -> set[int]:
    """Every process of the run's services once all are up: each guard, its shell and the shell's sleeps."""
    pids = service_pids(home / "run", namespace)
    assert set(pids) == NAMES and all(pids.values()), pids
    found: set[int] = set()
    for guard in pids.values():
        assert guard is not None
        members = procs.tree(guard)
        assert len(members) == 3, (guard, members)  # sh -c 'sleep 600 & sleep 600': the shell, two sleeps
        found |= members | {guard}
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if procs.alive(pid)}


@retry(stop=stop_after_delay(20), wait=wait_fixed(0.2), retry=retry_if_result(bool),
       retry_error_callback=lambda state: state.outcome.result() if state.outcome else None)
def survivors(pids: set[int]) -> set[int]:
    """Those of ``pids`` still alive, once they had up to 20 s to end."""
    return alive(pids)


def service_shell(home: Path, namespace: str, name: str) -> tuple[int, int]:
    """(guard pid, pid of the service it runs: the fake service's shell)."""
    guard = service_pids(home / "run", namespace)[name]
    assert guard is not None
    shells = [pid for pid in procs.tree(guard) if (procs.cmdline(pid) or [""])[0] == "sh"]
    assert len(shells) == 1, shells
    return guard, shells[0]


def test_broken_stdout_stops_every_service(home: Path, started: list[subprocess.Popen[str]]) -> None:
    """`minutecast run | head -1`: the reader goes away after one line; the run stops all it started."""
    ns = new_namespace()
    proc = start_run(started, home, ns, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("running: ")
    pids = running(home, ns)
    proc.stdout.close()  # what `head -1` does after its line (or a `tee` killed by Ctrl-C)
    assert proc.wait(60) == 0
    assert survivors(pids) == set()
    assert service_pidfiles(home / "run", ns) == {}
    assert proc.stderr is not None
    assert "stdout was closed; stopping the services" in proc.stderr.read()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_signal_stops_every_service(home: Path, started: list[subprocess.Popen[str]], sig: int) -> None:
    ns = new_namespace()
    proc = start_run(started, home, ns)
    pids = running(home, ns)
    proc.send_signal(sig)
    assert proc.wait(60) == 0
    assert survivors(pids) == set()
    assert service_pidfiles(home / "run", ns) == {}
    assert not (home / "run" / f"run.{ns}.lock").exists()  # no file left per namespace a run ever used


def test_sigkill_of_the_supervisor_leaves_no_service(home: Path, started: list[subprocess.Popen[str]]) -> None:
    """Nothing can run in the supervisor after SIGKILL: the guards' parent-death signal ends the services."""
    ns = new_namespace()
    proc = start_run(started, home, ns)
    pids = running(home, ns)
    proc.kill()
    proc.wait(10)
    assert survivors(pids) == set()
    # Its pid files stay behind, and are known to be stale (the next run removes them).
    left = service_pidfiles(home / "run", ns)
    assert set(left) == NAMES
    assert all(procs.read_tagged_pid(p, service_tag(ns, n))[1].endswith("is not running") for n, p in left.items())
    after = run_once(home, ns, "--for", "1")  # the next run: the lock died with its holder; the files are stale
    assert after.returncode == 0, after.stderr
    assert after.stdout.count("removed a stale pid file") == len(NAMES)


def test_second_run_of_a_namespace_is_refused_and_pid_files_are_per_namespace(
        home: Path, started: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    ns, other = new_namespace(), new_namespace()
    first = start_run(started, home, ns)
    pids = running(home, ns)
    files = {n: p.read_text() for n, p in service_pidfiles(home / "run", ns).items()}

    second = run_once(home, ns)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"namespace {ns!r} is already running" in lines[0], second.stderr
    assert f"`minutecast run` pid {first.pid}" in lines[0]
    assert alive(pids) == pids  # the refused run touched nothing
    assert {n: p.read_text() for n, p in service_pidfiles(home / "run", ns).items()} == files

    # Another namespace on the same machine runs beside it, and its exit leaves the first run's pid files.
    beside = run_once(home, other, "--for", "1")
    assert beside.returncode == 0, beside.stderr
    assert service_pidfiles(home / "run", other) == {}
    assert {n: p.read_text() for n, p in service_pidfiles(home / "run", ns).items()} == files
    assert alive(pids) == pids

    # `minutecast status` shows this namespace's services (no Kafka or Redis needed for that part).
    for name, value in {"MINUTECAST_HOME": str(home), "MINUTECAST_NAMESPACE": ns,
                        "MINUTECAST_KAFKA_BOOTSTRAP": "127.0.0.1:1", "MINUTECAST_REDIS_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    shown = collect(0.1, InfraSettings())["services"]
    assert {n: shown[n] for n in NAMES} == {n: {"up": True} for n in NAMES}

    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0
    assert survivors(pids) == set()


def test_services_left_without_a_supervisor_are_refused(home: Path, started: list[subprocess.Popen[str]]) -> None:
    """Services of the namespace still running (their supervisor gone, not yet stopped): refused, not doubled."""
    ns = new_namespace()
    (home / "run").mkdir(parents=True)
    cmd = procs.guard_command(os.getpid(), service_tag(ns, "stream"), ["sleep", "600"], grace_s=5)
    orphan = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True, text=True)
    started.append(orphan)
    service_pidfile(home / "run", ns, "stream").write_text(str(orphan.pid))

    refused = run_once(home, ns)
    assert refused.returncode == 1
    assert f"still running without their `minutecast run` (stream {orphan.pid})" in refused.stderr
    assert f"kill -TERM -{orphan.pid}" in refused.stderr
    assert orphan.poll() is None
    orphan.terminate()
    assert orphan.wait(30) == 128 + signal.SIGTERM  # the guard reports how its service ended


def test_stale_pid_files_are_detected_and_removed(home: Path, started: list[subprocess.Popen[str]]) -> None:
    """A dead pid, and a pid now used by another program: both stale; the other program is left alone."""
    ns = new_namespace()
    run_dir = home / "run"
    run_dir.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stranger = subprocess.Popen(["sleep", "600"], text=True)
    started.append(stranger)
    service_pidfile(run_dir, ns, "stream").write_text(str(dead.pid))
    service_pidfile(run_dir, ns, "infer").write_text(str(stranger.pid))
    assert service_pids(run_dir, ns) == {"infer": None, "stream": None}

    done = run_once(home, ns, "--for", "1")
    assert done.returncode == 0, done.stderr
    assert f"(pid {dead.pid} is not running)" in done.stdout
    assert f"(pid {stranger.pid} now runs another program (sleep 600))" in done.stdout
    assert stranger.poll() is None  # never signalled: it is not ours
    assert service_pidfiles(run_dir, ns) == {}  # the run's own, removed at its exit


def test_a_crashed_service_is_restarted_and_given_up_on_past_its_budget(
        home: Path, started: list[subprocess.Popen[str]]) -> None:
    ns = new_namespace()
    proc = start_run(started, home, ns, stdout=subprocess.PIPE)
    pids = running(home, ns)
    guard, shell = service_shell(home, ns, "stream")
    old = {guard, *procs.tree(guard)}
    os.kill(shell, signal.SIGKILL)  # the service crashes; its guard sweeps its sleeps and exits 137

    @retry(stop=stop_after_delay(30), wait=wait_fixed(0.2), retry=retry_if_exception_type(AssertionError),
           reraise=True)
    def restarted() -> int:
        now = service_pids(home / "run", ns)["stream"]
        assert now not in (None, guard)
        return now

    new_guard = restarted()
    assert survivors(old) == set()  # the crashed service's sleeps went with it
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert f"stream: exited {128 + signal.SIGKILL}; restart 1/5 in 2 s" in out
    assert survivors(pids | {new_guard, *procs.tree(new_guard)}) == set()

    # MINUTECAST_RESTART_MAX=0: the first crash ends the run, which fails.
    ns = new_namespace()
    proc = start_run(started, home, ns, stdout=subprocess.PIPE, MINUTECAST_RESTART_MAX="0")
    pids = running(home, ns)
    os.kill(service_shell(home, ns, "infer")[1], signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"infer: exited {128 + signal.SIGKILL}, crash 1 in a row, over its budget of 0 restarts; giving up" in out
    assert survivors(pids) == set()


def test_restart_budget_resets_after_a_healthy_period() -> None:
    """Pure logic, on a fake clock (seconds)."""
    now = [0.0]
    budget = procs.RestartBudget(max_restarts=3, healthy_s=600.0, clock=lambda: now[0])
    backoffs = []
    for _ in range(3):  # three quick crashes: each restarted, backing off
        budget.started()
        now[0] += 5
        assert budget.crashed()
        backoffs.append(budget.backoff_s())
    assert backoffs == [2.0, 4.0, 8.0]
    budget.started()
    now[0] += 599  # up, but not for a healthy period
    assert not budget.crashed()  # the fourth crash in a row: given up on

    budget = procs.RestartBudget(max_restarts=3, healthy_s=600.0, clock=lambda: now[0])
    for _ in range(3):
        budget.started()
        now[0] += 5
        assert budget.crashed()
    budget.started()
    now[0] += 600  # a healthy period, then a crash: a fresh budget
    assert budget.crashed() and budget.restarts == 1 and budget.backoff_s() == 2.0
    for _ in range(2):
        budget.started()
        now[0] += 5
        assert budget.crashed()
    budget.started()
    now[0] += 5
    assert not budget.crashed() and budget.restarts == 4
    assert procs.RestartBudget(max_restarts=99, healthy_s=1, restarts=9).backoff_s() == 30.0  # capped
