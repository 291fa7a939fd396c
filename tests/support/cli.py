"""Running the ``minutecast`` command as a user does, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m minutecast.cli ARGS`` from the repository root, output captured as text; ``env`` on top of this
    process's environment; ``check``: a non-zero exit raises."""
    return subprocess.run([sys.executable, "-m", "minutecast.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=check, env={**os.environ, **(env or {})}, cwd=REPO)
