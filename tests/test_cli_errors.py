"""The entry points' error contract (minutecast.entry.run_main): an error a user can cause is exactly one line
``PROG: what went wrong; what to do`` on stderr and exit 1, with no traceback (``minutecast -v`` adds it); a
bug keeps its traceback. Each entry point is run into one such error (no service needed: Kafka is pointed at
a closed port); `--help` keeps each launch command of a module docstring on its own line."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLOSED = {"MINUTECAST_KAFKA_BOOTSTRAP": "127.0.0.1:1", "MINUTECAST_REDIS_PORT": "1",
          "MINUTECAST_METRICS_PORT": "0", "MINUTECAST_WEB_PORT": "0"}


def run(*cmd: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "MINUTECAST_SERVE_TOKEN"}
    return subprocess.run([sys.executable, *cmd], env=base | (env or {}), capture_output=True, text=True,
                          timeout=timeout, check=False)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run("-m", "minutecast.cli", *args, env=env)


def the_error_line(proc: subprocess.CompletedProcess[str], prog: str) -> str:
    """The one line the entry point printed for its error (log lines around it are the service's own)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith(f"{prog}: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def one_date(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Recorded bars of two tickers on one UTC date (one or two New York dates): too little to train on."""
    out = tmp_path_factory.mktemp("one-date")
    for t in ("AAPL", "MSFT"):
        with gzip.open(shared_data / f"{t}.csv.gz", "rt") as src:
            header, *rows = src.read().splitlines()
        day = rows[len(rows) // 2][:10]
        (out / f"{t}.csv").write_text("\n".join([header, *[r for r in rows if r.startswith(day)]]) + "\n")
    return out


def test_a_bad_setting_is_one_line_naming_the_variable() -> None:
    proc = run_cli("status", env={"MINUTECAST_BAR_PARTITIONS": "abc"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines and all(x.startswith("minutecast status: MINUTECAST_BAR_PARTITIONS:") for x in lines)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (("stream", "--wait", "1"), "Kafka at 127.0.0.1:1 did not answer within 1 s"),  # the Faust worker
    (("infer", "--wait", "1"), "Kafka at 127.0.0.1:1 did not answer within 1 s"),  # the Spark job
    (("produce", "--source", "synthetic", "--tickers", "3"), "--tickers: '3' is not a ticker (yfinance spelling"),
    (("serve", "--host", "0.0.0.0"), "needs MINUTECAST_SERVE_TOKEN"),  # noqa: S104 - the error under test
])
def test_each_entry_point_prints_its_error_as_one_line(args: tuple[str, ...], expected: str) -> None:
    line = the_error_line(run_cli(*args, env=CLOSED), f"minutecast {args[0]}")
    assert expected in line
    if "Kafka at" in expected:  # ServiceUnavailable names what to do
        assert line.endswith("`minutecast infra up` starts the local Kafka and Redis, `minutecast status` checks them")


def test_verbose_adds_the_traceback_to_the_line() -> None:
    proc = run_cli("-v", "stream", "--wait", "1", env=CLOSED)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ServiceUnavailable" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("minutecast stream: Kafka at 127.0.0.1:1")


def test_a_bug_keeps_its_traceback() -> None:
    proc = run("-c", "import sys; from minutecast.entry import run_main; "
                     "sys.exit(run_main(lambda: 1 / 0, 'prog'))")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


@pytest.mark.tensorflow
def test_training_child_error_is_one_line_of_its_own(one_date: Path, tmp_path: Path) -> None:
    env = CLOSED | {"MINUTECAST_HOME": str(tmp_path / "home"), "MINUTECAST_NP": "1"}
    line = the_error_line(run("-m", "training.train", "--bars", str(one_date), "--no-promote", env=env),
                          "training.train")
    assert "need bars from at least 3 trading dates" in line


@pytest.mark.tensorflow
def test_minutecast_train_reports_its_childs_error_once(one_date: Path, tmp_path: Path) -> None:
    env = CLOSED | {"MINUTECAST_HOME": str(tmp_path / "home"), "MINUTECAST_NP": "1"}
    proc = run_cli("train", "--bars", str(one_date), "--no-promote", env=env)
    line = the_error_line(proc, "minutecast train")
    assert "need bars from at least 3 trading dates" in line
    # The child's line went to its parent (MINUTECAST_ERROR_FILE), not the screen: said once.
    assert not any(x.startswith("training.train: ") for x in proc.stderr.splitlines())


def test_help_keeps_the_launch_commands_on_their_own_lines() -> None:
    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    assert "\n    minutecast train --every 1h" in proc.stdout  # raw description: not reflowed into one paragraph
