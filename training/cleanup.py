"""Old training runs, their checkpoints and the reports of removed versions go; the last K stay.

Under ``MINUTECAST_HOME`` every training run leaves

* ``runs/<run id>/``: ``offsets.json`` (the snapshot it read up to) and ``result.json``;
* ``checkpoints/train/<run id>/epoch-NNN/``: its newest ``keep_checkpoints`` epochs (a few MB each);
* ``reports/<version>/``: the report of the version it saved (``reports/latest`` is a copy of the newest).

:func:`prune` keeps the newest ``keep_runs`` run directories and the newest ``keep_runs`` checkpoint
directories (run ids are UTC timestamps, so names sort by start time), and removes the report of a version
the registry no longer holds (:meth:`minutecast.registry.Registry.prune` keeps its newest
``keep_versions`` and always ``CURRENT``). Never removed: the directories of the run in progress
(``active``), everything of the run that produced the ``CURRENT`` model (its ``config.run_id`` and the run
directory whose ``result.json`` names it), ``reports/latest``, and any name that is not a run id or a
version (nothing of anyone else's). Cleaning never fails a run: a directory that cannot be removed is
logged and left.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from minutecast.registry import META_FILE, Registry
from minutecast.settings import TrainingSettings

log = logging.getLogger(__name__)
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z$")  # time.strftime("%Y%m%dT%H%M%SZ"): training/cli.py, training/train.py
VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")  # registry versions: <UTC time>-<sha256 prefix>


def runs_root(settings: TrainingSettings) -> Path:
    return settings.home / "runs"


def checkpoints_root(settings: TrainingSettings) -> Path:
    return settings.home / "checkpoints" / "train"


@dataclass
class Pruned:
    """What :func:`prune` removed (paths)."""

    runs: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.runs) + len(self.checkpoints) + len(self.reports)


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def current_run(registry: Registry) -> tuple[str | None, str | None]:
    """(CURRENT's version, the run id that trained it), each None when unknown."""
    version = registry.current_version()
    if version is None or not VERSION_RE.match(version):
        return version, None
    config = _read_json(registry.root / version / META_FILE).get("config")
    run_id = config.get("run_id") if isinstance(config, dict) else None
    return version, run_id if isinstance(run_id, str) else None


def _old(root: Path, keep: int, protected: set[Path]) -> list[Path]:
    """Run-id directories under ``root`` beyond the newest ``keep``, minus ``protected``."""
    if not root.is_dir():
        return []
    runs = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and RUN_ID_RE.match(p.name))
    return [p for p in runs[:-keep or None] if p.resolve() not in protected] if keep > 0 else []


def _remove(paths: list[Path]) -> list[Path]:
    done = []
    for p in paths:
        try:
            shutil.rmtree(p)
            done.append(p)
        except OSError as exc:  # a permission or a vanished file: leave it, the next run tries again
            log.warning("could not remove %s: %s", p, exc)
    return done


def prune(settings: TrainingSettings, active: Iterable[Path] = (), *, keep: int | None = None) -> Pruned:
    """Remove old runs, checkpoints and reports as the module docstring says; ``keep``: runs kept
    (default ``settings.keep_runs``); ``active``: directories of the run in progress."""
    keep = settings.keep_runs if keep is None else keep
    try:
        out = _prune(settings, active, keep)
    except OSError as exc:  # an unreadable directory: cleaning never fails a run
        log.warning("cleanup of old runs under %s skipped: %s", settings.home, exc)
        return Pruned()
    if len(out):
        log.info("cleaned up %d old run(s), %d checkpoint dir(s), %d report(s) of removed versions (keeping the "
                 "last %d runs and %d versions)", len(out.runs), len(out.checkpoints), len(out.reports), keep,
                 settings.keep_versions)
    return out


def _prune(settings: TrainingSettings, active: Iterable[Path], keep: int) -> Pruned:
    registry = Registry(settings.models_dir, keep=settings.keep_versions)
    version, run_id = current_run(registry)
    protected = {Path(p).resolve() for p in active}
    if run_id is not None:
        protected |= {(runs_root(settings) / run_id).resolve(), (checkpoints_root(settings) / run_id).resolve()}
    old_runs = [p for p in _old(runs_root(settings), keep, protected)
                if version is None or _read_json(p / "result.json").get("version") != version]
    old_ckpts = _old(checkpoints_root(settings), keep, protected)
    held = set(registry.versions()) | ({version} if version else set())
    reports = settings.reports
    old_reports = sorted(p for p in reports.iterdir() if p.is_dir() and not p.is_symlink()
                         and VERSION_RE.match(p.name) and p.name not in held) if reports.is_dir() else []
    return Pruned(_remove(old_runs), _remove(old_ckpts), _remove(old_reports))
