"""Training throughput (1 vs 2 Horovod ranks on CPU, a GPU epoch when present) and the accuracy table.

    python -m benchmarks.training            # full: ~3 minutes on 2 free cores
    python -m benchmarks.training --quick    # fewer steps, no accuracy table
    python -m benchmarks.training --tiny     # smoke run for the tests: 1 and 2 ranks, a few small steps only
    python -m benchmarks.training --rss-only # just the trainer's peak RSS on the full shared data (~2 min)
    python -m benchmarks.training --rss-only --tickers 503 --days 45 --ranks 2   # synthetic bars, 2 ranks

Throughput: the default preset's training step (forward, backward, Horovod allreduce, Adam) on synthetic
input of the real shape (the values do not change the cost), each rank ONE TensorFlow thread
(intra = inter = 1), 2 ranks via ``horovodrun -np 2 -H localhost:2`` (Gloo). Configurations: batch 256 and
1024 per rank, fp16 gradient compression, 4 backward passes per allreduce, and a control: two independent
1-rank processes at once (no Horovod), i.e. what two cores deliver on this machine at this moment.
``scaling`` = 2-rank samples/s / 1-rank samples/s at the same per-rank batch (the best 2-rank configuration).
Accuracy: the current model of ``<home>/models`` (MINUTECAST_HOME; the newest version when none is
promoted) vs persistence on the test dates (last 15%) of the shared data.
Memory: the peak resident set (``ru_maxrss`` of the trainer process, from ``wait4``) of one real training
run, ``python -m training.train --bars <shared data>`` on one rank in a scratch MINUTECAST_HOME (nothing
promoted): the tiny network for 1 epoch, but the default preset's sample cap (``--max-samples``), since
what the trainer holds of the data sets the peak, not the network: streamed (training/stream.py), a group
of tickers' bars and a chunk of windows at a time, the report from sums (training/tally.py), so the peak is
bounded by the group, chunk and sample-cap sizes (and 8 bytes per test sample for the volatility terciles),
not by the windows (~5.8 kB each) nor the scored test samples. ``--tiny`` takes two
tickers and 2,000 samples instead. ``--tickers N --days D``: the same run on synthetic bars of the recorded
data's shape (:mod:`benchmarks.training_bars`), ``--ranks R`` under horovodrun (the peak is per rank).

Last stdout line: one JSON object with samples_per_s_1rank, samples_per_s_2ranks, scaling, gpu_epoch_s, runs,
accuracy, trainer_peak_rss_mb and trainer_rss (the run's command, data, samples, seconds, samples/s, load);
with ``--rss-only``: trainer_peak_rss_mb, samples_per_s, seconds and trainer_rss.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.training_bars import synthetic_bars
from minutecast.errors import InfraError
from minutecast.features import N_FEATURES
from minutecast.model import build_model, get_preset, make_loss
from minutecast.registry import Registry
from minutecast.settings import TrainingSettings
from training import data as D
from training import evaluate as E

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MINUTECAST_SHARED_DATA", REPO.parent / "shared" / "data" / "bars-1m"))


def worker(args: argparse.Namespace) -> None:
    """One rank: time ``steps`` training steps after ``warmup`` steps; rank 0 prints a JSON line."""
    import tensorflow as tf

    if args.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import horovod.tensorflow.keras as hvd

    hvd.init()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.experimental.set_memory_growth(gpus[hvd.local_rank() % len(gpus)], True)
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
    preset = get_preset(args.preset)
    model = build_model(preset)
    opt = hvd.DistributedOptimizer(tf.keras.optimizers.Adam(preset.learning_rate * hvd.size()),
                                   compression=hvd.Compression.fp16 if args.fp16 else hvd.Compression.none,
                                   backward_passes_per_step=args.passes)
    model.compile(optimizer=opt, loss=make_loss(preset))
    rng = tf.random.Generator.from_seed(hvd.rank())
    n_distinct = 8  # a few distinct batches, resident in memory: measures compute + allreduce, not input
    x = rng.normal((n_distinct * args.batch, 60, N_FEATURES))
    y = rng.normal((n_distinct * args.batch,))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch, drop_remainder=True).cache().repeat()
    cb = [hvd.callbacks.BroadcastGlobalVariablesCallback(0)]
    model.fit(ds, epochs=1, steps_per_epoch=args.warmup, verbose=0, callbacks=cb)
    t0 = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=args.steps, verbose=0)
    dt = time.perf_counter() - t0
    if hvd.rank() == 0:
        print("BENCH " + json.dumps({"ranks": hvd.size(), "batch_per_rank": args.batch, "fp16": args.fp16,
                                     "threads": args.threads, "gpu": bool(gpus), "seconds": round(dt, 3),
                                     "samples_per_s": round(args.steps * args.batch * hvd.size() / dt, 1)}),
              flush=True)


def command(ranks: int, batch: int, steps: int, warmup: int, fp16: bool = False, threads: int = 1,
            passes: int = 1, preset: str = "default") -> list[str]:
    """threads: TensorFlow threads per rank (0 = TensorFlow's default, for the GPU run)."""
    cmd = [sys.executable, "-m", "benchmarks.training", "--worker", "--batch", str(batch), "--steps", str(steps),
           "--warmup", str(warmup), "--threads", str(threads), "--preset", preset, "--passes", str(passes)]
    cmd += ["--fp16"] if fp16 else []
    if ranks > 1:
        hvdrun = shutil.which("horovodrun") or str(Path(sys.executable).parent / "horovodrun")
        cmd = [hvdrun, "-np", str(ranks), "-H", f"localhost:{ranks}", *cmd]
    return cmd


ENV = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}


def parse(out: str, what: str) -> dict[str, Any]:
    for line in out.splitlines():
        if "BENCH " in line:
            result: dict[str, Any] = json.loads(line.split("BENCH ", 1)[1])
            print(f"  {what}: {result['samples_per_s']:.0f} samples/s", flush=True)
            return result
    raise InfraError(f"benchmark run failed: {out[-3000:]}")


def launch(ranks: int, batch: int, steps: int, warmup: int, fp16: bool = False, passes: int = 1,
           threads: int = 1) -> dict[str, Any]:
    proc = subprocess.run(command(ranks, batch, steps, warmup, fp16, threads, passes), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=900, check=False)
    what = f"{ranks} rank(s) x {threads or 'all'} thread, batch {batch}/rank{' fp16' if fp16 else ''}" + (
        f" backward_passes {passes}" if passes > 1 else "")
    return parse(proc.stdout + proc.stderr, what)


def control(batch: int, steps: int, warmup: int) -> float:
    """Two INDEPENDENT 1-rank processes at once (no Horovod): what two cores give this machine right now."""
    procs = [subprocess.Popen(command(1, batch, steps, warmup), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    total = sum(parse(o, f"control: independent 1-rank process {i + 1}, batch {batch}")["samples_per_s"]
                for i, o in enumerate(outs))
    print(f"  control: 2 independent processes together: {total:.0f} samples/s", flush=True)
    return total


RSS_TINY_TICKERS = "SPY,AAPL"  # --tiny: the market ticker and one more


def rss_command(bars: Path, out: Path, max_samples: int, tickers: str | None = None, ranks: int = 1) -> list[str]:
    """One training run: the tiny network for 1 epoch on ``bars``, no promotion; ``ranks`` > 1 via horovodrun."""
    cmd = [sys.executable, "-m", "training.train", "--bars", str(bars), "--preset", "tiny", "--epochs", "1",
           "--batch-size", "512", "--max-samples", str(max_samples), "--no-promote", "--out", str(out)]
    cmd += ["--tickers", tickers] if tickers else []
    if ranks > 1:
        hvdrun = shutil.which("horovodrun") or str(Path(sys.executable).parent / "horovodrun")
        cmd = [hvdrun, "-np", str(ranks), "-H", f"localhost:{ranks}", *cmd]
    return cmd


def trainer_rss(bars: Path, max_samples: int, tickers: str | None = None, timeout_s: float = 3600,
                ranks: int = 1) -> dict[str, Any]:
    """Peak RSS (MiB) of one training run (:func:`rss_command`) in a scratch MINUTECAST_HOME: the largest of
    ``ru_maxrss`` from ``wait4`` (Linux: KiB; the trainer itself when it runs alone) and each rank's own peak
    as the run reports it (``peak_rss_mb_per_rank``; rank 0's taken after the report: ``peak_rss_mb_rank0``),
    since horovodrun's ranks are not necessarily among its waited-for descendants."""
    with tempfile.TemporaryDirectory(prefix="minutecast-rss-") as home:
        cmd = rss_command(bars, Path(home) / "run", max_samples, tickers, ranks)
        env = ENV | {"MINUTECAST_HOME": home, "MINUTECAST_PROMOTE": "false"}
        t0 = time.monotonic()
        load0 = os.getloadavg()[0]
        with open(Path(home) / "train.log", "w+") as logf:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=logf, stderr=subprocess.STDOUT)
            timer = threading.Timer(timeout_s, proc.kill)  # wait4 has no timeout of its own
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            logf.seek(0)
            output = logf.read()
        seconds = time.monotonic() - t0
        result_file = Path(home) / "run" / "result.json"
        if proc.returncode != 0 or not result_file.exists():
            raise InfraError(f"training run for the RSS measurement failed (exit {proc.returncode}): {output[-3000:]}")
        result = json.loads(result_file.read_text())
    per_rank = list(result.get("peak_rss_mb_per_rank") or [])
    if per_rank and result.get("peak_rss_mb_rank0"):  # rank 0's peak with the report (after the gather)
        per_rank[0] = max(per_rank[0], result["peak_rss_mb_rank0"])
    peak = round(max([usage.ru_maxrss / 1024, *per_rank]), 1)
    print(f"  trainer peak RSS: {peak:.0f} MiB per rank at most ({ranks} rank(s), {seconds:.0f} s; samples "
          f"{result['samples']}; {result.get('samples_per_s')} samples/s)", flush=True)
    return {"peak_rss_mb": peak, "peak_rss_mb_per_rank": per_rank, "ranks": ranks, "seconds": round(seconds, 1),
            "train_seconds": result.get("train_seconds"), "samples_per_s": result.get("samples_per_s"),
            "bars": str(bars), "tickers": tickers or "all", "max_samples": max_samples, "samples": result["samples"],
            "figures": {k: result.get(k) for k in ("coverage_80", "interval_score_80", "baseline_interval_score_80",
                                                   "model_rmse", "persistence_rmse", "ready_share_regular_hours")},
            "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], "command": " ".join(cmd[1:])}


def accuracy_table() -> dict[str, Any] | None:
    """The current model vs persistence and the baselines on the test dates of the shared data (None without a
    model)."""
    settings = TrainingSettings()
    registry = Registry(settings.models_dir)
    versions = registry.versions()
    version = registry.current_version() or (versions[-1] if versions else None)  # else the newest, unpromoted
    if version is None or not SHARED.is_dir():
        print(f"  accuracy: skipped (current model: {version}, data: {SHARED.is_dir()})")
        return None
    catalog = D.catalog(D.load_bars(SHARED), settings.market_ticker)
    cuts = D.split_days(np.unique(catalog.days).tolist(), settings.val_frac, settings.test_frac)
    test = D.regular(D.split(catalog, cuts)["test"]).samples()
    model = registry.load(version)
    scale = tuple(model.meta.get("baseline_scale") or registry.baseline_scale())
    report, _ = E.build_report(test, model, baseline_scale=(float(scale[0]), float(scale[1])))
    print(E.markdown(report).split("## Per ticker")[0])
    keep = ("version", "tickers", "samples", "period", "coverage_80", "coverage_90", "interval_score_80",
            "baseline_interval_score_80", "interval_score_gain_80", "model_rmse", "persistence_rmse", "dm_pvalue",
            "model_directional_accuracy", "up_fraction")
    return {k: report.get(k) for k in keep} | {"days_test": int(np.unique(test.days).size)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tiny", action="store_true", help="1 and 2 ranks, batch 64, 3 steps; no control, no accuracy")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preset", default="default")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--passes", type=int, default=1, help="backward passes per allreduce")
    p.add_argument("--no-rss", action="store_true", help="skip the trainer's peak RSS measurement")
    p.add_argument("--rss-only", action="store_true", help="only the trainer's peak RSS on the shared data")
    p.add_argument("--tickers", type=int, default=None,
                   help="the RSS run on this many synthetic tickers (benchmarks.training_bars), not the shared data")
    p.add_argument("--days", type=int, default=45, help="sessions of synthetic bars (with --tickers)")
    p.add_argument("--ranks", type=int, default=1, help="Horovod ranks of the RSS run")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    rss = None
    cap = 2000 if args.tiny else get_preset("default").max_samples or 400_000
    if args.tickers:
        bars = synthetic_bars(args.tickers, args.days)
        print(f"synthetic bars: {args.tickers} tickers x {args.days} sessions ({bars})", flush=True)
        rss = trainer_rss(bars, cap, ranks=args.ranks) | {"synthetic": {"tickers": args.tickers, "days": args.days}}
    elif not args.no_rss and SHARED.is_dir():  # first, on an idle machine: nothing else of ours is running
        rss = trainer_rss(SHARED, cap, RSS_TINY_TICKERS if args.tiny else None, ranks=args.ranks)
    elif not args.no_rss:
        print(f"  trainer peak RSS: skipped (no shared data at {SHARED})")
    if args.rss_only:
        print(json.dumps({"trainer_peak_rss_mb": rss and rss["peak_rss_mb"],
                          "samples_per_s": rss and rss["samples_per_s"], "seconds": rss and rss["seconds"],
                          "trainer_rss": rss}))
        return
    small, large = (40, 12) if args.quick else (400, 120)  # measured steps at batch 256 / 1024 (~5-10 s each)
    print(f"training throughput, default preset, CPU, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}:")
    if args.tiny:
        runs = [launch(1, 64, 3, 1), launch(2, 64, 3, 1)]
        two_independent = None
    else:
        runs = [launch(1, 256, small, 5), launch(2, 256, small, 5), launch(1, 1024, large, 3),
                launch(2, 1024, large, 3), launch(2, 1024, large, 3, fp16=True), launch(2, 1024, large, 4, passes=4)]
        two_independent = control(1024, large, 3)
    one = {r["batch_per_rank"]: r["samples_per_s"] for r in runs if r["ranks"] == 1}
    best2 = max((r for r in runs if r["ranks"] == 2), key=lambda r: r["samples_per_s"])
    scaling = best2["samples_per_s"] / one[best2["batch_per_rank"]]
    gpu_epoch_s = None
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") and not args.tiny:
        g = launch(1, 2048, 50 if args.quick else 200, 10, threads=0)
        gpu_epoch_s = round(1_000_000 / g["samples_per_s"], 2)  # one epoch of 1M samples at batch 2048
        runs.append(g)
    accuracy = None if args.quick or args.tiny else accuracy_table()
    print(json.dumps({"samples_per_s_1rank": one[best2["batch_per_rank"]], "samples_per_s_2ranks":
                      best2["samples_per_s"], "scaling": round(scaling, 3), "config_2ranks": best2,
                      "control_2_independent_1rank": None if two_independent is None else round(two_independent, 1),
                      "control_scaling": None if two_independent is None else round(two_independent / one[1024], 3),
                      "gpu_epoch_s": gpu_epoch_s,
                      "load_avg_1m": round(os.getloadavg()[0], 2), "runs": runs, "accuracy": accuracy,
                      "trainer_peak_rss_mb": rss and rss["peak_rss_mb"], "trainer_rss": rss}))


if __name__ == "__main__":
    main()
