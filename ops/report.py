"""Print (or open) the latest evaluation report: the served intervals beside the window-vol baselines, the
median beside persistence (coverage, interval scores, Diebold-Mariano, reliability diagram, fan charts).

    minutecast report                 # the Markdown report of the latest training run
    minutecast report --json          # its report.json
    minutecast report --open          # open report.md with the desktop's viewer (xdg-open)
    minutecast report --version 20261122T023217Z-0a7bb46a
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from minutecast.settings import TrainingSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", help="a model version (default: the latest report)")
    p.add_argument("--json", action="store_true", help="print report.json instead of the Markdown")
    p.add_argument("--open", action="store_true", help="open the report with xdg-open")


def run(args: argparse.Namespace) -> int:
    s = TrainingSettings()
    folder = s.reports / (args.version or "latest")
    path = folder / ("report.json" if args.json else "report.md")
    if not path.exists():
        print(f"no report at {path}: run `minutecast train` (or `minutecast evaluate --bars DIR`) first",
              file=sys.stderr)
        return 1
    opener = shutil.which("xdg-open")
    if args.open and opener:
        subprocess.run([opener, str(path)], check=False)
        return 0
    print(path.read_text(), end="")
    print(f"\n(report folder: {folder}; plots: {', '.join(p.name for p in sorted(folder.glob('*.png')))})")
    return 0
