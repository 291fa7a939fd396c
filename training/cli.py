"""``minutecast train``: snapshot the bar topic, train (Horovod when --np > 1), evaluate, gate, promote.

    minutecast train                                  # once: Kafka history -> model -> report -> gate
    minutecast train --np 2 --preset default --epochs 5
    minutecast train --every 1h                       # periodic retrain, as a service (compose)
    minutecast train --bars ../shared/data/bars-1m    # from recorded files instead of Kafka

Each run records the end offsets of the bar topic first (``<home>/runs/<id>/offsets.json``) and every
rank reads up to exactly those, so a run's data is fixed while producers keep writing. Training runs in
a child process (``python -m training.train``, or ``horovodrun -np N -H localhost:N ...``) so a long-lived
``--every`` service returns all memory to the system between runs.
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

log = logging.getLogger("minutecast.train")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``1d`` -> seconds."""
    from minutecast.errors import ConfigError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--every {text!r}: expected a duration like 90s, 30m, 1h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="model preset: default, gaussian, first, tiny (MINUTECAST_PRESET)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    p.add_argument("--np", type=int, default=None, help="Horovod ranks on this host (default 1: no horovodrun)")
    p.add_argument("--max-samples", type=int, default=None, help="cap on training samples (all ranks)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step per rank")
    p.add_argument("--threads", type=int, default=None, help="TensorFlow threads per rank")
    p.add_argument("--fp16-allreduce", action="store_true", help="compress gradients to fp16 for the allreduce")
    p.add_argument("--every", default=None, help="retrain periodically, e.g. 1h (MINUTECAST_EVERY)")
    p.add_argument("--bars", type=Path, default=None, help="train from recorded bar files instead of Kafka")
    p.add_argument("--no-promote", action="store_true", help="evaluate and save, but never promote")
    p.add_argument("--first-preset", default=None,
                   help="preset to use while no model is promoted yet (a short one gives a first model fast)")


def _given(*values: Any) -> Any:
    """The first value that was set (None = not set; 0 is a value: ``--epochs 0`` is not dropped)."""
    return next((v for v in values if v is not None), None)


def train_command(args: argparse.Namespace, settings: Any, run_dir: Path, offsets: Path | None) -> list[str]:
    """The child command line: python -m training.train ... (under horovodrun when np > 1)."""
    n = _given(args.np, settings.np)
    preset = _given(args.preset, settings.preset)
    if getattr(args, "first_preset", None):
        from minutecast.registry import Registry

        if Registry(settings.models_dir).current_version() is None:
            preset = args.first_preset
    cmd = [sys.executable, "-m", "training.train", "--preset", preset,
           "--val-frac", str(settings.val_frac), "--test-frac", str(settings.test_frac),
           "--keep-checkpoints", str(settings.keep_checkpoints), "--out", str(run_dir)]
    for flag, value in (("--epochs", _given(args.epochs, settings.epochs)), ("--batch-size", args.batch_size),
                        ("--max-samples", _given(args.max_samples, settings.max_samples)),
                        ("--threads", _given(args.threads, settings.threads_per_rank)),
                        ("--bars", args.bars), ("--offsets", offsets)):
        if value is not None:
            cmd += [flag, str(value)]
    if args.fp16_allreduce:
        cmd.append("--fp16-allreduce")
    if not args.no_promote:
        cmd.append("--promote")
    if n > 1:
        hvdrun = shutil.which("horovodrun") or str(Path(sys.executable).parent / "horovodrun")
        cmd = [hvdrun, "-np", str(n), "-H", f"localhost:{n}", *cmd]
    return cmd


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One training run; returns train.py's result.json. Raises MinutecastError on failure."""
    from minutecast.errors import MinutecastError
    from minutecast.settings import TrainingSettings

    settings = TrainingSettings()
    run_dir = settings.home / "runs" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir.mkdir(parents=True, exist_ok=True)
    offsets_file = None
    if args.bars is None:
        from minutecast.kafka import end_offsets, wait_for_kafka
        from minutecast.topics import Topics

        wait_for_kafka(settings.kafka)
        topic = Topics(settings.namespace).bars
        snapshot = end_offsets(settings.kafka, topic)
        if sum(snapshot.values()) == 0:
            raise MinutecastError(f"bar topic {topic} is empty: nothing to train on yet")
        offsets_file = run_dir / "offsets.json"
        offsets_file.write_text(json.dumps({"topic": topic, "end_offsets": snapshot}) + "\n")
        log.info("training on %s up to offsets %s", topic, snapshot)
    cmd = train_command(args, settings, run_dir, offsets_file)
    log.info("running %s", " ".join(cmd))
    rc = subprocess.run(cmd, env=os.environ.copy(), check=False).returncode
    result_file = run_dir / "result.json"
    if rc != 0 or not result_file.exists():
        raise MinutecastError(f"training failed (exit {rc}); see the output above and {run_dir}")
    result: dict[str, Any] = json.loads(result_file.read_text())
    return result


def run(args: argparse.Namespace) -> int:
    from minutecast.errors import MinutecastError
    from minutecast.settings import TrainingSettings

    every_text = args.every or TrainingSettings().every
    # Compose stops a service with SIGTERM: leave like Ctrl-C (subprocess.run then kills the child run).
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if not every_text:
        result = run_once(args)
        print(json.dumps(result))
        return 0
    period = parse_every(every_text)
    metrics = _service_metrics()
    while True:
        started = time.monotonic()
        try:
            result = run_once(args)
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
        from prometheus_client import CollectorRegistry, Counter, Gauge

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


def _service_metrics() -> _TrainerMetrics:
    from minutecast.metrics import serve
    from minutecast.settings import TrainingSettings

    s = TrainingSettings()
    m = _TrainerMetrics()
    serve(s.metrics_host, s.metrics_port, m.registry)
    return m
