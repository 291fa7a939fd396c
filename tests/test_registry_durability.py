"""Registry durability and bounds (#18): versions fsynced before they appear and before CURRENT switches,
a failed write (full disk) is a clear ModelError that leaves the serving model alone, and old versions are
pruned to the newest ``keep`` without ever removing CURRENT."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from minutecast import registry as R
from minutecast.errors import ModelError
from minutecast.features import FEATURE_SPEC, Scaler
from minutecast.model import build_model, get_preset
from minutecast.registry import Registry

pytestmark = pytest.mark.tensorflow  # builds and saves Keras models


@pytest.fixture(scope="module")
def model() -> Any:
    return build_model(get_preset("tiny"))


@pytest.fixture(scope="module")
def scaler() -> Scaler:
    return Scaler.from_stats(np.ones(len(Scaler.stats(np.ones((2, 60, 12)), np.ones(2)))))


def save(reg: Registry, model: Any, scaler: Scaler) -> str:
    return reg.save(model, scaler, {"feature_spec": FEATURE_SPEC, "code_version": "test"})


def test_save_and_promote_fsync_files_then_directories(tmp_path: Path, model: Any, scaler: Scaler,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(R.os, "fsync", spy)
    reg = Registry(tmp_path)
    version = save(reg, model, scaler)
    names = [Path(p).name for p in synced]
    # meta and model inside the temporary directory, the directory, then the registry root after the rename.
    assert names.index(R.MODEL_FILE) < names.index(Path(synced[-2]).name) and Path(synced[-1]) == tmp_path
    assert names.count(R.META_FILE) == 1 and Path(synced[-2]).name.startswith(".tmp-")
    synced.clear()
    reg.promote(version)
    assert Path(synced[-1]) == tmp_path and reg.current_version() == version  # the CURRENT rename is durable


def test_full_disk_is_a_clear_error_and_the_serving_model_stays(tmp_path: Path, model: Any, scaler: Scaler,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path)
    serving = save(reg, model, scaler)
    reg.promote(serving)

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(R.json, "dump", full)
    with pytest.raises(ModelError, match=rf"No space left on device.*serving model \({serving}\) stays"):
        save(reg, model, scaler)
    assert reg.current_version() == serving and reg.versions() == [serving]
    assert not list(tmp_path.glob(".tmp-*"))  # the half-written version is gone
    monkeypatch.undo()
    monkeypatch.setattr(R.os, "replace", full)
    other = save(reg, model, scaler)
    with pytest.raises(ModelError, match="could not switch CURRENT"):
        reg.promote(other)
    assert reg.current_version() == serving and reg.load(serving).version == serving


def test_save_keeps_the_newest_versions_and_always_current(tmp_path: Path, model: Any, scaler: Scaler,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path, keep=2)
    clock = itertools.count(1_800_000_000, 60)  # one minute per call: every version gets its own name
    monkeypatch.setattr(R.time, "time", lambda: float(next(clock)))
    first = save(reg, model, scaler)
    reg.promote(first)
    made = [first] + [save(reg, model, scaler) for _ in range(4)]
    assert len(set(made)) == 5
    # The newest two plus CURRENT (the oldest): the other two are gone.
    assert reg.versions() == [first, *made[-2:]]
    assert reg.current_version() == first and reg.load(first).version == first
    stale = tmp_path / ".tmp-crashed-writer"
    stale.mkdir()
    os.utime(stale, (1, 1))
    assert reg.prune() == [] and not stale.exists()
