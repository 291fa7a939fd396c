"""training.cleanup: old runs, checkpoints and reports of removed versions go, the last K stay, and neither the
run in progress nor anything of CURRENT's run is ever removed (no services, a scratch MINUTECAST_HOME)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from minutecast.errors import MinutecastError
from minutecast.registry import CURRENT_FILE, META_FILE
from minutecast.settings import TrainingSettings
from training import cleanup, cli

RUNS = [f"202511{d:02d}T030000Z" for d in range(1, 9)]  # eight runs, oldest first
VERSIONS = [f"202511{d:02d}T031500Z-{d:08x}" for d in range(1, 9)]  # the version each run saved


def home_with_runs(tmp_path: Path, current: int | None = 1) -> TrainingSettings:
    """Eight finished runs (run dir, checkpoints, version, report); CURRENT = the version of run ``current``."""
    s = TrainingSettings(home=tmp_path, keep_runs=3, keep_versions=4, bars=tmp_path)
    for run, version in zip(RUNS, VERSIONS, strict=True):
        (cleanup.runs_root(s) / run).mkdir(parents=True)
        (cleanup.runs_root(s) / run / "result.json").write_text(json.dumps({"version": version}))
        (cleanup.checkpoints_root(s) / run / "epoch-001").mkdir(parents=True)
        (s.models_dir / version).mkdir(parents=True)
        (s.models_dir / version / META_FILE).write_text(json.dumps({"config": {"run_id": run}}))
        (s.reports / version).mkdir(parents=True)
    for foreign in (cleanup.runs_root(s) / "notes", s.reports / "latest", s.reports / "persistence"):
        foreign.mkdir(parents=True)
    if current is not None:
        (s.models_dir / CURRENT_FILE).write_text(VERSIONS[current] + "\n")
    for v in VERSIONS[:4]:  # the registry's own prune (keep_versions=4, CURRENT stays) has run
        if current is None or v != VERSIONS[current]:
            for f in (s.models_dir / v).iterdir():
                f.unlink()
            (s.models_dir / v).rmdir()
    return s


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_keeps_the_last_k_the_active_run_and_everything_of_current(tmp_path: Path) -> None:
    s = home_with_runs(tmp_path, current=1)
    active = cleanup.runs_root(s) / RUNS[3]
    pruned = cleanup.prune(s, active=[active])
    assert names(cleanup.runs_root(s)) == sorted([RUNS[1], RUNS[3], *RUNS[-3:], "notes"])
    assert names(cleanup.checkpoints_root(s)) == sorted([RUNS[1], *RUNS[-3:]])  # CURRENT's by its config.run_id
    assert names(s.reports) == sorted([VERSIONS[1], *VERSIONS[4:], "latest", "persistence"])
    assert len(pruned.runs) == 3 and len(pruned.checkpoints) == 4 and len(pruned.reports) == 3
    assert cleanup.prune(s, active=[active]).runs == []  # nothing more to do


def test_without_a_current_model_only_the_last_k_stay(tmp_path: Path) -> None:
    s = home_with_runs(tmp_path, current=None)
    cleanup.prune(s, keep=1)
    assert names(cleanup.runs_root(s)) == [RUNS[-1], "notes"]
    assert names(cleanup.checkpoints_root(s)) == [RUNS[-1]]
    cleanup.prune(TrainingSettings(home=tmp_path / "empty"))  # nothing there yet: nothing to do, no error


def test_a_failed_run_cleans_up_too_and_keeps_its_own_directory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    s = home_with_runs(tmp_path, current=1)
    monkeypatch.setattr(cli, "train_command", lambda *_: [sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(MinutecastError, match="exit 3"):
        cli.run_once(s)
    left = names(cleanup.runs_root(s))
    assert len(left) == 3 + 1 + 1 and RUNS[1] in left  # the last K (this run among them), CURRENT's, "notes"
    assert max(n for n in left if n != "notes") > RUNS[-1]  # this run's directory stays


def test_the_settings_bound_what_is_kept() -> None:
    with pytest.raises(ValueError, match="keep_runs"):
        TrainingSettings(keep_runs=0)
    assert TrainingSettings.model_fields["keep_runs"].default == 5
    assert TrainingSettings.model_fields["keep_versions"].default == 10
