"""Train the forecasting LSTM with Horovod + TensorFlow; rank 0 evaluates, saves and (optionally) promotes.

    horovodrun -np 2 -H localhost:2 python -m training.train --preset tiny --epochs 1      # Gloo on CPU
    horovodrun -np 2 -H host1:1,host2:1 python -m training.train --preset default          # two hosts
    python -m training.train --preset default --bars ../shared/data/bars-1m --no-promote   # one process
    python -m training.train --print-config                                                # what a run resolves
    minutecast train --np 2                                                                 # the same, via the CLI

Configuration: ``TrainingSettings`` (minutecast/settings.py), read from the ``MINUTECAST_*`` environment of
each rank, with every flag given overriding its field (``--epochs 0`` included; :mod:`training.config`);
``--promote`` (gate and promote) is on unless ``--no-promote`` / ``MINUTECAST_PROMOTE=false``.
Reads the bar topic of ``MINUTECAST_NAMESPACE`` from the beginning up to a snapshot of its end offsets
(``--offsets FILE`` from the CLI, else rank 0 takes one and broadcasts it); each rank reads only its
share of the partitions. ``--bars DIR`` trains from recorded files instead (each rank its share of files).
Streamed (:mod:`training.stream`): nothing holds every window. Pass 1 over the rank's bars, a group of
tickers at a time, counts samples per ticker and date (split by date and subsample from the counts alone);
pass 2 fits the scaler on training samples (allreduced sufficient statistics) and the baseline; pass 3
writes the training and validation inputs to scratch files; training reads shuffled batches back. It trains
with hvd.DistributedOptimizer (LR x size), keeps the weights with the best global validation pinball loss
(epoch 0 = the untrained model); pass 4: every rank scores its test samples a chunk of whole tickers at a
time (no windows kept), and rank 0 evaluates model vs persistence vs the current model on all of them
(gathered from every rank), saves a registry version, writes the report and ``result.json``,
and removes old runs, checkpoints and reports beyond the last ``keep_runs`` / ``keep_versions``
(:mod:`training.cleanup`). A minute's first bar wins (:func:`training.data.keep_first`, serving's rule); the
repeats left out are counted in the report's ``data`` (``duplicates``, ``conflicting_duplicates``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from minutecast import intervals as I  # noqa: N812
from minutecast.entry import run_main
from minutecast.errors import MinutecastError
from minutecast.features import N_FEATURES, Scaler, make_inputs, make_targets
from minutecast.kafka import end_offsets
from minutecast.model import Preset, build_model, get_preset, make_loss
from minutecast.registry import Registry, code_version
from minutecast.serving_model import ServingModel
from minutecast.settings import TrainingSettings
from minutecast.topics import Topics
from minutecast.universe import allowlist
from minutecast.window import WINDOW, regular_hours
from training import cleanup
from training import data as D
from training import evaluate as E
from training import stream as ST
from training.config import RUN_FIELDS, add_flags, from_args, options

# Headline figures of every run: result.json, the model's meta and the README's Model quality table.
SUMMARY_KEYS = ("coverage_80", "coverage_90", "interval_score_80", "baseline_interval_score_80",
                "interval_score_gain_80", "model_rmse", "persistence_rmse", "dm_stat", "dm_pvalue",
                "model_directional_accuracy", "ready_share_regular_hours")
SHUFFLE_BUFFER = 200_000  # training samples in the shuffle buffer (indexes: 8 bytes each)


def parse_config(argv: list[str] | None = None) -> tuple[TrainingSettings, Preset, argparse.Namespace]:
    """The run's configuration, without TensorFlow: TrainingSettings from the MINUTECAST_* environment with
    the flags given over it, the preset with its overrides applied, and this run's paths (``--offsets``,
    ``--out``: what ``minutecast train`` hands its child; not configuration)."""
    p = argparse.ArgumentParser(description="Horovod + TensorFlow training of the minutecast LSTM")
    add_flags(p, RUN_FIELDS)
    p.add_argument("--offsets", type=Path, default=None, help="JSON {topic, end_offsets} snapshot to read up to")
    p.add_argument("--out", type=Path, default=None, help="directory for result.json (default <home>/runs/<id>)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    args = p.parse_args(argv)
    settings = from_args(args)
    preset = get_preset(settings.preset, epochs=settings.epochs, batch_size=settings.batch_size,
                        learning_rate=settings.learning_rate, max_samples=settings.max_samples)
    return settings, preset, args


def train_stats(chunks: Iterable[D.Samples]) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`Scaler.stats` (sums) of the training samples and the baseline's ratios on those of them in regular
    hours (the baseline is calibrated where it is scored), a chunk at a time."""
    stats = np.zeros(Scaler.N_STATS)
    ratios = [np.empty(0)]
    for s in chunks:
        stats += Scaler.stats(s.windows, s.targets)
        reg = regular_hours(s.ends)
        ratios.append(I.baseline_ratios(s.windows[reg], s.targets[reg]))
    return stats, np.concatenate(ratios)


def spill(chunks: Iterable[D.Samples], scaler: Scaler,
          path: Path) -> tuple[ST.Spill, np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs of the samples into a scratch file (:class:`training.stream.Spill`, float32 rows
    (WINDOW, N_FEATURES)), and their targets (float32, scaled), last closes and as-of minutes in memory."""
    x = ST.Spill(path, (WINDOW, N_FEATURES))
    y, last, ends = [np.empty(0, np.float32)], [np.empty(0)], [np.empty(0, np.int64)]
    for s in chunks:
        x.append(make_inputs(s.windows, scaler))
        y.append(make_targets(s.windows, s.targets, scaler))
        last.append(s.last_close.copy())  # a copy: the view would keep the chunk's windows alive
        ends.append(s.ends)
    return x, np.concatenate(y), np.concatenate(last), np.concatenate(ends)


def batches(tf: Any, x: ST.Spill, y: np.ndarray, batch_size: int, seed: int, buffer: int = SHUFFLE_BUFFER) -> Any:
    """Training batches, endlessly: the sample indexes shuffled as ``Dataset.from_tensor_slices((x, y))`` was
    shuffled before (the same buffer and seed: the same order), each batch's rows read from the scratch file."""

    def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x.read(idx), y[idx]

    def load(idx: Any) -> tuple[Any, Any]:
        xb, yb = tf.numpy_function(rows, [idx], (tf.float32, tf.float32), stateful=False)
        return tf.ensure_shape(xb, (None, WINDOW, N_FEATURES)), tf.ensure_shape(yb, (None,))

    return (tf.data.Dataset.range(len(y))
            .shuffle(min(len(y), buffer), seed=seed, reshuffle_each_iteration=True)
            .repeat().batch(batch_size, drop_remainder=False).map(load).prefetch(tf.data.AUTOTUNE))


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - one straight script, read top to bottom
    settings, cfg_preset, args = parse_config(argv)
    if args.print_config:
        print(json.dumps({"namespace": settings.namespace, "home": str(settings.home), **options(settings),
                          "resolved_preset": cfg_preset.to_dict()}))
        return 0
    t_start = time.time()

    # -- Horovod and TensorFlow setup ---------------------------------------------------------------------
    import tensorflow as tf

    threads = settings.threads_per_rank
    if threads > 0:  # must happen before TensorFlow creates its thread pools
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    import horovod.tensorflow as hvd_tf
    import horovod.tensorflow.keras as hvd

    from training.callbacks import (
        ChiefLogAndCheckpoint,
        GlobalValidation,
        allgather_arrays,
        fit_bucket_scales,
        gather_scored,
        predict,
        shrink_median,
    )

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    is_chief = hvd.rank() == 0
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # one GPU per local rank (NCCL allreduce when Horovod was built with it)
        gpu = gpus[hvd.local_rank() % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
    logging.basicConfig(level=logging.INFO if is_chief else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("training.train")

    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t_start))
    run_id = hvd_tf.broadcast_object(run_id, root_rank=0)
    config: dict[str, Any] = {  # the resolved configuration, saved in every checkpoint and the model meta
        "preset": cfg_preset.to_dict(), "ranks": size, "lr_scaled": cfg_preset.learning_rate * size,
        "global_batch": cfg_preset.batch_size * size, "max_samples": cfg_preset.max_samples,
        "val_frac": settings.val_frac, "test_frac": settings.test_frac, "seed": settings.seed, "threads": threads,
        "fp16_allreduce": settings.fp16_allreduce, "backward_passes": settings.backward_passes,
        "keep_checkpoints": settings.keep_checkpoints, "promote": settings.promote,
        "gpu": bool(gpus), "tensorflow": tf.__version__, "run_id": run_id,
        "source": "files" if settings.bars else "kafka",
    }
    if is_chief:
        log.info("run %s: %d rank(s), preset %s, config %s", run_id, size, cfg_preset.name, json.dumps(config))

    # -- data: this rank's share of the source, re-read a group of tickers at a time on each pass ----------
    source: dict[str, Any]
    scratch = tempfile.TemporaryDirectory(prefix="minutecast-train-")  # checked bars, inputs: removed at the end
    if settings.bars is not None:
        files = D.bar_files(settings.bars)
        mine = [files[i] for i in D.shard(list(range(len(files))), rank, size)]
        tickers = settings.tickers.split(",") if settings.tickers else None
        groups = ST.Groups(files=mine, tickers=tickers, scratch=Path(scratch.name))  # first value wins, as serving
        source = {"bars_dir": str(settings.bars.resolve()), "files": [f.name for f in files]}
    else:
        topic = Topics(settings.namespace).bars
        snapshot = None
        if args.offsets is not None:
            snapshot = json.loads(args.offsets.read_text())
        elif is_chief:
            snapshot = {"topic": topic, "end_offsets": end_offsets(settings.kafka, topic)}
        snapshot = hvd_tf.broadcast_object(snapshot, root_rank=0)
        offsets = {int(p): int(o) for p, o in snapshot["end_offsets"].items()}
        bars, krange = D.read_topic(settings.kafka, snapshot["topic"], offsets, rank=rank, size=size,
                                    allowed=allowlist(settings))  # the same records the Faust worker accepts
        source = {"topic": snapshot["topic"], "end_offsets": offsets}
        groups = ST.Groups(bars=bars, scratch=Path(scratch.name))  # into scratch files: memory freed below
        groups.firsts = D.FirstValues(krange.duplicates, krange.conflicts)
        log.info("read %d bars of %d tickers from partitions %s", krange.bars, len(bars), krange.partitions)
        del bars
    market_ticker = settings.market_ticker
    plan = ST.plan(groups, market_ticker)  # pass 1: samples per ticker and date, ready minutes; no windows
    # Repeats of a minute left out on every rank (conflicting ones serving dead-lettered): in the report.
    repeats = hvd_tf.allgather_object((groups.firsts.duplicates, groups.firsts.conflicts))
    source |= {"duplicates": sum(r[0] for r in repeats), "conflicting_duplicates": sum(r[1] for r in repeats)}
    if is_chief:
        log.info("left out repeated minutes (first value wins): %d identical, %d conflicting",
                 source["duplicates"], source["conflicting_duplicates"])
    # The market ticker lives on one rank: it shares the series with the others (market context).
    market = next((m for m in hvd_tf.allgather_object(plan.market) if m is not None), None)
    ready = {t: c for part in hvd_tf.allgather_object(plan.ready) for t, c in part.items()}  # the ready share

    # -- split by date (the same cut dates on every rank), subsample: positions only, no windows ---------
    all_days = sorted(set().union(*hvd_tf.allgather_object({int(d) for v in plan.days.values() for d in v[0]})))
    cuts = D.split_days(all_days, settings.val_frac, settings.test_frac)
    plan.split(cuts)
    per_rank_cap = None if cfg_preset.max_samples is None else math.ceil(cfg_preset.max_samples / size)
    mine_n = {"train": plan.subsample("train", per_rank_cap, seed=settings.seed + rank),
              "val": plan.subsample("val", per_rank_cap, seed=settings.seed + rank), "test": plan.test_regular()}
    counts = hvd_tf.allgather_object(mine_n)
    totals = {k: sum(c[k] for c in counts) for k in ("train", "val", "test")}
    if min(c["train"] for c in counts) == 0:
        raise MinutecastError(f"a rank has no training samples (per rank: {counts}); use fewer ranks")
    if totals["val"] == 0 or totals["test"] == 0:
        raise MinutecastError(f"empty validation or test period ({totals})")

    def split_chunks(which: str, chunk: int = ST.CHUNK, **kw: Any) -> Iterator[D.Samples]:
        return ST.chunks(groups, plan, which, market_ticker, market, chunk, **kw)

    # -- pass 2: scaler and the calibrated baseline, on training samples only -------------------------------
    stats, ratios_mine = train_stats(split_chunks("train"))
    scaler = Scaler.from_stats(hvd_tf.allreduce(tf.constant(stats, tf.float64), op=hvd_tf.Sum).numpy())
    (ratios,) = allgather_arrays(hvd_tf, ratios_mine)
    baseline_scale = I.scale_from_ratios(ratios)
    # -- pass 3: model inputs of the training and validation samples into scratch files -------------------
    x_train, y_train, _, _ = spill(split_chunks("train"), scaler, Path(scratch.name) / "train.f32")
    x_val, y_val, val_last, val_ends = spill(split_chunks("val"), scaler, Path(scratch.name) / "val.f32")
    if is_chief:
        log.info("samples train %d / val %d / test %d (all ranks); scaler %s; baseline scale c80 %.3f c90 %.3f; "
                 "%d pass(es) over the bars so far", totals["train"], totals["val"], totals["test"],
                 scaler.to_dict(), *baseline_scale, groups.passes)

    # -- model, distributed optimizer ---------------------------------------------------------------------
    model = build_model(cfg_preset, seed=settings.seed)
    opt = tf.keras.optimizers.Adam(learning_rate=cfg_preset.learning_rate * size)  # LR scaled with ranks
    opt = hvd.DistributedOptimizer(
        opt, compression=hvd.Compression.fp16 if settings.fp16_allreduce else hvd.Compression.none,
        backward_passes_per_step=settings.backward_passes)
    model.compile(optimizer=opt, loss=make_loss(cfg_preset))
    hvd_tf.broadcast_variables(model.variables, root_rank=0)  # identical start before epoch-0 validation

    # Every rank takes the same number of steps (ranks with fewer samples cycle through theirs).
    steps = max(1, math.ceil(totals["train"] / cfg_preset.batch_size / size))
    ds = batches(tf, x_train, y_train, cfg_preset.batch_size, settings.seed + rank)
    validation = GlobalValidation(hvd_tf, x_val, y_val, cfg_preset.patience, log if is_chief else None)
    callbacks: list[Any] = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # rank 0's weights and optimizer state everywhere
        hvd.callbacks.MetricAverageCallback(),  # training loss averaged over ranks before anyone reads it
        validation,
    ]
    if is_chief:
        callbacks.append(ChiefLogAndCheckpoint(cleanup.checkpoints_root(settings) / run_id, config, scaler,
                                               cfg_preset.epochs, steps * cfg_preset.batch_size * size,
                                               settings.keep_checkpoints, log))

    # -- train ----------------------------------------------------------------------------------------------
    t_fit = time.time()
    model.fit(ds, epochs=cfg_preset.epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
    fit_s = time.time() - t_fit
    if validation.best_weights is not None:
        model.set_weights(validation.best_weights)  # the same on every rank: decisions used global numbers
    epochs_run = len(validation.history) - 1

    # -- the median: its move x a (least squares on ALL validation samples), kept only if it beats persistence
    # significantly on the validation dates, else 0 (the point forecast is then the last close) -------------
    val_pred = predict(model, x_val)  # the one prediction of the validation samples after training
    shrink: float = 1.0
    shrink_test: dict[str, Any] = {}
    if cfg_preset.calibrate:
        shrink, shrink_test, val_pred = shrink_median(model, hvd_tf, val_pred, y_val, val_last, val_ends)
    val_pinball = validation.val_pinball(val_pred)  # an allreduce: every rank calls it
    # -- time-of-day interval scales, fitted on the validation dates (split conformal by bucket) ------------
    bucket_scales = fit_bucket_scales(hvd_tf, val_pred, y_val, val_ends, scaler.target_scale)
    if is_chief:
        log.info("median moves x %.3f (%s); validation pinball %.5f; time-of-day scales (80%%, 90%%) %s", shrink,
                 shrink_test, val_pinball, np.round(bucket_scales, 3).tolist())

    x_val.close()
    x_train.close()

    # -- pass 4: every rank scores its test samples a chunk of whole tickers at a time; rank 0 reports -----
    registry = Registry(settings.models_dir, keep=settings.keep_versions)
    current = E.load_current(registry)
    seen = hvd_tf.allgather_object(current.version if current is not None else None)
    if len(set(seen)) > 1:
        raise MinutecastError(f"the ranks see different current models {seen}: every host needs the same registry")
    candidate = ServingModel(version="candidate", kind="lstm", scaler=scaler, keras_model=model,
                             meta={"bucket_scales": bucket_scales.tolist()})
    scored = E.score_all(split_chunks("test_all", whole=True, keep=ST.regular), mine_n["test"], candidate,
                         current, baseline_scale)  # reports score regular hours
    test_all = gather_scored(hvd_tf, scored, E.forecaster_names(candidate, current))
    del scored
    scratch.cleanup()
    peak_rss_mb = hvd_tf.allgather_object(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    if not is_chief:
        return 0
    test_days = [d for d in all_days if d >= cuts[1]]
    report = E.report_of(test_all, candidate, current, baseline_scale=baseline_scale,
                         extra={"ready": E.ready_share_of(ready, days=test_days)})
    preds = test_all.preds
    data_range = {"val_start_day": cuts[0], "test_start_day": cuts[1], "samples": totals,
                  "market_ticker": market_ticker, "tickers": int(np.unique(test_all.tickers).size), **source}
    meta = {
        "config": config, "data": data_range, "code_version": code_version(), "baseline_scale": baseline_scale,
        "bucket_scales": bucket_scales.tolist(),
        "metrics": {"test": {k: report.get(k) for k in SUMMARY_KEYS}, "val_pinball": val_pinball,
                    "best_epoch": validation.best_epoch, "epochs_run": epochs_run, "history": validation.history,
                    "median_shrink": shrink, "median_test": shrink_test},
        "train_seconds": fit_s,
    }
    version = registry.save(model, scaler, meta)
    registry.save_baseline_scale(baseline_scale, {"run_id": run_id, "version": version, "samples": len(ratios)})
    report |= {"version": version, "data": data_range, "config": config, "best_epoch": validation.best_epoch}
    decision = E.apply_gate(registry, version, report) if settings.promote else None
    report_dir = E.write_report(report, test_all, preds, settings.reports / version, settings.reports / "latest")
    result = {
        "version": version, "promoted": bool(decision and decision["promoted"]), "gate": decision,
        "report_dir": str(report_dir), **{k: report.get(k) for k in SUMMARY_KEYS},
        "current_rmse": report.get("current_rmse"), "samples": totals, "best_epoch": validation.best_epoch,
        "epochs_run": epochs_run, "train_seconds": round(fit_s, 2),
        "samples_per_s": round(epochs_run * steps * cfg_preset.batch_size * size / fit_s, 1) if fit_s > 0 else None,
        "total_seconds": round(time.time() - t_start, 2),
        "peak_rss_mb_per_rank": peak_rss_mb,  # each rank's peak resident set before the report (MiB)
        "peak_rss_mb_rank0": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # report too
    }
    out = args.out or cleanup.runs_root(settings) / run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    cleanup.prune(settings, active=(out, cleanup.checkpoints_root(settings) / run_id))  # keep the last K runs
    log.info("model %s: 80%% interval score %s vs calibrated baseline %s, coverage %s; RMSE %s vs persistence %s; "
             "%s; report %s", version, report.get("interval_score_80"), report.get("baseline_interval_score_80"),
             report.get("coverage_80"), report.get("model_rmse"), report.get("persistence_rmse"),
             decision["reason"] if decision else "not gated", report_dir)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(run_main(main, "training.train"))  # an expected error: one line (to minutecast train)
