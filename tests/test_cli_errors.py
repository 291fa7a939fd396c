"""The minutecast command's error contract: a bad MINUTECAST_* value is one line naming the variable (no
pydantic traceback), `--help` keeps each launch command of a module docstring on its own line."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "minutecast.cli", *args], env=os.environ | (env or {}),
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_bad_setting_is_one_line_naming_the_variable() -> None:
    proc = run_cli("status", env={"MINUTECAST_BAR_PARTITIONS": "abc"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines and all(x.startswith("minutecast status: MINUTECAST_BAR_PARTITIONS:") for x in lines)
    assert "Traceback" not in proc.stderr


def test_help_keeps_the_launch_commands_on_their_own_lines() -> None:
    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    assert "\n    minutecast train --every 1h" in proc.stdout  # raw description: not reflowed into one paragraph
