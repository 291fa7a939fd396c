"""Keras callbacks and steps of training/train.py that every Horovod rank runs in lockstep.

Every decision (best epoch, early stop, the median's shrink factor) is taken on numbers allreduced over
all ranks, so all ranks decide the same (``hvd_tf``: ``horovod.tensorflow``, or :class:`training.ranks.OneRank`
for a run of one rank). TensorFlow is imported at the top (the callback classes derive from Keras'), so the
training steps import this module inside their functions, after TensorFlow's set-up.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from minutecast.intervals import bucket_index, bucket_scales, interval_scores, pinball_sum
from minutecast.schemas import QUANTILES
from training.scoring import diebold_mariano
from training.stream import Spill

PREDICT_BATCH = 8192  # windows per predict call on validation samples
PREDICT_ROWS = 4 * PREDICT_BATCH  # inputs read from a scratch file at once (~100 MB; whole batches)


def predict(model: Any, x: np.ndarray | Spill) -> np.ndarray:
    """The model's outputs (N, 5) float64 on ``x`` (normalised windows, or a scratch file of them read
    :data:`PREDICT_ROWS` at a time), in batches of :data:`PREDICT_BATCH`."""
    if not len(x):
        return np.zeros((0, len(QUANTILES)))
    if isinstance(x, np.ndarray):
        return np.asarray(model.predict(x, batch_size=PREDICT_BATCH, verbose=0), dtype=np.float64)
    return np.concatenate([np.asarray(model.predict(x.range(lo, lo + PREDICT_ROWS), batch_size=PREDICT_BATCH,
                                                    verbose=0), dtype=np.float64)
                           for lo in range(0, len(x), PREDICT_ROWS)])


def allreduce_sum(hvd_tf: Any, values: Any) -> np.ndarray:
    """Element-wise float64 sum of ``values`` over all ranks."""
    total = hvd_tf.allreduce(tf.constant(np.asarray(values, dtype=np.float64)), op=hvd_tf.Sum)
    return np.asarray(total.numpy(), dtype=np.float64)


def allgather_arrays(hvd_tf: Any, *arrays: np.ndarray) -> list[np.ndarray]:
    """Each of ``arrays`` (numeric, the same trailing shape on every rank) concatenated over all ranks in rank
    order, by numeric allgathers. Not ``allgather_object``: it converts its pickle through a Python bytearray
    (~17x the bytes in memory for a while: 7 GB for the 430 MB of test windows of the shared data) and caps
    it at 2 GB (int32 sizes)."""
    if hvd_tf.size() == 1:
        return [np.asarray(a) for a in arrays]
    return [np.asarray(hvd_tf.allgather(tf.constant(np.asarray(a))).numpy()) for a in arrays]


class GlobalValidation(tf.keras.callbacks.Callback):
    """Validation pinball loss over ALL ranks' validation samples (sums allreduced), best-weights tracking
    from epoch 0 (the untrained model) and early stopping; identical decisions on every rank."""

    def __init__(self, hvd_tf: Any, x_val: np.ndarray | Spill, y_val: np.ndarray, patience: int,
                 log: Any = None) -> None:
        super().__init__()
        self.hvd, self.x, self.y, self.patience, self.log = hvd_tf, x_val, y_val, patience, log
        self.best, self.best_epoch, self.best_weights = math.inf, 0, None
        self.history: list[dict[str, Any]] = []
        self.n = float(allreduce_sum(hvd_tf, [len(y_val)])[0])

    def val_pinball(self, pred: np.ndarray | None = None) -> float:
        """Mean pinball loss of ``pred`` (this rank's validation predictions; default: the model's now) over
        every rank's validation samples. An allreduce: every rank calls it."""
        total = pinball_sum(predict(self.model, self.x) if pred is None else pred, self.y)
        return float(allreduce_sum(self.hvd, [total])[0] / self.n)

    def track(self, epoch: int, logs: dict[str, Any]) -> None:
        loss = self.val_pinball()
        logs["val_pinball"] = loss  # the same dict reaches the callbacks after this one (the chief's log line)
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        if loss < self.best:
            self.best, self.best_epoch, self.best_weights = loss, epoch, self.model.get_weights()
        elif epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.track(0, {})
        if self.log is not None:
            self.log.info("epoch 0 (untrained) val_pinball %.5f", self.best)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.track(epoch + 1, logs if logs is not None else {})


class ChiefLogAndCheckpoint(tf.keras.callbacks.Callback):
    """Rank 0 only: one line per epoch and a checkpoint (model.keras + meta.json with the resolved config)."""

    def __init__(self, root: Path, config: dict[str, Any], scaler: Any, epochs: int, samples_per_epoch: int,
                 keep: int, log: Any) -> None:
        super().__init__()
        self.root, self.config, self.scaler, self.epochs = root, config, scaler, epochs
        self.samples, self.keep, self.log, self.t0 = samples_per_epoch, keep, log, time.time()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.t0 = time.time()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        dt = time.time() - self.t0
        self.log.info("epoch %d/%d loss %.5f val_pinball %.5f %.1f s, %.0f samples/s", epoch + 1, self.epochs,
                      logs.get("loss", math.nan), logs.get("val_pinball", math.nan), dt, self.samples / dt)
        d = self.root / f"epoch-{epoch + 1:03d}"
        d.mkdir(parents=True, exist_ok=True)
        self.model.save(d / "model.keras")
        (d / "meta.json").write_text(json.dumps({"config": self.config, "epoch": epoch + 1,
                                                 "scaler": self.scaler.to_dict(),
                                                 "logs": {k: float(v) for k, v in logs.items()}}, indent=2))
        for old in sorted(self.root.glob("epoch-*"))[:-max(1, self.keep)]:
            shutil.rmtree(old, ignore_errors=True)


def shrink_median(model: Any, hvd_tf: Any, pred: np.ndarray, y_val: np.ndarray, val_last: np.ndarray,
                  val_ends: np.ndarray, alpha: float = 0.01) -> tuple[float, dict[str, Any], np.ndarray]:
    """Scale the median layer's weights (so every quantile's shift) by a in [0, 1]: the least-squares factor
    between the median's move and the realised move on ALL validation samples, kept only when the shrunk
    median's squared error in price units (~ last close^2 x error^2) beats persistence's on the validation
    dates significantly (Diebold-Mariano, one-sided, ``alpha``); else a = 0 and the point forecast is the last
    close. ``pred``: the model's validation predictions (:func:`predict`) before. Returns (a, the validation
    test's figures, the shrunk model's validation predictions: every quantile moved by (a - 1) x median)."""
    med = pred[:, 2] if len(y_val) else np.zeros(0)
    yp, pp = allreduce_sum(hvd_tf, [np.sum(y_val * med), np.sum(med * med)])
    a = float(np.clip(yp / pp, 0.0, 1.0)) if pp > 0 else 0.0
    w = np.square(np.asarray(val_last, dtype=np.float64))
    y = np.asarray(y_val, dtype=np.float64)
    loss_a, loss_b, times = allgather_arrays(hvd_tf, w * np.square(a * med - y), w * np.square(y),
                                             np.asarray(val_ends, dtype=np.int64))
    dm = diebold_mariano(loss_a, loss_b, times)
    better_p = 1.0 - dm["pvalue_worse"]  # one-sided: H1 the shrunk median beats persistence
    test = {"factor": a, "dm_stat": dm["stat"], "pvalue_better": better_p, "kept": better_p < alpha}
    if not test["kept"]:
        a = 0.0
    layer = model.get_layer("median")  # linear: scaling its weights scales the median's move
    layer.set_weights([wt * a for wt in layer.get_weights()])
    # Both heads add the median to every quantile (minutecast.model), so the outputs move by (a - 1) x median.
    return a, test, pred + (a - 1.0) * pred[:, 2:3]


def fit_bucket_scales(hvd_tf: Any, pred: np.ndarray, y_val: np.ndarray, val_ends: np.ndarray,
                      target_scale: float) -> np.ndarray:
    """Time-of-day interval scales (N_BUCKETS, 2) from ALL ranks' validation predictions ``pred`` (split
    conformal: :func:`minutecast.intervals.bucket_scales`), the same on every rank."""
    log_q = np.sort(pred, axis=1) * target_scale
    scores = interval_scores(log_q, np.asarray(y_val, dtype=np.float64) * target_scale)
    return bucket_scales(*allgather_arrays(hvd_tf, scores, bucket_index(np.asarray(val_ends, dtype=np.int64))))
