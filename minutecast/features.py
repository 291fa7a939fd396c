"""Features: the one function that turns raw windows into model inputs, and the target's scale.

Training and serving both call :func:`make_inputs` on raw windows of :mod:`minutecast.window` with a
:class:`Scaler` fitted on the training period only and saved inside every model, so the two cannot
drift apart (``tests/test_training_parity.py`` checks it bit for bit).

Inputs per slot (:data:`FEATURES`): the 1-minute log return (0 across a collapsed gap) and its absolute
value, the log return across a collapsed gap (the overnight gap) and the gap flag, the filled flag,
the log high/low range, ``log1p(volume)`` standardised, minutes since the open and until the close of
the regular session (in sessions, negative outside it), and the market ticker's return, absolute return,
range and bar flag for the same minute. Returns and ranges are divided by their RMS on the training
windows and clipped to +-:data:`CLIP`. The target is the log move ``log(close_{t+5} / close_t)`` divided
by ``target_scale``; the model's outputs are quantiles of it (:data:`minutecast.schemas.QUANTILES`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from minutecast.errors import ModelError
from minutecast.window import (
    CLOSE_MIN,
    FILLED,
    GAP,
    HORIZON,
    MINUTE,
    MKT_BAR,
    MKT_RANGE,
    MKT_RET,
    OPEN_MIN,
    POLICY_VERSION,
    PREV,
    WINDOW,
    C,
    H,
    L,
    V,
    close_minute,
    minute_of_day,
)

FEATURES = ("ret", "abs_ret", "gap_ret", "gap", "filled", "range", "log_volume", "since_open", "to_close",
            "mkt_ret", "mkt_abs_ret", "mkt_range", "mkt_bar")
N_FEATURES = len(FEATURES)
SESSION_MIN = float(CLOSE_MIN - OPEN_MIN)  # 390 minutes: the time features' unit
CLIP = 10.0  # scaled returns and ranges beyond this many RMS are clipped (bad ticks, halts)
# Bump when anything below changes meaning: models record it and the registry refuses a mismatch.
FEATURE_SPEC = f"v2:{','.join(FEATURES)}:window={WINDOW}:horizon={HORIZON}:policy={POLICY_VERSION}"


def _parts(windows: np.ndarray) -> dict[str, np.ndarray]:
    """Unscaled per-slot quantities of raw windows (N, WINDOW, N_COLUMNS)."""
    w = np.asarray(windows, dtype=np.float64)
    r = np.log(w[..., C] / w[..., PREV])
    gap = w[..., GAP] != 0
    return {"ret": np.where(gap, 0.0, r), "gap_ret": np.where(gap, r, 0.0), "gap": gap,
            "range": np.log(w[..., H] / w[..., L]), "logv": np.log1p(w[..., V]),
            "mkt_ret": w[..., MKT_RET], "mkt_range": w[..., MKT_RANGE], "mkt_bar": w[..., MKT_BAR] != 0,
            "filled": w[..., FILLED] != 0}


@dataclass(frozen=True)
class Scaler:
    """Scales fitted on training windows (RMS for returns and ranges, mean/std for log volume)."""

    ret_scale: float  # RMS of in-session 1-minute log returns
    gap_scale: float  # RMS of log returns across collapsed gaps
    range_scale: float  # RMS of log(high/low) of real bars
    logvol_mean: float  # mean of log1p(volume) of real bars
    logvol_std: float
    mkt_ret_scale: float  # RMS of the market's 1-minute log returns (where it had one)
    mkt_range_scale: float  # RMS of the market's log(high/low)
    target_scale: float  # RMS of log(close_{t+5} / close_t) over training samples

    N_STATS = 15  # length of :meth:`stats`

    @staticmethod
    def stats(windows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Sufficient statistics (sums, so Horovod ranks can allreduce them): float64 (N_STATS,)."""
        if len(windows) == 0:
            return np.zeros(Scaler.N_STATS)
        p = _parts(windows)
        real = ~p["filled"]
        mkt = p["mkt_bar"]
        tgt = np.log(np.asarray(targets, dtype=np.float64) / np.asarray(windows)[:, -1, C])
        return np.array([
            (~p["gap"]).sum(), np.square(p["ret"]).sum(),
            p["gap"].sum(), np.square(p["gap_ret"]).sum(),
            real.sum(), np.square(np.where(real, p["range"], 0.0)).sum(),
            np.where(real, p["logv"], 0.0).sum(), np.square(np.where(real, p["logv"], 0.0)).sum(),
            mkt.sum(), np.square(np.where(mkt, p["mkt_ret"], 0.0)).sum(), np.square(p["mkt_range"]).sum(),
            tgt.size, np.square(tgt).sum(), 0.0, 0.0])

    @classmethod
    def from_stats(cls, stats: np.ndarray) -> Scaler:
        """Summed :meth:`stats` -> the Scaler (floors keep every scale positive)."""
        s = [float(x) for x in stats]
        if s[0] <= 0 or s[11] <= 0:
            raise ModelError("no training samples to fit the scaler on")

        def rms(sq: float, n: float) -> float:
            return max(float(np.sqrt(sq / n)) if n > 0 else 0.0, 1e-6)

        mean = s[6] / max(s[4], 1.0)
        return cls(ret_scale=rms(s[1], s[0]), gap_scale=rms(s[3], s[2]), range_scale=rms(s[5], s[4]),
                   logvol_mean=mean, logvol_std=max(float(np.sqrt(max(s[7] / max(s[4], 1.0) - mean * mean, 0.0))),
                                                    1e-6),
                   mkt_ret_scale=rms(s[9], s[8]), mkt_range_scale=rms(s[10], s[8]), target_scale=rms(s[12], s[11]))

    @classmethod
    def fit(cls, windows: np.ndarray, targets: np.ndarray) -> Scaler:
        return cls.from_stats(cls.stats(windows, targets))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(**{f.name: float(d[f.name]) for f in fields(cls)})


def make_inputs(windows: np.ndarray, scaler: Scaler) -> np.ndarray:
    """Raw windows (N, WINDOW, N_COLUMNS) -> model inputs (N, WINDOW, N_FEATURES) float32."""
    w = np.asarray(windows, dtype=np.float64)
    p = _parts(w)
    minutes = w[..., MINUTE].astype(np.int64)
    mod = minute_of_day(minutes)
    out = np.empty(w.shape[:-1] + (N_FEATURES,), dtype=np.float32)
    ret = np.clip(p["ret"] / scaler.ret_scale, -CLIP, CLIP)
    mret = np.clip(p["mkt_ret"] / scaler.mkt_ret_scale, -CLIP, CLIP)
    out[..., 0] = ret
    out[..., 1] = np.abs(ret)
    out[..., 2] = np.clip(p["gap_ret"] / scaler.gap_scale, -CLIP, CLIP)
    out[..., 3] = p["gap"]
    out[..., 4] = p["filled"]
    out[..., 5] = np.clip(p["range"] / scaler.range_scale, 0.0, CLIP)
    out[..., 6] = np.where(p["filled"], 0.0, (p["logv"] - scaler.logvol_mean) / scaler.logvol_std)
    out[..., 7] = (mod - OPEN_MIN) / SESSION_MIN
    out[..., 8] = (close_minute(minutes) - mod) / SESSION_MIN
    out[..., 9] = mret
    out[..., 10] = np.abs(mret)
    out[..., 11] = np.clip(p["mkt_range"] / scaler.mkt_range_scale, 0.0, CLIP)
    out[..., 12] = p["mkt_bar"]
    return out


def make_targets(windows: np.ndarray, target_close: np.ndarray, scaler: Scaler) -> np.ndarray:
    """Scaled log move to the target close: (N,) float32."""
    last = np.asarray(windows)[:, -1, C]
    return (np.log(np.asarray(target_close, dtype=np.float64) / last) / scaler.target_scale).astype(np.float32)


def to_log_moves(outputs: np.ndarray, scaler: Scaler) -> np.ndarray:
    """Model outputs (N, Q) in target units -> log moves (N, Q)."""
    return np.asarray(outputs, dtype=np.float64) * scaler.target_scale
