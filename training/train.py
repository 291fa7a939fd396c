"""Train the forecasting LSTM with TensorFlow (Horovod for several ranks); rank 0 evaluates, saves, promotes.

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
Steps, in :func:`main`'s order: :func:`setup`, :func:`training.prepare.load_data`,
:func:`training.prepare.prepare_inputs`, :func:`fit`, :func:`evaluate`, :func:`promote` (rank 0).
Streamed (:mod:`training.stream`): nothing holds every window. Pass 1 over the rank's bars, a group of
tickers at a time, counts samples per ticker and date (split by date and subsample from the counts alone);
pass 2 fits the scaler on training samples (allreduced sufficient statistics) and the baseline; pass 3
writes the training and validation inputs to scratch files; training reads shuffled batches back. It trains
with hvd.DistributedOptimizer (LR x size) under horovodrun, plain Adam on one rank without Horovod
(:mod:`training.ranks`), keeps the weights with the best global validation pinball loss (epoch 0 = the
untrained model); pass 4: every rank scores its test samples a chunk of whole tickers at a time into the
report's sufficient statistics (:mod:`training.tally`: no windows, no scored samples kept), and rank 0
merges them into the report (model vs persistence vs the current model), saves a registry version with the
resolved configuration, writes the report and ``result.json``,
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minutecast import har as har_lib
from minutecast.entry import run_main
from minutecast.errors import MinutecastError
from minutecast.features import N_FEATURES
from minutecast.model import Preset, build_model, get_preset, make_loss
from minutecast.registry import Registry, code_version
from minutecast.serving_model import ServingModel
from minutecast.settings import TrainingSettings
from minutecast.window import WINDOW, regular_hours
from training import cleanup, memory
from training import data as D
from training import evaluate as E
from training import scoring as S
from training import stream as ST
from training.config import RUN_FIELDS, add_flags, from_args, options
from training.prepare import Data, Inputs, Run, load_data, prepare_inputs
from training.ranks import Ranks
from training.ranks import start as start_ranks
from training.tally import FanSamples, ReportTally

# Headline figures of every run: result.json, the model's meta and the README's Model quality table.
SUMMARY_KEYS = ("coverage_80", "coverage_90", "interval_score_80", "baseline_interval_score_80",
                "interval_score_gain_80", "har_interval_score_80", "interval_score_gain_vs_har_80",
                "model_rmse", "persistence_rmse", "dm_stat", "dm_pvalue",
                "model_directional_accuracy", "ready_share_regular_hours")
SHUFFLE_BUFFER = 200_000  # training samples in the shuffle buffer (indexes: 8 bytes each)


def main(argv: list[str] | None = None) -> int:
    """The run, top to bottom: configuration, ranks, data, model and fit, evaluation; rank 0 promotes."""
    settings, preset, args = parse_config(argv)
    if args.print_config:
        print(json.dumps({"namespace": settings.namespace, "home": str(settings.home), **options(settings),
                          "resolved_preset": preset.to_dict()}))
        return 0
    memory.bound_heap()  # freed chunks go back to the system: the peak is the batch's, not the history's
    run = setup(settings, preset)
    data = load_data(run, args.offsets)
    memory.release("pass 1")
    inputs = prepare_inputs(run, data)
    memory.release("passes 2 and 3")
    memory.bound_heap(memory.FIT_MMAP_THRESHOLD)  # the fit's steps allocate as before (its samples/s)
    fitted = fit(run, data, inputs)
    memory.bound_heap()
    memory.release("the fit")
    evaluation = evaluate(run, data, inputs, fitted)
    if run.is_chief:
        promote(run, data, inputs, fitted, evaluation, args.out)
    return 0


# -- set-up: TensorFlow, the ranks, the resolved configuration ----------------------------------------------
def setup(settings: TrainingSettings, preset: Preset) -> Run:
    """TensorFlow's threads and device, Horovod only for several ranks (:mod:`training.ranks`), the log
    (INFO on rank 0 only) and the run id and configuration rank 0 decides."""
    t_start = time.time()
    import tensorflow as tf

    if settings.threads_per_rank > 0:  # must happen before TensorFlow creates its thread pools
        tf.config.threading.set_intra_op_parallelism_threads(settings.threads_per_rank)
        tf.config.threading.set_inter_op_parallelism_threads(settings.threads_per_rank)
    ranks = start_ranks(settings.backward_passes)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # one GPU per local rank (NCCL allreduce when Horovod was built with it)
        gpu = gpus[ranks.comm.local_rank() % len(gpus)]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
    logging.basicConfig(level=logging.INFO if ranks.rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {ranks.rank}] %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("training.train")
    run_id = ranks.comm.broadcast_object(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t_start)), root_rank=0)
    config = resolved_config(settings, preset, ranks, tf.__version__, bool(gpus), run_id)
    run = Run(settings, preset, tf, ranks, log, run_id, config, t_start,
              tempfile.TemporaryDirectory(prefix="minutecast-train-"))
    if run.is_chief:
        log.info("run %s: %d rank(s)%s, preset %s, config %s", run_id, ranks.size,
                 "" if ranks.horovod else " (no Horovod)", preset.name, json.dumps(config))
    return run


def resolved_config(settings: TrainingSettings, preset: Preset, ranks: Ranks, tf_version: str, gpu: bool,
                    run_id: str) -> dict[str, Any]:
    """The run's hyperparameters as resolved (TrainingSettings, flags over it, the preset), for the record."""
    return {
        "preset": preset.to_dict(),  # network size, epochs, batch per rank, learning rate, patience, cap
        "ranks": ranks.size,  # Horovod ranks (1: plain TensorFlow)
        "horovod": ranks.horovod,  # whether Horovod ran (one rank: only when launched by horovodrun)
        "lr_scaled": preset.learning_rate * ranks.size,  # Adam's rate: the preset's x ranks (linear scaling)
        "global_batch": preset.batch_size * ranks.size,  # samples per optimizer step over all ranks
        "max_samples": preset.max_samples,  # training (and validation) samples drawn at most, all ranks
        "val_frac": settings.val_frac,  # share of dates for validation (after the training dates)
        "test_frac": settings.test_frac,  # share of dates for the test (the last dates)
        "seed": settings.seed,  # weights, subsample and shuffle (each rank adds its rank)
        "threads": settings.threads_per_rank,  # TensorFlow threads per rank (0: TensorFlow decides)
        "fp16_allreduce": settings.fp16_allreduce,  # gradients compressed to float16 for the allreduce
        "backward_passes": settings.backward_passes,  # local gradient accumulation steps per allreduce
        "keep_checkpoints": settings.keep_checkpoints,  # epoch checkpoints kept per run
        "promote": settings.promote,  # gate and promote the new version
        "gpu": gpu, "tensorflow": tf_version, "run_id": run_id,
        "source": "files" if settings.bars else "kafka",
    }


# -- model and fit --------------------------------------------------------------------------------------------
@dataclass
class Fitted:
    model: Any  # the Keras model with the best epoch's weights and the shrunk median
    validation: Any  # training.callbacks.GlobalValidation: best epoch, history
    fit_s: float
    steps: int  # optimizer steps per epoch (every rank the same)
    shrink: float  # the median's move factor
    shrink_test: dict[str, Any]  # the validation test that kept (or dropped) it
    val_pinball: float
    bucket_scales: np.ndarray  # (N_BUCKETS, 2) time-of-day interval scales (80%, 90%)
    har_weight: float  # the network's weight in the quantile average with the HAR baseline (1: the network alone)

    @property
    def epochs_run(self) -> int:
        return len(self.validation.history) - 1


def fit(run: Run, data: Data, inputs: Inputs) -> Fitted:
    """Train (every rank the same number of steps; ranks with fewer samples cycle through theirs), keep the
    weights of the best global validation pinball loss, then calibrate on the validation dates."""
    from training.callbacks import ChiefLogAndCheckpoint, GlobalValidation  # TensorFlow: after its set-up

    tf, preset, settings = run.tf, run.preset, run.settings
    model = build_model(preset, seed=settings.seed)
    opt = tf.keras.optimizers.Adam(learning_rate=preset.learning_rate * run.ranks.size)  # LR scaled with ranks
    model.compile(optimizer=run.ranks.optimizer(opt, settings.fp16_allreduce, settings.backward_passes),
                  loss=make_loss(preset))
    run.comm.broadcast_variables(model.variables, root_rank=0)  # identical start before epoch-0 validation
    steps = max(1, math.ceil(data.totals["train"] / preset.batch_size / run.ranks.size))
    ds = batches(tf, inputs.x_train, inputs.y_train, preset.batch_size, settings.seed + run.ranks.rank)
    validation = GlobalValidation(run.comm, inputs.x_val, inputs.y_val, preset.patience,
                                  run.log if run.is_chief else None)
    callbacks = [*run.ranks.callbacks(), validation]
    if run.is_chief:
        callbacks.append(ChiefLogAndCheckpoint(cleanup.checkpoints_root(settings) / run.run_id, run.config,
                                               inputs.scaler, preset.epochs, steps * preset.batch_size * run.ranks.size,
                                               settings.keep_checkpoints, run.log))
    t_fit = time.time()
    model.fit(ds, epochs=preset.epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
    fit_s = time.time() - t_fit
    if validation.best_weights is not None:
        model.set_weights(validation.best_weights)  # the same on every rank: decisions used global numbers
    fitted = calibrate(run, inputs, model, validation, fit_s, steps)
    inputs.x_val.close()
    inputs.x_train.close()
    return fitted


def calibrate(run: Run, inputs: Inputs, model: Any, validation: Any, fit_s: float, steps: int) -> Fitted:
    """The median: its move x a (least squares on ALL validation samples), kept only if it beats persistence
    significantly on the validation dates, else 0 (the point forecast is then the last close); then the
    network's weight in the quantile average with the HAR baseline (:func:`minutecast.har.blend`, the least
    validation pinball loss over every rank's regular-hours samples); then the time-of-day interval scales of
    the average, fitted on the validation dates (split conformal by bucket)."""
    from training.callbacks import allreduce_sum, fit_bucket_scales, predict, shrink_median

    val_pred = predict(model, inputs.x_val)  # the one prediction of the validation samples after training
    shrink: float = 1.0
    shrink_test: dict[str, Any] = {}
    if run.preset.calibrate:
        shrink, shrink_test, val_pred = shrink_median(model, run.comm, val_pred, inputs.y_val, inputs.val_last,
                                                      inputs.val_ends)
    har_q = inputs.val_har / inputs.scaler.target_scale  # in the network's target units, like val_pred
    regular = regular_hours(inputs.val_ends)
    val_pred = np.sort(val_pred, axis=1)  # as served: ServingModel sorts the network's outputs before the average
    losses = allreduce_sum(run.comm, har_lib.pinball_by_weight(val_pred, har_q, inputs.y_val, regular))
    weight = har_lib.fit_weight(losses)
    val_pred = har_lib.blend(val_pred, har_q, weight, regular)
    val_pinball = validation.val_pinball(val_pred)  # an allreduce: every rank calls it
    scales = fit_bucket_scales(run.comm, val_pred, inputs.y_val, inputs.val_ends, inputs.scaler.target_scale)
    if run.is_chief:
        run.log.info("median moves x %.3f (%s); network weight %.2f against the HAR baseline (validation pinball by "
                     "weight %s); validation pinball %.5f; time-of-day scales (80%%, 90%%) %s", shrink, shrink_test,
                     weight, dict(zip(har_lib.WEIGHTS.tolist(), np.round(losses / max(losses[-1], 1e-12), 4).tolist(),
                                      strict=True)),
                     val_pinball, np.round(scales, 3).tolist())
    return Fitted(model, validation, fit_s, steps, shrink, shrink_test, val_pinball, scales, weight)


# -- evaluation: every rank tallies its test samples a chunk of whole tickers at a time ------------------------
@dataclass
class Evaluation:
    registry: Registry
    current: ServingModel | None  # the promoted model, scored beside the candidate
    candidate: ServingModel
    tally: ReportTally  # every rank's sufficient statistics, merged (rank 0; others: their own)
    fans: FanSamples  # the fan charts' samples, merged likewise
    peak_rss_mb: list[float]  # each rank's peak resident set after scoring (MiB)


def evaluate(run: Run, data: Data, inputs: Inputs, fitted: Fitted) -> Evaluation:
    """Pass 4 (regular-hours test samples, whole tickers a chunk; no windows and no scored samples kept):
    first the window volatility of every sample (the tercile cut points), then the report's sufficient
    statistics of every forecaster (:mod:`training.tally`), gathered on rank 0."""
    comm = run.comm
    registry = Registry(run.settings.models_dir, keep=run.settings.keep_versions)
    current = E.load_current(registry)
    seen = comm.allgather_object(current.version if current is not None else None)
    if len(set(seen)) > 1:
        raise MinutecastError(f"the ranks see different current models {seen}: every host needs the same registry")
    candidate = ServingModel(version="candidate", kind="lstm", scaler=inputs.scaler, keras_model=fitted.model,
                             meta={"bucket_scales": fitted.bucket_scales.tolist(), "har": inputs.har.to_dict(),
                                   "har_weight": fitted.har_weight})

    from training.callbacks import allgather_arrays

    def test() -> Iterator[D.Samples]:
        return data.chunks("test_all", whole=True, keep=ST.regular)  # reports score regular hours

    (sigma,) = allgather_arrays(comm, E.test_sigmas(test(), data.mine["test"]))
    cuts = S.tercile_cuts(sigma, overwrite=True)
    del sigma
    tally, fans = E.tally_all(test(), data.mine["test"], candidate, current, inputs.baseline_scale, cuts,
                              har=inputs.har)
    run.scratch.cleanup()
    peak_rss_mb = comm.allgather_object(peak_rss())
    parts = comm.allgather_object((tally, fans))
    for other_tally, other_fans in parts[1:] if run.is_chief else []:
        tally.merge(other_tally)
        fans.merge(other_fans)
    return Evaluation(registry, current, candidate, tally, fans, peak_rss_mb)


def peak_rss() -> float:
    """This process's peak resident set so far (MiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- promote (rank 0): save the version, gate, write the report and result.json, prune -------------------------
def promote(run: Run, data: Data, inputs: Inputs, fitted: Fitted, ev: Evaluation, out: Path | None) -> None:
    """Rank 0: the report, a registry version with its meta (the resolved config included), the calibrated
    baseline's scale for serving, the gate's decision, the report's files, ``result.json``; old runs pruned."""
    settings, val = run.settings, fitted.validation
    test_days = [d for d in data.all_days if d >= data.cuts[1]]
    report = E.report_of_tally(ev.tally, ev.candidate, ev.current, baseline_scale=inputs.baseline_scale,
                               har=inputs.har, extra={"ready": E.ready_share_of(data.ready, days=test_days)})
    data_range = {"val_start_day": data.cuts[0], "test_start_day": data.cuts[1], "samples": data.totals,
                  "market_ticker": data.market_ticker, "tickers": report["tickers"], **data.source}
    meta = {
        "config": run.config, "data": data_range, "code_version": code_version(),
        "baseline_scale": inputs.baseline_scale, "har": inputs.har.to_dict(),
        "bucket_scales": fitted.bucket_scales.tolist(), "har_weight": fitted.har_weight,
        "metrics": {"test": {k: report.get(k) for k in SUMMARY_KEYS}, "val_pinball": fitted.val_pinball,
                    "best_epoch": val.best_epoch, "epochs_run": fitted.epochs_run, "history": val.history,
                    "median_shrink": fitted.shrink, "median_test": fitted.shrink_test},
        "train_seconds": fitted.fit_s,
    }
    version = ev.registry.save(fitted.model, inputs.scaler, meta)
    ev.registry.save_baseline_scale(inputs.baseline_scale, {"run_id": run.run_id, "version": version,
                                                            "samples": len(inputs.ratios)}, har=inputs.har)
    report |= {"version": version, "data": data_range, "config": run.config, "best_epoch": val.best_epoch}
    decision = E.apply_gate(ev.registry, version, report) if settings.promote else None
    kept, preds = ev.fans.samples()
    report_dir = E.write_report(report, kept, preds, settings.reports / version, settings.reports / "latest",
                                fan_tickers=ev.fans.chosen())
    result = result_of(run, data, fitted, ev, report, version, decision, report_dir)
    out = out or cleanup.runs_root(settings) / run.run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    cleanup.prune(settings, active=(out, cleanup.checkpoints_root(settings) / run.run_id))  # keep the last K runs
    run.log.info("model %s: 80%% interval score %s vs calibrated baseline %s, coverage %s; RMSE %s vs "
                 "persistence %s; %s; report %s", version, report.get("interval_score_80"),
                 report.get("baseline_interval_score_80"), report.get("coverage_80"), report.get("model_rmse"),
                 report.get("persistence_rmse"), decision["reason"] if decision else "not gated", report_dir)
    print(json.dumps(result), flush=True)


def result_of(run: Run, data: Data, fitted: Fitted, ev: Evaluation, report: dict[str, Any], version: str,
              decision: dict[str, Any] | None, report_dir: Path) -> dict[str, Any]:
    """``result.json``: the version, the gate's decision, the headline figures, speed and memory."""
    trained = fitted.epochs_run * fitted.steps * run.preset.batch_size * run.ranks.size  # samples, all ranks
    return {
        "version": version, "promoted": bool(decision and decision["promoted"]), "gate": decision,
        "report_dir": str(report_dir), **{k: report.get(k) for k in SUMMARY_KEYS},
        "current_rmse": report.get("current_rmse"), "samples": data.totals,
        "best_epoch": fitted.validation.best_epoch, "epochs_run": fitted.epochs_run,
        "train_seconds": round(fitted.fit_s, 2),
        "samples_per_s": round(trained / fitted.fit_s, 1) if fitted.fit_s > 0 else None,
        "total_seconds": round(time.time() - run.t_start, 2),
        "peak_rss_mb_per_rank": ev.peak_rss_mb,  # each rank's peak resident set before the report (MiB)
        "peak_rss_mb_rank0": peak_rss(),  # rank 0's, the report included
    }





# -- configuration (no TensorFlow) and the training batches --------------------------------------------------
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


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(run_main(main, "training.train"))  # an expected error: one line (to minutecast train)
