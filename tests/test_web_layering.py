"""The web server's layering (docs/architecture.md, "Code layout"): ``web`` imports ``minutecast`` and, for the
local-process probe of ``/api/status``, ``infra.runstate``; never ``ops`` (the CLI's rendering, rich, the
supervisor). Pure: no services.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_architecture import REPO, importlinter_config


def test_no_web_module_imports_ops_even_inside_a_function() -> None:
    """import-linter's graph holds the imports inside functions too; test_architecture runs it (lint-imports):
    here, that a contract forbids web -> ops (and benchmarks, training) outright, no module excepted."""
    contracts = [c for c in importlinter_config()["contracts"]
                 if c["type"] == "forbidden" and c["source_modules"] == ["web"] and not c.get("ignore_imports")]
    forbidden = set().union(*(set(c["forbidden_modules"]) for c in contracts))
    assert {"ops", "benchmarks", "training"} <= forbidden, contracts


def test_the_web_app_loads_neither_ops_nor_rich() -> None:
    code = ("import sys, json\nimport web.app, web.cli\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('ops', 'rich'))))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
