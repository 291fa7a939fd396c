"""`make run` builds horovod in the background (infra/bootstrap.sh --defer-horovod) and the trainer waits for it
(infra/horovod_build.py). The real bootstrap script runs against a stand-in virtualenv whose ``pip`` takes a few
seconds to "build" horovod (or fails), so the pipeline's set-up returning first, the status file, a foreground
set-up waiting for a running build, and a failed build are all seen; no services, no real build."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from infra import horovod_build

REPO = Path(__file__).resolve().parents[1]
BUILD_S = 4  # the stand-in build's duration

PYTHON = """#!/bin/bash
case "$*" in *horovod*) [ -f "$(dirname "$0")/../hvd-installed" ] && exit 0 || exit 1;; esac
case "$*" in *tensorflow*) [ -f "$(dirname "$0")/../tf-installed" ] && exit 0 || exit 1;; esac
exit 0
"""
PIP = f"""#!/bin/bash
echo "$*" >> "$(dirname "$0")/../pip-calls"
case "$*" in *horovod*) sleep {BUILD_S}; [ -n "$FAKE_FAIL" ] && exit 3; touch "$(dirname "$0")/../hvd-installed";; esac
case "$*" in *.[[]dev[]]*) sleep 1; touch "$(dirname "$0")/../tf-installed";; esac
exit 0
"""


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    v = tmp_path / "venv"
    (v / "bin").mkdir(parents=True)
    for name, body in (("python", PYTHON), ("pip", PIP), ("minutecast", "#!/bin/bash\nexit 0\n")):
        (v / "bin" / name).write_text(body)
        (v / "bin" / name).chmod(0o755)
    # The pinned packages count as installed: only the horovod step does anything.
    (v / ".minutecast-deps").write_text(STAMP)
    (v / "tf-installed").touch()
    return v


STAMP = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest() + "\n"


def bootstrap(venv: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "infra" / "bootstrap.sh"), *args], capture_output=True, text=True,
                          timeout=120, check=True, env=os.environ | {"MINUTECAST_VENV": str(venv),
                                                                     "MINUTECAST_CACHE": str(venv.parent)} | env)


def wait_while_building(venv: Path) -> str:
    deadline = time.monotonic() + 60
    while horovod_build.state(venv) == "building" and time.monotonic() < deadline:
        time.sleep(0.2)
    return horovod_build.state(venv)


def test_deferred_build_runs_in_the_background_and_records_its_result(venv: Path) -> None:
    assert horovod_build.state(venv) == "missing"
    t0 = time.monotonic()
    out = bootstrap(venv, "--defer-horovod").stdout
    assert time.monotonic() - t0 < BUILD_S and "building horovod 0.28.1 in the background" in out
    assert horovod_build.state(venv) == "building"
    assert "trainer waits for the background install" in horovod_build.waiting_text(venv)
    again = bootstrap(venv, "--defer-horovod").stdout  # a second `make run` does not start a second build
    assert "the background build is still running" in again
    assert wait_while_building(venv) == "ready" and horovod_build.waiting_text(venv) == ""
    assert (venv / "hvd-installed").exists()


def test_a_foreground_setup_waits_for_the_background_build(venv: Path) -> None:
    bootstrap(venv, "--defer-horovod")
    out = bootstrap(venv).stdout  # `make test` / `make setup` while `make run`'s build runs
    assert "waiting for the background install" in out and (venv / "hvd-installed").exists()
    assert horovod_build.state(venv) == "ready"


def test_a_failed_background_build_is_reported(venv: Path) -> None:
    bootstrap(venv, "--defer-horovod", FAKE_FAIL="1")
    assert wait_while_building(venv) == "failed"
    assert (venv / ".minutecast-horovod-build").read_text().split() == ["failed", "3"]
    assert "the horovod build failed" in horovod_build.waiting_text(venv)


def test_a_fresh_virtualenv_gets_the_pipeline_first_and_tensorflow_in_the_background(venv: Path) -> None:
    """make run on a fresh virtualenv: the pipeline's packages (no TensorFlow) in the foreground, then TensorFlow
    with the test tools and horovod in the background; the packages' stamp only once all are in."""
    (venv / ".minutecast-deps").unlink()
    (venv / "tf-installed").unlink()
    t0 = time.monotonic()
    out = bootstrap(venv, "--defer-horovod").stdout
    assert time.monotonic() - t0 < BUILD_S and "TensorFlow and horovod follow in the background" in out
    assert "installing TensorFlow and the test tools, then building horovod 0.28.1 in the background" in out
    core = (venv / ".minutecast-core-requirements.txt").read_text().split()
    assert "pyspark==4.2.0" in core and not [r for r in core if r.startswith("tensorflow")]
    assert not (venv / ".minutecast-deps").exists()  # not all in yet: a later set-up would install the rest
    assert wait_while_building(venv) == "ready" and (venv / ".minutecast-deps").read_text() == STAMP
    calls = (venv / "pip-calls").read_text().splitlines()
    order = [next(i for i, c in enumerate(calls) if key in c) for key in ("-r ", ".[dev]", "horovod")]
    assert order == sorted(order), calls  # the pipeline's packages, then TensorFlow and the tools, then horovod
