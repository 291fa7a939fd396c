"""A loaded, validated model serving batched inference: raw windows in, log quantiles of the 5-minute move out.

:meth:`minutecast.registry.Registry.load` builds one from a checked registry version (training and the
benchmarks build one around a model in memory). The network itself is :mod:`minutecast.model`; the inputs and
the way back to log moves are :mod:`minutecast.features`. TensorFlow is imported when one is built, not when
this module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minutecast.errors import ModelError
from minutecast.features import N_FEATURES, Scaler, make_inputs, to_log_moves
from minutecast.har import Har, blend
from minutecast.intervals import N_BUCKETS, apply_bucket_scales
from minutecast.schemas import QUANTILES
from minutecast.window import MINUTE, N_COLUMNS, WINDOW, regular_hours

N_OUTPUTS = len(QUANTILES)


@dataclass
class ServingModel:
    """A loaded, validated model ready for batched inference."""

    version: str
    kind: str
    scaler: Scaler
    meta: dict[str, Any]
    keras_model: Any = field(repr=False)
    _fn: Any = field(default=None, repr=False)
    # (N_BUCKETS, 2) time-of-day interval scales fitted on the validation dates (None: raw intervals)
    bucket_scales: np.ndarray | None = field(default=None, repr=False)
    # The HAR baseline its quantiles are averaged with (meta "har") and the model's weight ("har_weight",
    # fitted on the validation dates; :func:`minutecast.har.blend`); None: the model's quantiles alone
    har: Har | None = field(default=None, repr=False)
    har_weight: float = 1.0

    def __post_init__(self) -> None:
        import tensorflow as tf

        scales = self.meta.get("bucket_scales")
        if scales is not None:
            arr = np.asarray(scales, dtype=np.float64)
            if arr.shape != (N_BUCKETS, 2) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise ModelError(f"model {self.version}: bucket_scales must be {N_BUCKETS}x2 positive numbers")
            self.bucket_scales = arr
        weight = self.meta.get("har_weight")
        if weight is not None:
            if not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
                raise ModelError(f"model {self.version}: har_weight must be a number in [0, 1], got {weight!r}")
            if float(weight) < 1.0:
                self.har, self.har_weight = Har.from_dict(self.meta.get("har") or {}), float(weight)

        model = self.keras_model
        # One graph for every batch size: (None, WINDOW, N_FEATURES) float32 -> (None, N_OUTPUTS).
        self._fn = tf.function(lambda x: model(x, training=False),
                               input_signature=[tf.TensorSpec([None, WINDOW, N_FEATURES], tf.float32)])

    def predict_log_quantiles(self, windows: np.ndarray) -> np.ndarray:
        """Raw windows (N, WINDOW, N_COLUMNS) -> (N, 5) log moves log(close_{t+5}/close_t) at the levels of
        :data:`minutecast.schemas.QUANTILES`: the network's, averaged with the HAR baseline's in regular hours
        when the model has a weight for it, then the model's time-of-day scales (before the online calibration)."""
        w = np.asarray(windows, dtype=np.float64)
        if w.ndim != 3 or w.shape[1:] != (WINDOW, N_COLUMNS):
            raise ModelError(f"windows must have shape (N, {WINDOW}, {N_COLUMNS}), got {w.shape}")
        if w.shape[0] == 0:
            return np.empty((0, N_OUTPUTS), dtype=np.float64)

        out = to_log_moves(np.sort(self._fn(make_inputs(w, self.scaler)).numpy().astype(np.float64), axis=1),
                           self.scaler)
        minutes = w[:, -1, MINUTE].astype(np.int64)
        if self.har is not None:
            out = blend(out, self.har.log_quantiles(w), self.har_weight, regular_hours(minutes))
        return apply_bucket_scales(out, minutes, self.bucket_scales)
