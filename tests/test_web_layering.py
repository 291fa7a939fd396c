"""The web server's layering (docs/architecture.md, "Code layout"): ``web`` imports ``minutecast`` and, for the
local-process probe of ``/api/status``, ``infra.runstate``; never ``ops`` (the CLI's rendering, rich, the
supervisor). Pure: no services.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_architecture import REPO, _top, all_modules, imports, module_files


def test_no_web_module_imports_ops_even_inside_a_function() -> None:
    known = set(all_modules())
    bad = [f"{i.module}:{i.line} imports {i.target}" for name, path in module_files("web").items()
           for i in imports(name, path, known) if _top(i.target) in ("ops", "benchmarks", "training")]
    assert not bad, "web must not depend on ops:\n" + "\n".join(bad)


def test_the_web_app_loads_neither_ops_nor_rich() -> None:
    code = ("import sys, json\nimport web.app, web.cli\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('ops', 'rich'))))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
