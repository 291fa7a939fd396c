"""`minutecast train` command-line pieces: the --every period and the child command (horovodrun for np > 1)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from minutecast.errors import ConfigError
from minutecast.settings import TrainingSettings
from training.cli import add_arguments, parse_every, train_command


def test_every_parses_durations() -> None:
    assert parse_every("1h") == 3600 and parse_every("30m") == 1800 and parse_every("90s") == 90
    for bad in ("", "1x", "-1h", "0m", "h"):
        with pytest.raises(ConfigError):
            parse_every(bad)


def test_child_command_uses_horovodrun_only_for_several_ranks(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    settings = TrainingSettings()
    one = train_command(p.parse_args(["--preset", "tiny"]), settings, tmp_path, tmp_path / "offsets.json")
    assert one[1:3] == ["-m", "training.train"] and "--promote" in one
    assert one[one.index("--offsets") + 1] == str(tmp_path / "offsets.json")
    two = train_command(p.parse_args(["--np", "2", "--no-promote", "--epochs", "3"]), settings, tmp_path, None)
    assert Path(two[0]).name == "horovodrun" and two[1:5] == ["-np", "2", "-H", "localhost:2"]
    assert "--promote" not in two and two[two.index("--epochs") + 1] == "3" and "--offsets" not in two


def test_first_preset_applies_only_while_no_model_is_promoted(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINUTECAST_HOME", str(tmp_path))
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--first-preset", "tiny", "--preset", "default"])
    settings = TrainingSettings()
    cmd = train_command(args, settings, tmp_path, None)
    assert cmd[cmd.index("--preset") + 1] == "tiny"
    settings.models_dir.mkdir(parents=True)
    (settings.models_dir / "CURRENT").write_text("20261122T000000Z-abc\n")
    cmd = train_command(args, settings, tmp_path, None)
    assert cmd[cmd.index("--preset") + 1] == "default"
