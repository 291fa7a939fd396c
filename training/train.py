"""Train the forecasting LSTM with Horovod + TensorFlow; rank 0 evaluates, saves and (optionally) promotes.

    horovodrun -np 2 -H localhost:2 python -m training.train --preset tiny --epochs 1      # Gloo on CPU
    python -m training.train --preset default --bars ../shared/data/bars-1m                # one process
    minutecast train --np 2                                                                 # the same, via the CLI

Reads the bar topic of ``MINUTECAST_NAMESPACE`` from the beginning up to a snapshot of its end offsets
(``--offsets FILE`` from the CLI, else rank 0 takes one and broadcasts it); each rank reads only its
share of the partitions. ``--bars DIR`` trains from recorded files instead (each rank its share of files).
Splits by date, fits the scaler on training samples (allreduced sufficient statistics), trains with
hvd.DistributedOptimizer (LR x size), keeps the weights with the best global validation MSE (epoch 0 =
the untrained model), and on rank 0: evaluates model vs persistence vs the current model on all test
samples (gathered from every rank), saves a registry version, writes the report and ``result.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

# -- hyperparameters and run options (defaults; every one is a command-line flag) ------------------------
preset = "default"  # model architecture + training defaults from minutecast.model.PRESETS
epochs = None  # passes over the training samples; None: the preset's
batch_size = None  # samples per step PER RANK; None: the preset's
learning_rate = None  # Adam LR for ONE rank; multiplied by hvd.size() (same effective LR per sample)
max_samples = None  # cap on training samples, all ranks together (random subset, time order kept)
val_frac = 0.15  # share of trading dates for validation (the dates just before the test dates)
test_frac = 0.15  # share of trading dates at the end for the test report and the promotion gate
seed = 0  # initial weights and shuffling (weights are broadcast from rank 0 anyway)
threads = 0  # TensorFlow intra- and inter-op threads per rank; 0: TensorFlow's default
fp16_allreduce = False  # compress gradients to float16 for the allreduce (halves the bytes exchanged)
backward_passes = 1  # local gradient accumulation steps between two allreduces (hvd backward_passes_per_step)
keep_checkpoints = 2  # per-epoch checkpoints kept (rank 0)
promote = False  # run the promotion gate and promote a model that passes it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Horovod + TensorFlow training of the minutecast LSTM")
    p.add_argument("--preset", default=preset)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--learning-rate", type=float, default=learning_rate)
    p.add_argument("--max-samples", type=int, default=max_samples)
    p.add_argument("--val-frac", type=float, default=val_frac)
    p.add_argument("--test-frac", type=float, default=test_frac)
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--fp16-allreduce", action="store_true", default=fp16_allreduce)
    p.add_argument("--backward-passes", type=int, default=backward_passes)
    p.add_argument("--keep-checkpoints", type=int, default=keep_checkpoints)
    p.add_argument("--promote", action="store_true", default=promote)
    p.add_argument("--bars", type=Path, default=None, help="train from recorded bar files instead of Kafka")
    p.add_argument("--tickers", default=None, help="comma-separated subset of tickers (files only)")
    p.add_argument("--offsets", type=Path, default=None, help="JSON {topic, end_offsets} snapshot to read up to")
    p.add_argument("--out", type=Path, default=None, help="directory for result.json (default <home>/runs/<id>)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - one straight script, read top to bottom
    args = parse_args(argv)
    t_start = time.time()

    # -- Horovod and TensorFlow setup ---------------------------------------------------------------------
    import tensorflow as tf

    if args.threads > 0:  # must happen before TensorFlow creates its thread pools
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import horovod.tensorflow as hvd_tf
    import horovod.tensorflow.keras as hvd

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

    from minutecast.errors import MinutecastError
    from minutecast.features import make_inputs, make_targets
    from minutecast.model import build_model, get_preset, make_loss
    from minutecast.registry import Registry, ServingModel, code_version
    from minutecast.settings import TrainingSettings
    from minutecast.topics import Topics
    from training import data as D
    from training import evaluate as E

    settings = TrainingSettings()
    cfg_preset = get_preset(args.preset, epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t_start))
    run_id = hvd_tf.broadcast_object(run_id, root_rank=0)
    config: dict[str, Any] = {  # the resolved configuration, saved in every checkpoint and the model meta
        "preset": cfg_preset.to_dict(), "ranks": size, "lr_scaled": cfg_preset.learning_rate * size,
        "global_batch": cfg_preset.batch_size * size, "max_samples": args.max_samples,
        "val_frac": args.val_frac, "test_frac": args.test_frac, "seed": args.seed, "threads": args.threads,
        "fp16_allreduce": args.fp16_allreduce, "backward_passes": args.backward_passes,
        "gpu": bool(gpus), "tensorflow": tf.__version__, "run_id": run_id,
        "source": "files" if args.bars else "kafka",
    }
    if is_chief:
        log.info("run %s: %d rank(s), preset %s, config %s", run_id, size, cfg_preset.name, json.dumps(config))

    # -- data: this rank's share of the source ------------------------------------------------------------
    source: dict[str, Any]
    if args.bars is not None:
        files = D.bar_files(args.bars)
        mine = [files[i] for i in D.shard(list(range(len(files))), rank, size)]
        tickers = args.tickers.split(",") if args.tickers else None
        bars = D.load_files(mine, tickers)
        source = {"bars_dir": str(args.bars.resolve()), "files": [f.name for f in files]}
    else:
        topic = Topics(settings.namespace).bars
        snapshot = None
        if args.offsets is not None:
            snapshot = json.loads(args.offsets.read_text())
        elif is_chief:
            from minutecast.kafka import end_offsets

            snapshot = {"topic": topic, "end_offsets": end_offsets(settings.kafka, topic)}
        snapshot = hvd_tf.broadcast_object(snapshot, root_rank=0)
        offsets = {int(p): int(o) for p, o in snapshot["end_offsets"].items()}
        bars, krange = D.read_topic(settings.kafka, snapshot["topic"], offsets, rank=rank, size=size)
        source = {"topic": snapshot["topic"], "end_offsets": offsets}
        log.info("read %d bars of %d tickers from partitions %s", krange.bars, len(bars), krange.partitions)
    samples = D.build_samples(bars)
    del bars

    # -- split by date (the same cut dates on every rank) -------------------------------------------------
    all_days = sorted(set().union(*hvd_tf.allgather_object(set(np.unique(samples.days).tolist()))))
    try:
        cuts = D.split_days(all_days, args.val_frac, args.test_frac)
    except ValueError as exc:
        raise MinutecastError(f"not enough data to train: {exc}") from exc
    parts = D.split(samples, cuts)
    del samples
    per_rank_cap = None if args.max_samples is None else math.ceil(args.max_samples / size)
    train = D.subsample(parts["train"], per_rank_cap, seed=args.seed + rank)
    val = D.subsample(parts["val"], per_rank_cap, seed=args.seed + rank)
    test = parts["test"]
    counts = hvd_tf.allgather_object({"train": len(train), "val": len(val), "test": len(test)})
    totals = {k: sum(c[k] for c in counts) for k in ("train", "val", "test")}
    if min(c["train"] for c in counts) == 0:
        raise MinutecastError(f"a rank has no training samples (per rank: {counts}); use fewer ranks")
    if totals["val"] == 0 or totals["test"] == 0:
        raise MinutecastError(f"empty validation or test period ({totals})")

    # -- scaler on training samples only: allreduce of sufficient statistics ------------------------------
    stats = hvd_tf.allreduce(tf.constant(D.scaler_stats(train), tf.float64), op=hvd_tf.Sum).numpy()
    scaler = D.scaler_from_stats(stats)
    x_train, y_train = make_inputs(train.windows, scaler), make_targets(train.windows, train.targets, scaler)
    x_val, y_val = make_inputs(val.windows, scaler), make_targets(val.windows, val.targets, scaler)
    # Sample weights (float32): price2 = (last close)^2 / its mean over ALL ranks' training samples, so the loss
    # is the squared error in price units (what the gate compares); otherwise 1.
    w_train, w_val = np.ones(len(train), np.float32), np.ones(len(val), np.float64)
    if cfg_preset.weighting == "price2":
        sq = np.square(train.windows[:, -1, 0])
        sums = hvd_tf.allreduce(tf.constant([sq.sum(), sq.size], tf.float64), op=hvd_tf.Sum).numpy()
        w_train = (sq / (sums[0] / sums[1])).astype(np.float32)
        w_val = np.square(val.windows[:, -1, 0]) / (sums[0] / sums[1])
    if is_chief:
        log.info("samples train %d / val %d / test %d (all ranks); scaler %s", totals["train"], totals["val"],
                 totals["test"], scaler.to_dict())

    # -- model, distributed optimizer ---------------------------------------------------------------------
    model = build_model(cfg_preset, seed=args.seed)
    opt = tf.keras.optimizers.Adam(learning_rate=cfg_preset.learning_rate * size)  # LR scaled with ranks
    opt = hvd.DistributedOptimizer(
        opt, compression=hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none,
        backward_passes_per_step=args.backward_passes)
    model.compile(optimizer=opt, loss=make_loss(cfg_preset))
    hvd_tf.broadcast_variables(model.variables, root_rank=0)  # identical start before epoch-0 validation

    # Every rank takes the same number of steps (ranks with fewer samples cycle through theirs).
    steps = max(1, math.ceil(totals["train"] / cfg_preset.batch_size / size))
    ds = (tf.data.Dataset.from_tensor_slices((x_train, y_train, w_train))
          .shuffle(min(len(train), 200_000), seed=args.seed + rank, reshuffle_each_iteration=True)
          .repeat().batch(cfg_preset.batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE))

    class GlobalValidation(tf.keras.callbacks.Callback):
        """Weighted validation MSE over ALL ranks' validation samples (weighted sums of squared errors
        allreduced), best-weights tracking from epoch 0 (the untrained model) and early stopping; identical
        decisions on every rank."""

        def __init__(self) -> None:
            super().__init__()
            self.best, self.best_epoch, self.best_weights = math.inf, 0, None
            self.history: list[dict[str, Any]] = []
            sums = np.array([w_val.sum(), np.sum(w_val * np.square(y_val, dtype=np.float64))])
            n, sq = hvd_tf.allreduce(tf.constant(sums, tf.float64), op=hvd_tf.Sum).numpy()
            self.n, self.persistence_mse = n, sq / n  # forecast 0 = no move = persistence

        def val_mse(self) -> float:
            pred = self.model.predict(x_val, batch_size=8192, verbose=0).reshape(-1) if len(y_val) else np.zeros(0)
            sse = float(np.sum(w_val * np.square(pred.astype(np.float64) - y_val)))
            return float(hvd_tf.allreduce(tf.constant([sse], tf.float64), op=hvd_tf.Sum).numpy()[0] / self.n)

        def track(self, epoch: int, logs: dict[str, Any]) -> None:
            mse = self.val_mse()
            logs["val_mse"], logs["val_persistence_mse"] = mse, self.persistence_mse
            self.history.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
            if mse < self.best:
                self.best, self.best_epoch, self.best_weights = mse, epoch, self.model.get_weights()
            elif epoch - self.best_epoch >= cfg_preset.patience:
                self.model.stop_training = True

        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            self.track(0, {})
            if is_chief:
                log.info("epoch 0 (untrained) val_mse %.5f (persistence %.5f)", self.best, self.persistence_mse)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.track(epoch + 1, logs if logs is not None else {})

    class ChiefLogAndCheckpoint(tf.keras.callbacks.Callback):
        """Rank 0 only: one line per epoch and a checkpoint (model.keras + meta.json with the config)."""

        def __init__(self, ckpt_root: Path) -> None:
            super().__init__()
            self.root, self.t0 = ckpt_root, time.time()

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.t0 = time.time()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            dt = time.time() - self.t0
            log.info("epoch %d/%d loss %.5f val_mse %.5f (persistence %.5f) %.1f s, %.0f samples/s",
                     epoch + 1, cfg_preset.epochs, logs.get("loss", math.nan), logs.get("val_mse", math.nan),
                     logs.get("val_persistence_mse", math.nan), dt, steps * cfg_preset.batch_size * size / dt)
            d = self.root / f"epoch-{epoch + 1:03d}"
            d.mkdir(parents=True, exist_ok=True)
            self.model.save(d / "model.keras")
            (d / "meta.json").write_text(json.dumps({"config": config, "epoch": epoch + 1, "scaler":
                                                     scaler.to_dict(), "logs": {k: float(v) for k, v in
                                                                                logs.items()}}, indent=2))
            for old in sorted(self.root.glob("epoch-*"))[:-max(1, args.keep_checkpoints)]:
                import shutil

                shutil.rmtree(old, ignore_errors=True)

    validation = GlobalValidation()
    callbacks: list[Any] = [
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # rank 0's weights and optimizer state everywhere
        hvd.callbacks.MetricAverageCallback(),  # training loss averaged over ranks before anyone reads it
        validation,
    ]
    if is_chief:
        callbacks.append(ChiefLogAndCheckpoint(settings.home / "checkpoints" / "train" / run_id))

    # -- train ----------------------------------------------------------------------------------------------
    t_fit = time.time()
    model.fit(ds, epochs=cfg_preset.epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
    fit_s = time.time() - t_fit
    if validation.best_weights is not None:
        model.set_weights(validation.best_weights)  # the same on every rank: decisions used global numbers
    epochs_run = len(validation.history) - 1

    # -- calibrate: output x a, a = least-squares factor on ALL validation samples, clipped to [0, 1] ------
    shrink = 1.0
    if cfg_preset.calibrate:
        p_val = model.predict(x_val, batch_size=8192, verbose=0).reshape(-1).astype(np.float64) \
            if len(y_val) else np.zeros(0)
        yp, pp = hvd_tf.allreduce(tf.constant([np.sum(w_val * y_val * p_val), np.sum(w_val * p_val * p_val)],
                                              tf.float64), op=hvd_tf.Sum).numpy()
        shrink = float(np.clip(yp / pp, 0.0, 1.0)) if pp > 0 else 0.0
        head = model.get_layer("move")  # linear output layer: scaling its weights scales the forecast move
        head.set_weights([w * shrink for w in head.get_weights()])
        calibrated_mse = validation.val_mse()  # an allreduce: every rank calls it
        if is_chief:
            log.info("calibration: forecast moves x %.3f; val_mse %.5f (persistence %.5f)", shrink, calibrated_mse,
                     validation.persistence_mse)

    # -- rank 0: evaluate on every rank's test samples, save, gate, report --------------------------------
    gathered = hvd_tf.allgather_object(test)
    ranges = hvd_tf.allgather_object((int(train.ends.min()) if len(train) else None,
                                      int(test.ends.max()) if len(test) else None))
    if not is_chief:
        return 0
    test_all = D.Samples.concat(gathered)
    registry = Registry(settings.models_dir)
    current = E.load_current(registry)
    candidate = ServingModel(version="candidate", kind="lstm", scaler=scaler, meta={}, keras_model=model)
    report, preds = E.build_report(test_all, candidate, current)
    data_range = {
        "start": E._iso(min(r[0] for r in ranges if r[0] is not None)),
        "end": E._iso(max(r[1] for r in ranges if r[1] is not None)),
        "val_start_day": cuts[0], "test_start_day": cuts[1], "samples": totals,
        "tickers": int(np.unique(test_all.tickers).size), **source,
    }
    meta = {
        "config": config, "data": data_range, "code_version": code_version(),
        "metrics": {"test": report["metrics"], "val_mse": validation.best,
                    "val_persistence_mse": validation.persistence_mse, "best_epoch": validation.best_epoch,
                    "epochs_run": epochs_run, "history": validation.history, "calibration": shrink},
        "train_seconds": fit_s,
    }
    version = registry.save(model, scaler, meta)
    report |= {"version": version, "data": data_range, "config": config, "best_epoch": validation.best_epoch}
    decision = E.apply_gate(registry, version, report) if args.promote else None
    report_dir = E.write_report(report, test_all, preds, settings.reports / version, settings.reports / "latest")
    result = {
        "version": version, "promoted": bool(decision and decision["promoted"]), "gate": decision,
        "report_dir": str(report_dir), "model_rmse": report["model_rmse"],
        "persistence_rmse": report["persistence_rmse"], "current_rmse": report["current_rmse"],
        "samples": totals, "best_epoch": validation.best_epoch, "epochs_run": epochs_run,
        "train_seconds": round(fit_s, 2), "samples_per_s": round(epochs_run * steps * cfg_preset.batch_size * size
                                                                   / fit_s, 1) if fit_s > 0 else None,
        "total_seconds": round(time.time() - t_start, 2),
    }
    out = args.out or settings.home / "runs" / run_id
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("model %s: test RMSE %.5f vs persistence %.5f; %s; report %s", version, report["model_rmse"],
             report["persistence_rmse"], decision["reason"] if decision else "not gated", report_dir)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
