"""`minutecast train` command-line pieces: the --every period, the child command (horovodrun for np > 1) and
the one configuration (TrainingSettings: MINUTECAST_* env, flags over it) that the CLI and its child resolve."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from minutecast.errors import ConfigError
from minutecast.features import FEATURE_SPEC, Scaler
from minutecast.settings import CommonSettings, TrainingSettings
from training import config
from training.cli import add_arguments, parse_every, train_command
from training.train import parse_config

REPO = Path(__file__).resolve().parents[1]


def cli_settings(*argv: str) -> TrainingSettings:
    """What `minutecast train ARGV` resolves (the environment, the flags given over it)."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    return config.from_args(p.parse_args(list(argv)))


def child_argv(cmd: list[str]) -> list[str]:
    """The arguments of python -m training.train in a child command (horovodrun's own taken off)."""
    return cmd[cmd.index("training.train") + 1:]


@pytest.fixture(autouse=True)
def _no_training_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests set the MINUTECAST_* training variables they need and no others."""
    for name in set(TrainingSettings.model_fields) - set(CommonSettings.model_fields):
        monkeypatch.delenv(f"MINUTECAST_{name.upper()}", raising=False)


def test_every_parses_durations() -> None:
    assert parse_every("1h") == 3600 and parse_every("30m") == 1800 and parse_every("90s") == 90
    for bad in ("", "1x", "-1h", "0m", "h"):
        with pytest.raises(ConfigError):
            parse_every(bad)


def test_child_command_uses_horovodrun_only_for_several_ranks(tmp_path: Path) -> None:
    one = train_command(cli_settings("--preset", "tiny"), tmp_path, tmp_path / "offsets.json")
    assert one[1:3] == ["-m", "training.train"] and "--promote" in one
    assert one[one.index("--offsets") + 1] == str(tmp_path / "offsets.json")
    two = train_command(cli_settings("--np", "2", "--no-promote", "--epochs", "3"), tmp_path, None)
    assert Path(two[0]).name == "horovodrun" and two[1:5] == ["-np", "2", "-H", "localhost:2"]
    assert "--promote" not in two and two[two.index("--epochs") + 1] == "3" and "--offsets" not in two


def test_first_preset_applies_while_no_model_this_code_serves_is_promoted(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINUTECAST_HOME", str(tmp_path))
    settings = cli_settings("--first-preset", "tiny", "--preset", "default")
    cmd = train_command(settings, tmp_path, None)
    assert cmd[cmd.index("--preset") + 1] == "tiny"
    version = "20261122T000000Z-0123abcd"
    (settings.models_dir / version).mkdir(parents=True)
    (settings.models_dir / "CURRENT").write_text(f"{version}\n")
    scaler = {f.name: 1.0 for f in fields(Scaler)}
    for spec, preset in (("v2:an-older-feature-set", "tiny"), (FEATURE_SPEC, "default")):
        # a model trained for other features (yesterday's, after an upgrade) is refused when loaded: as none
        (settings.models_dir / version / "meta.json").write_text(json.dumps(
            {"feature_spec": spec, "scaler": scaler, "model_sha256": "0" * 64}))
        cmd = train_command(settings, tmp_path, None)
        assert cmd[cmd.index("--preset") + 1] == preset, spec


def test_zero_values_are_honoured_by_the_cli_and_its_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINUTECAST_EPOCHS", "5")  # a flag given beats the environment, also when it is 0
    monkeypatch.setenv("MINUTECAST_THREADS_PER_RANK", "3")
    settings = cli_settings("--epochs", "0", "--threads", "0", "--np", "2", "--seed", "0")
    assert (settings.epochs, settings.threads_per_rank, settings.seed, settings.np) == (0, 0, 0, 2)
    cmd = train_command(settings, tmp_path, None)
    assert cmd[cmd.index("--epochs") + 1] == "0" and cmd[cmd.index("--threads") + 1] == "0"
    child, preset, _ = parse_config(child_argv(cmd))  # what every rank resolves, in the same environment
    assert (child.epochs, child.threads_per_rank, preset.epochs) == (0, 0, 0)
    assert config.options(child) == config.options(settings)


def test_the_child_resolves_what_the_cli_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINUTECAST_PRESET", "tiny")
    monkeypatch.setenv("MINUTECAST_VAL_FRAC", "0.2")
    monkeypatch.setenv("MINUTECAST_FP16_ALLREDUCE", "true")
    monkeypatch.setenv("MINUTECAST_PROMOTE", "false")
    settings = cli_settings("--learning-rate", "0.01", "--bars", str(tmp_path))
    assert (settings.preset, settings.val_frac, settings.fp16_allreduce, settings.promote) == ("tiny", 0.2, True, False)
    child, preset, args = parse_config(child_argv(train_command(settings, tmp_path, None)))
    assert config.options(child) == config.options(settings) and args.out == tmp_path
    assert preset.name == "tiny" and preset.learning_rate == 0.01 and child.bars == tmp_path
    # ... and with the flags alone, under a clean environment (another host of a horovodrun -H h1,h2 run):
    for name in ("PRESET", "VAL_FRAC", "FP16_ALLREDUCE", "PROMOTE"):
        monkeypatch.delenv(f"MINUTECAST_{name}")
    child, _, _ = parse_config(child_argv(train_command(settings, tmp_path, None)))
    assert config.options(child) == config.options(settings)


def test_bad_values_name_the_flag_or_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINUTECAST_TEST_FRAC", "1.5")
    with pytest.raises(ConfigError, match=r"--epochs -1: .*MINUTECAST_TEST_FRAC: "):
        cli_settings("--epochs", "-1")


def test_training_env_reaches_python_m_training_train(tmp_path: Path) -> None:
    """`python -m training.train` (what horovodrun starts on every host) reads MINUTECAST_*; no TensorFlow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINUTECAST_")} | {
        "MINUTECAST_HOME": str(tmp_path), "MINUTECAST_NAMESPACE": "cfgtest", "MINUTECAST_EPOCHS": "0",
        "MINUTECAST_MAX_SAMPLES": "1000", "MINUTECAST_TEST_FRAC": "0.25", "MINUTECAST_THREADS_PER_RANK": "0",
        "MINUTECAST_KEEP_CHECKPOINTS": "4", "MINUTECAST_PRESET": "first"}
    proc = subprocess.run([sys.executable, "-m", "training.train", "--print-config", "--seed", "7"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = json.loads(proc.stdout.strip().splitlines()[-1])
    assert resolved["namespace"] == "cfgtest" and resolved["home"] == str(tmp_path)
    assert (resolved["epochs"], resolved["max_samples"], resolved["test_frac"], resolved["threads_per_rank"],
            resolved["keep_checkpoints"], resolved["preset"], resolved["seed"]) == (0, 1000, 0.25, 0, 4, "first", 7)
    assert resolved["resolved_preset"]["epochs"] == 0 and resolved["resolved_preset"]["max_samples"] == 1000
    assert resolved["val_frac"] == TrainingSettings.model_fields["val_frac"].default and resolved["promote"] is True
