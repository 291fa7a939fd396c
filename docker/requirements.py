"""Print pyproject.toml's pinned dependencies, one a line, for ``pip install -r`` in the Docker build.

    python docker/requirements.py pyproject.toml > requirements.txt
    python docker/requirements.py pyproject.toml --tensorflow "tensorflow[and-cuda]==2.15.1"   # GPU image

Installing them before the source is copied keeps the slow layer (TensorFlow, pyspark) cached across
code changes. ``--tensorflow`` swaps the ``tensorflow-cpu`` requirement for another build of TensorFlow
(the two cannot be installed side by side: both provide the ``tensorflow`` module).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

CPU_TF = "tensorflow-cpu"


def requirement_name(req: str) -> str:
    """``tensorflow[and-cuda]==2.15.1`` -> ``tensorflow`` (normalised as pip does)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not m:
        raise ValueError(f"not a requirement: {req!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def requirements(pyproject: Path, tensorflow: str | None = None) -> list[str]:
    deps = list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    if tensorflow:
        if not any(requirement_name(d) == CPU_TF for d in deps):
            raise ValueError(f"{pyproject} has no {CPU_TF} requirement to replace")
        deps = [tensorflow if requirement_name(d) == CPU_TF else d for d in deps]
    return deps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pyproject", type=Path)
    p.add_argument("--tensorflow", default="", help=f"requirement replacing {CPU_TF} (empty: keep it)")
    args = p.parse_args(argv)
    print("\n".join(requirements(args.pyproject, args.tensorflow or None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
