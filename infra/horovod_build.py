"""Where the horovod build stands: only the trainer needs horovod, so `make run` builds it in the background.

    bash infra/bootstrap.sh --defer-horovod     # what `make run` runs: forecasts first, the build after
    python -m infra.horovod_build               # prints the state: ready, building, failed or missing

infra/bootstrap.sh writes ``<venv>/.minutecast-horovod-build`` (``building <pid>``, ``ok`` or ``failed <rc>``)
and logs the build to ``<venv>/horovod-build.log``. The supervisor (``minutecast run``) starts the trainer once
:func:`state` is ``ready`` and says what it waits for until then.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from infra.procs import alive

STATUS_FILE = ".minutecast-horovod-build"
LOG_FILE = "horovod-build.log"


def venv_dir() -> Path:
    """The virtualenv this interpreter runs in (the one bootstrap.sh built horovod into)."""
    return Path(sys.prefix)


def state(venv: Path | None = None) -> str:
    """``ready`` (importable), ``building`` (the background build runs), ``failed`` or ``missing``."""
    venv = venv or venv_dir()
    text = (venv / STATUS_FILE).read_text().split() if (venv / STATUS_FILE).is_file() else []
    if text[:1] == ["building"] and len(text) > 1 and text[1].isdigit() and alive(int(text[1])):
        return "building"  # (pip may be copying files: importable is not yet ready)
    if text[:1] == ["ok"] or (venv == venv_dir() and importlib.util.find_spec("horovod") is not None):
        return "ready"
    if text[:1] in (["failed"], ["building"]):  # a build that died without writing its result failed too
        return "failed"
    return "missing"


def waiting_text(venv: Path | None = None) -> str:
    """What the trainer waits for, for the supervisor's lines and ``status`` ("" when horovod is ready)."""
    venv = venv or venv_dir()
    st = state(venv)
    log = venv / LOG_FILE
    return {"ready": "",
            "building": f"trainer waits for the background install (TensorFlow on a fresh virtualenv, then the horovod "
                        f"build; log {log})",
            "failed": f"trainer waits: the horovod build failed (see {log}; `make setup` retries it)",
            "missing": "trainer waits: horovod is not installed (`make setup` builds it)"}[st]


if __name__ == "__main__":
    print(state())
