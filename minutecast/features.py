"""Feature normalisation: the one function that turns raw windows into model inputs.

Training and serving both call :func:`make_inputs` with a :class:`Scaler` fitted on the training
period only and saved inside every model, so the two cannot drift apart.

Inputs per minute: ``close / close_t - 1`` (relative to the window's last close; scale-free across
tickers) divided by ``ret_scale``, and ``log1p(volume)`` standardised. The target is the relative
move ``close_{t+5} / close_t - 1`` divided by ``target_scale``; a forecast of 0 is persistence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from minutecast.window import HORIZON, WINDOW

FEATURES = ("close_rel", "log_volume")
N_FEATURES = len(FEATURES)
# Bump when anything below changes meaning: models record it and the registry refuses a mismatch.
FEATURE_SPEC = f"v1:{','.join(FEATURES)}:window={WINDOW}:horizon={HORIZON}"


@dataclass(frozen=True)
class Scaler:
    ret_scale: float  # std of close/close_t - 1 over training windows
    logvol_mean: float  # mean of log1p(volume) over training windows
    logvol_std: float
    target_scale: float  # std of close_{t+5}/close_t - 1 over training samples

    @classmethod
    def fit(cls, windows: np.ndarray, target_close: np.ndarray) -> Scaler:
        """Fit on training windows (N, WINDOW, 2) and their target closes (N,)."""
        last = windows[:, -1:, 0]
        rel = windows[:, :, 0] / last - 1.0
        logv = np.log1p(windows[:, :, 1])
        tgt = target_close / windows[:, -1, 0] - 1.0
        return cls(
            ret_scale=float(max(rel.std(), 1e-6)),
            logvol_mean=float(logv.mean()),
            logvol_std=float(max(logv.std(), 1e-6)),
            target_scale=float(max(tgt.std(), 1e-6)),
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(**{k: float(d[k]) for k in ("ret_scale", "logvol_mean", "logvol_std", "target_scale")})


def make_inputs(windows: np.ndarray, scaler: Scaler) -> np.ndarray:
    """Raw windows (N, WINDOW, 2) [close, volume] -> model inputs (N, WINDOW, 2) float32."""
    w = np.asarray(windows, dtype=np.float64)
    out = np.empty(w.shape, dtype=np.float32)
    out[:, :, 0] = (w[:, :, 0] / w[:, -1:, 0] - 1.0) / scaler.ret_scale
    out[:, :, 1] = (np.log1p(w[:, :, 1]) - scaler.logvol_mean) / scaler.logvol_std
    return out


def make_targets(windows: np.ndarray, target_close: np.ndarray, scaler: Scaler) -> np.ndarray:
    """Scaled relative move to the target close: (N,) float32."""
    return ((np.asarray(target_close) / windows[:, -1, 0] - 1.0) / scaler.target_scale).astype(np.float32)


def to_price(pred: np.ndarray, last_close: np.ndarray, scaler: Scaler) -> np.ndarray:
    """Model outputs (N,) or (N, 1) -> forecast closes (N,) in price units."""
    return np.asarray(last_close, dtype=np.float64) * (
        1.0 + np.asarray(pred, dtype=np.float64).reshape(-1) * scaler.target_scale)
