"""A one-rank training run never imports horovod (issue #26): on a fresh machine horovod is still building when
the first training starts. The run goes in a subprocess where ``import horovod`` fails (``sys.modules`` entry
None), from the recorded bars, and still trains, saves a registry version with its resolved configuration, writes
the report and result.json. The same wrapper under horovodrun's environment fails at the import: the test
would catch a trainer that imports horovod unconditionally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minutecast.registry import Registry
from training.ranks import LAUNCHER_ENV, OneRank, start, wants_horovod

pytestmark = pytest.mark.tensorflow

REPO = Path(__file__).resolve().parents[1]
# python -c WRAPPER ARGS: python -m training.train ARGS with every horovod import failing (ModuleNotFoundError).
NO_HOROVOD = ("import runpy, sys; sys.modules['horovod'] = None; sys.argv[0] = 'training.train'; "
              "runpy.run_module('training.train', run_name='__main__', alter_sys=True)")


def train_without_horovod(shared_data: Path, home: Path, extra_env: dict[str, str] | None = None,
                          ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("MINUTECAST_")}
    env |= {"MINUTECAST_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)} | (extra_env or {})
    cmd = [sys.executable, "-c", NO_HOROVOD, "--bars", str(shared_data), "--tickers", "SPY,AAPL,MSFT",
           "--preset", "tiny", "--epochs", "1", "--max-samples", "3000", "--threads", "1", "--no-promote"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_one_rank_trains_and_saves_where_horovod_cannot_be_imported(shared_data: Path, tmp_path: Path) -> None:
    proc = train_without_horovod(shared_data, tmp_path / "home")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "1 rank(s) (no Horovod)" in proc.stderr
    registry = Registry(tmp_path / "home" / "models")
    assert registry.versions() == [result["version"]]
    config = registry.load(result["version"]).meta["config"]
    assert (config["ranks"], config["horovod"], config["preset"]["name"]) == (1, False, "tiny")
    assert result["samples"]["train"] == 3000 and result["coverage_80"] > 0 and result["model_rmse"] > 0
    report = json.loads((tmp_path / "home" / "reports" / result["version"] / "report.json").read_text())
    assert report["tickers"] == 3 and report["config"] == config
    ckpts = sorted((tmp_path / "home" / "checkpoints" / "train").glob("*/epoch-*/meta.json"))
    assert ckpts and json.loads(ckpts[-1].read_text())["config"] == config  # the resolved config, every checkpoint


def test_the_wrapper_fails_a_trainer_that_imports_horovod(shared_data: Path, tmp_path: Path) -> None:
    """Under horovodrun's variables the trainer imports horovod: the wrapper makes that import fail."""
    proc = train_without_horovod(shared_data, tmp_path / "home", {"HOROVOD_RANK": "0", "HOROVOD_SIZE": "1"})
    assert proc.returncode != 0 and "horovod" in proc.stderr and "ModuleNotFoundError" in proc.stderr


def test_horovod_is_wanted_only_for_a_launcher_or_gradient_accumulation() -> None:
    assert not wants_horovod(1, {})
    assert wants_horovod(1, {"HOROVOD_RANK": "1"}) and wants_horovod(1, {"OMPI_COMM_WORLD_SIZE": "2"})
    assert wants_horovod(4, {})  # Horovod's optimizer accumulates the backward passes
    one = start(1, {})
    assert (one.rank, one.size, one.horovod, one.callbacks()) == (0, 1, False, [])
    comm = OneRank()
    assert comm.allgather_object({"a": 1}) == [{"a": 1}] and comm.broadcast_object(7, root_rank=0) == 7
    marker = object()
    assert one.optimizer(marker, fp16=True, backward_passes=1) is marker
