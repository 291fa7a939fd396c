"""Keras callbacks and steps of training/train.py that every Horovod rank runs in lockstep.

Every decision (best epoch, early stop, the median's shrink factor) is taken on numbers allreduced over
all ranks, so all ranks decide the same.
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

from minutecast.schemas import QUANTILES

_LEVELS = np.asarray(QUANTILES, dtype=np.float64)
PREDICT_BATCH = 8192  # windows per predict call on validation samples


def pinball_sum(pred: np.ndarray, y: np.ndarray) -> float:
    """Sum over samples of the pinball loss summed over the five levels (target units)."""
    err = np.asarray(y, dtype=np.float64)[:, None] - np.asarray(pred, dtype=np.float64)
    return float(np.maximum(_LEVELS * err, (_LEVELS - 1.0) * err).sum())


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    if not len(x):
        return np.zeros((0, len(QUANTILES)))
    return np.asarray(model.predict(x, batch_size=PREDICT_BATCH, verbose=0), dtype=np.float64)


class GlobalValidation(tf.keras.callbacks.Callback):
    """Validation pinball loss over ALL ranks' validation samples (sums allreduced), best-weights tracking
    from epoch 0 (the untrained model) and early stopping; identical decisions on every rank."""

    def __init__(self, hvd_tf: Any, x_val: np.ndarray, y_val: np.ndarray, patience: int, log: Any = None) -> None:
        super().__init__()
        self.hvd, self.x, self.y, self.patience, self.log = hvd_tf, x_val, y_val, patience, log
        self.best, self.best_epoch, self.best_weights = math.inf, 0, None
        self.history: list[dict[str, Any]] = []
        self.n = float(hvd_tf.allreduce(tf.constant([float(len(y_val))], tf.float64), op=hvd_tf.Sum).numpy()[0])

    def val_pinball(self) -> float:
        total = pinball_sum(_predict(self.model, self.x), self.y)
        return float(self.hvd.allreduce(tf.constant([total], tf.float64), op=self.hvd.Sum).numpy()[0] / self.n)

    def track(self, epoch: int, logs: dict[str, Any]) -> None:
        loss = self.val_pinball()
        logs["val_pinball"] = loss
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


def shrink_median(model: Any, hvd_tf: Any, x_val: np.ndarray, y_val: np.ndarray, val_last: np.ndarray,
                  val_ends: np.ndarray, alpha: float = 0.01) -> tuple[float, dict[str, Any]]:
    """Scale the median layer's weights (so every quantile's shift) by a in [0, 1]: the least-squares factor
    between the median's move and the realised move on ALL validation samples, kept only when the shrunk
    median's squared error in price units (~ last close^2 x error^2) beats persistence's on the validation
    dates significantly (Diebold-Mariano, one-sided, ``alpha``); else a = 0 and the point forecast is the last
    close. Returns (a, the validation test's figures)."""
    from training.scoring import diebold_mariano

    med = _predict(model, x_val)[:, 2] if len(y_val) else np.zeros(0)
    yp, pp = hvd_tf.allreduce(tf.constant([np.sum(y_val * med), np.sum(med * med)], tf.float64),
                              op=hvd_tf.Sum).numpy()
    a = float(np.clip(yp / pp, 0.0, 1.0)) if pp > 0 else 0.0
    w = np.square(np.asarray(val_last, dtype=np.float64))
    y = np.asarray(y_val, dtype=np.float64)
    parts = hvd_tf.allgather_object((w * np.square(a * med - y), w * np.square(y), np.asarray(val_ends)))
    dm = diebold_mariano(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                         np.concatenate([p[2] for p in parts]))
    better_p = 1.0 - dm["pvalue_worse"]  # one-sided: H1 the shrunk median beats persistence
    test = {"factor": a, "dm_stat": dm["stat"], "pvalue_better": better_p, "kept": better_p < alpha}
    if not test["kept"]:
        a = 0.0
    layer = model.get_layer("median")  # linear: scaling its weights scales the median's move
    layer.set_weights([wt * a for wt in layer.get_weights()])
    return a, test


def fit_bucket_scales(model: Any, hvd_tf: Any, x_val: np.ndarray, y_val: np.ndarray, val_ends: np.ndarray,
                      target_scale: float) -> np.ndarray:
    """Time-of-day interval scales (N_BUCKETS, 2) from ALL ranks' validation samples (split conformal:
    :func:`minutecast.intervals.bucket_scales`), the same on every rank."""
    from minutecast.intervals import bucket_index, bucket_scales, interval_scores

    log_q = np.sort(_predict(model, x_val), axis=1) * target_scale
    scores = interval_scores(log_q, np.asarray(y_val, dtype=np.float64) * target_scale)
    parts = hvd_tf.allgather_object((scores, bucket_index(np.asarray(val_ends))))
    return bucket_scales(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
