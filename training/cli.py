"""``minutecast train``: snapshot the bar topic, train (Horovod when --np > 1), evaluate, gate, promote.

    minutecast train                                  # once: Kafka history -> model -> report -> gate
    minutecast train --np 2 --preset default --epochs 5
    minutecast train --every 1h                       # periodic retrain, as a service (compose)
    minutecast train --bars ../shared/data/bars-1m    # from recorded files instead of Kafka

Each run records the end offsets of the bar topic first (``<home>/runs/<id>/offsets.json``) and every
rank reads up to exactly those, so a run's data is fixed while producers keep writing. Training runs in
a child process (``python -m training.train``, or ``horovodrun -np N -H localhost:N ...``) so a long-lived
``--every`` service returns all memory to the system between runs. After every run, failed ones too, runs
beyond the last ``keep_runs`` are removed (:mod:`training.cleanup`).

Every option is a field of ``TrainingSettings`` (``MINUTECAST_EPOCHS``, ``MINUTECAST_NP``, ...; a flag given
overrides its variable, ``--epochs 0`` included): built once here and handed to the child as flags (with the
environment), so every rank resolves the same configuration (:mod:`training.config`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from minutecast.entry import ERROR_FILE_ENV
from minutecast.errors import ConfigError, MinutecastError
from minutecast.kafka import end_offsets, wait_for_kafka
from minutecast.metrics import serve
from minutecast.registry import Registry
from minutecast.settings import TrainingSettings
from minutecast.topics import Topics
from training import cleanup, config

log = logging.getLogger("minutecast.train")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``1d`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--every {text!r}: expected a duration like 90s, 30m, 1h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """A flag per training option (TrainingSettings; a flag given overrides its MINUTECAST_* variable)."""
    config.add_flags(p, config.CLI_FIELDS + config.RUN_FIELDS)


def train_command(settings: TrainingSettings, run_dir: Path, offsets: Path | None) -> list[str]:
    """The child command line: python -m training.train ... (under horovodrun when np > 1). It carries every
    resolved run option as a flag (and inherits the environment), so each rank resolves the same config."""
    if settings.first_preset and not Registry(settings.models_dir).current_fits_this_code():
        settings = settings.model_copy(update={"preset": settings.first_preset})
    cmd = [sys.executable, "-m", "training.train", *config.as_flags(settings), "--out", str(run_dir)]
    if offsets is not None:
        cmd += ["--offsets", str(offsets)]
    if settings.np > 1:
        hvdrun = shutil.which("horovodrun") or str(Path(sys.executable).parent / "horovodrun")
        cmd = [hvdrun, "-np", str(settings.np), "-H", f"localhost:{settings.np}", *cmd]
    return cmd


def run_once(settings: TrainingSettings) -> dict[str, Any]:
    """One training run; returns train.py's result.json. Raises MinutecastError on failure."""
    run_dir = cleanup.runs_root(settings) / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run_in(settings, run_dir)
    finally:  # a failed run too: a retrying service (--every) must not fill the disk with run directories
        cleanup.prune(settings, active=(run_dir,))


def _run_in(settings: TrainingSettings, run_dir: Path) -> dict[str, Any]:
    offsets_file = None
    if settings.bars is None:
        wait_for_kafka(settings.kafka)
        topic = Topics(settings.namespace).bars
        snapshot = end_offsets(settings.kafka, topic)
        if sum(snapshot.values()) == 0:
            raise MinutecastError(f"bar topic {topic} is empty: nothing to train on yet")
        offsets_file = run_dir / "offsets.json"
        offsets_file.write_text(json.dumps({"topic": topic, "end_offsets": snapshot}) + "\n")
        log.info("training on %s up to offsets %s", topic, snapshot)
    cmd = train_command(settings, run_dir, offsets_file)
    log.info("running %s", " ".join(cmd))
    error_file = run_dir / "error.txt"  # the child's one-line MinutecastError (minutecast.entry.run_main)
    rc = subprocess.run(cmd, env=os.environ | {ERROR_FILE_ENV: str(error_file)}, check=False).returncode
    result_file = run_dir / "result.json"
    if rc != 0 and error_file.exists():
        raise MinutecastError(error_file.read_text().strip())
    if rc != 0 or not result_file.exists():
        raise MinutecastError(f"training failed (exit {rc}); see the output above and {run_dir}")
    result: dict[str, Any] = json.loads(result_file.read_text())
    return result


def run(args: argparse.Namespace) -> int:
    settings = config.from_args(args)  # built once: the environment, the flags given over it
    # Compose stops a service with SIGTERM: leave like Ctrl-C (subprocess.run then kills the child run).
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if not settings.every:
        result = run_once(settings)
        print(json.dumps(result))
        return 0
    period = parse_every(settings.every)
    metrics = _service_metrics(settings)
    while True:
        started = time.monotonic()
        try:
            result = run_once(settings)
            log.info("run done: %s promoted=%s model RMSE %s persistence %s", result["version"],
                     result["promoted"], result["model_rmse"], result["persistence_rmse"])
            print(json.dumps(result), flush=True)
            metrics.observe(result, time.monotonic() - started)
        except MinutecastError as exc:
            metrics.failures.inc()
            log.error("training run failed: %s (next try in %.0f s)", exc, period)
        time.sleep(max(1.0, period - (time.monotonic() - started)))


class _TrainerMetrics:
    """Prometheus metrics of the periodic trainer (served on TrainingSettings.metrics_port)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.runs = Counter("minutecast_train_runs", "finished training runs by outcome", ["outcome"], registry=r)
        self.failures = Counter("minutecast_train_failures", "training runs that failed", registry=r)
        self.duration = Gauge("minutecast_train_last_duration_seconds", "wall time of the last run", registry=r)
        self.rmse = Gauge("minutecast_train_last_test_rmse", "test RMSE ($) of the last run", ["forecaster"],
                          registry=r)
        self.finished = Gauge("minutecast_train_last_finished_timestamp", "epoch s of the last run", registry=r)
        self.current = Gauge("minutecast_model_info", "1 for the promoted model version", ["version"], registry=r)

    def observe(self, result: dict[str, Any], seconds: float) -> None:
        self.runs.labels("promoted" if result.get("promoted") else "refused").inc()
        self.duration.set(seconds)
        self.finished.set(time.time())
        self.rmse.labels("model").set(float(result["model_rmse"]))
        self.rmse.labels("persistence").set(float(result["persistence_rmse"]))
        if result.get("promoted"):
            self.current.clear()
            self.current.labels(str(result["version"])).set(1)


def _service_metrics(settings: TrainingSettings) -> _TrainerMetrics:
    m = _TrainerMetrics()
    serve(settings.metrics_host, settings.metrics_port, m.registry)
    return m
