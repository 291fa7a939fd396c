"""Forecast intervals: the quantile levels, the window-volatility baseline and the online calibration.

Shared by serving (Spark), evaluation and the gate, so a subscriber sees what the report measured.

* **Levels.** :data:`minutecast.schemas.QUANTILES` (q05, q10, q50, q90, q95): the 80% interval is
  [q10, q90], the 90% interval [q05, q95]; q50 is the point forecast.
* **Baseline** (what any model must beat): the close at ``t`` times
  ``exp(z_q * c * sigma_1m * sqrt(HORIZON))`` with ``sigma_1m`` the sample std of the window's one-minute
  log returns (slots whose return crosses a collapsed gap excluded), ``z_q`` the normal quantile and
  ``c`` a scale: ``c = 1`` is the *naive* interval; the *calibrated* baseline has ``c`` per interval level
  chosen on the training dates so that its coverage there is nominal (:func:`fit_baseline_scale`).
* **Calibration by time of day** (split conformal, Mondrian by :data:`minutecast.window.BUCKETS` plus
  "outside regular hours"): a model's raw interval is widened or narrowed about its median by a scale per
  bucket and level, fitted on the *validation* dates so that each bucket's coverage there is nominal
  (:func:`bucket_scales`); saved in the model's metadata and applied by the serving model itself.
* **Online calibration** (adaptive conformal inference on the interval's scale, after Gibbs & Candes
  2021, per ticker and per level): every served interval is ``median + s * (raw - median)`` in log-price
  space. When a forecast's target close is known, ``log s += GAMMA * (miss - alpha)`` (miss = 1 when the
  close fell outside the *served* interval, alpha = 0.2 or 0.1), clipped to +-:data:`LOG_S_LIMIT`. The
  long-run miss rate of each ticker is then alpha whatever the raw model does. Updates are applied in
  target-minute order, each target once (``through`` = the newest target minute applied), so replays
  and evaluation in time order give the same served intervals. ``log s`` is kept float32-exact (rounded
  after each step; a step is 1e-3 to 9e-3, float32 keeps it to ~1e-7), so a forecast record stores it in
  4 bytes and reads it back bit for bit (:mod:`minutecast.forecast_lua`).
* **sigma** of a forecast is the std of the 5-minute log move its 80% interval implies,
  :func:`implied_sigma` of its served q10 and q90: a function of them, so the store does not keep it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from minutecast.schemas import QUANTILES
from minutecast.window import BUCKETS, GAP, HORIZON, PREV, C, time_buckets

# Normal quantiles of QUANTILES (scipy-free): z(0.05), z(0.10), 0, z(0.90), z(0.95).
Z = np.array([-1.6448536269514722, -1.2815515655446004, 0.0, 1.2815515655446004, 1.6448536269514722])
assert len(Z) == len(QUANTILES)
LEVELS = (0.8, 0.9)  # central intervals: 80% = (q10, q90), 90% = (q05, q95)
PAIRS = {0.8: (1, 3), 0.9: (0, 4)}  # level -> (lower, upper) column in the (N, 5) quantile arrays
GAMMA = 0.01  # step of the online scale update per realised forecast (log units)
Z90 = float(Z[3])  # z(0.90): half the 80% interval's width in stds
LOG_S_LIMIT = float(np.log(4.0))  # the online scale stays within [1/4, 4] of the raw interval


N_BUCKETS = len(BUCKETS) + 1  # the time-of-day buckets plus "outside regular hours" (the last row)
MIN_BUCKET_SAMPLES = 200  # fewer validation samples in a bucket: its scale stays 1


_LEVELS = np.asarray(QUANTILES, dtype=np.float64)


def bucket_index(minutes: np.ndarray) -> np.ndarray:
    """As-of minutes (N,) -> row of a (N_BUCKETS, 2) scale table."""
    b = time_buckets(minutes)
    return np.where(b < 0, N_BUCKETS - 1, b)


def pinball_sum(pred: np.ndarray, y: np.ndarray) -> float:
    """Sum over samples of the pinball loss summed over the five levels: quantiles ``pred`` (N, 5) of the
    values ``y`` (N,), in any one unit (the trainer's validation loss, the HAR average's weight)."""
    err = np.asarray(y, dtype=np.float64)[:, None] - np.asarray(pred, dtype=np.float64)
    return float(np.maximum(_LEVELS * err, (_LEVELS - 1.0) * err).sum())


def interval_scores(log_q: np.ndarray, move: np.ndarray) -> np.ndarray:
    """Conformity scores (N, 2) for the 80% and 90% intervals: the smallest scale about the median at which
    the interval would contain the realised log move (<= 1: covered as it is)."""
    q = np.asarray(log_q, dtype=np.float64)
    med, y = q[:, 2], np.asarray(move, dtype=np.float64)
    out = np.empty((len(q), 2))
    for k, level in enumerate(LEVELS):
        lo, hi = PAIRS[level]
        below = (med - y) / np.maximum(med - q[:, lo], 1e-12)
        above = (y - med) / np.maximum(q[:, hi] - med, 1e-12)
        out[:, k] = np.maximum(below, above)
    return out


def bucket_scales(scores: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """(N_BUCKETS, 2) scales: per bucket, the conformal quantile (finite-sample, level (n+1)/n-corrected) of
    the validation scores of each interval level; 1 where a bucket has too few samples."""
    out = np.ones((N_BUCKETS, 2))
    for b in range(N_BUCKETS):
        sb = scores[buckets == b]
        n = len(sb)
        if n < MIN_BUCKET_SAMPLES:
            continue
        for k, level in enumerate(LEVELS):
            out[b, k] = float(np.quantile(sb[:, k], min(1.0, level * (n + 1) / n), method="higher"))
    return np.clip(out, 0.25, 4.0)


def apply_bucket_scales(log_q: np.ndarray, minutes: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """Raw log quantiles (N, 5) of forecasts as of ``minutes`` (N,) -> scaled about the median per bucket."""
    q = np.asarray(log_q, dtype=np.float64)
    if scales is None or not len(q):
        return q
    s = np.asarray(scales, dtype=np.float64)[bucket_index(minutes)]  # (N, 2)
    med = q[:, 2:3]
    mult = np.stack([s[:, 1], s[:, 0], np.ones(len(q)), s[:, 0], s[:, 1]], axis=1)
    out = med + mult * (q - med)
    out[:, 0] = np.minimum(out[:, 0], out[:, 1])  # the 90% interval always contains the 80% one
    out[:, 4] = np.maximum(out[:, 4], out[:, 3])
    return out


def window_sigma(windows: np.ndarray) -> np.ndarray:
    """Std (ddof 1) of each raw window's 1-minute log returns, gap-crossing slots excluded: (N,)."""
    w = np.asarray(windows, dtype=np.float64)
    r = np.log(w[..., C] / w[..., PREV])
    ok = w[..., GAP] == 0
    n = ok.sum(axis=-1)
    mean = np.where(ok, r, 0.0).sum(axis=-1) / np.maximum(n, 1)
    var = np.where(ok, (r - mean[..., None]) ** 2, 0.0).sum(axis=-1) / np.maximum(n - 1, 1)
    return np.sqrt(var)


def baseline_log_quantiles(windows: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Log-return quantiles (N, 5) of the window-vol baseline; ``scale`` = (c for 80%, c for 90%)."""
    s5 = window_sigma(windows) * np.sqrt(HORIZON)
    c = np.array([scale[1], scale[0], 0.0, scale[0], scale[1]])
    return s5[:, None] * Z[None, :] * c[None, :]


def to_prices(log_q: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """Log-return quantiles (N, 5) -> price quantiles (N, 5)."""
    return np.asarray(last_close, dtype=np.float64)[:, None] * np.exp(log_q)


def baseline_ratios(windows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """|log move| / sigma_5m of each sample with a positive window sigma (what the baseline scale is fitted on)."""
    s5 = window_sigma(windows) * np.sqrt(HORIZON)
    move = np.abs(np.log(np.asarray(targets) / np.asarray(windows)[:, -1, C]))
    ok = np.isfinite(move) & (s5 > 0)
    return move[ok] / s5[ok]


def scale_from_ratios(ratios: np.ndarray) -> tuple[float, float]:
    """(c80, c90): the scale at which the baseline covers exactly its level of the samples behind ``ratios``."""
    if ratios.size == 0:
        return 1.0, 1.0
    return (float(np.quantile(ratios, 0.8) / Z[3]), float(np.quantile(ratios, 0.9) / Z[4]))


def fit_baseline_scale(windows: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """The calibrated baseline's (c80, c90) on these (training) samples."""
    return scale_from_ratios(baseline_ratios(windows, targets))


_F32 = struct.Struct("<f")


def f32(x: float) -> float:
    """``x`` rounded to the nearest float32, as a Python float (exact in both); OverflowError beyond float32."""
    return float(_F32.unpack(_F32.pack(x))[0])


def implied_sigma(q10: float, q90: float) -> float:
    """The std of ``log(close_{t+5} / close_t)`` implied by an 80% interval [q10, q90] in prices:
    ``(log q90 - log q10) / (2 z_0.9)``. The one definition: serving writes it, the forecast store
    recomputes it from the stored quantiles (scalar ``math.log``: the same bits on both sides)."""
    return (math.log(q90) - math.log(q10)) / (2 * Z90)


@dataclass
class OnlineScale:
    """One ticker's online calibration state (see the module docstring)."""

    log_s80: float = 0.0
    log_s90: float = 0.0
    through: int = 0  # newest target minute (epoch s) already applied

    def __post_init__(self) -> None:
        # float32-exact (module docstring) and within the limit, whatever text a store held
        self.log_s80, self.log_s90 = (f32(np.clip(x, -LOG_S_LIMIT, LOG_S_LIMIT)) for x in (self.log_s80, self.log_s90))

    def apply(self, log_q: np.ndarray) -> np.ndarray:
        """Raw log-return quantiles (5,) or (N, 5) -> served ones (same shape), never crossing."""
        q = np.asarray(log_q, dtype=np.float64)
        med = q[..., 2:3]
        s = np.array([np.exp(self.log_s90), np.exp(self.log_s80), 1.0, np.exp(self.log_s80), np.exp(self.log_s90)])
        out = med + s * (q - med)
        # the 90% interval always contains the 80% one
        out[..., 0] = np.minimum(out[..., 0], out[..., 1])
        out[..., 4] = np.maximum(out[..., 4], out[..., 3])
        return out

    def update(self, served_log_q: np.ndarray, realised_log_move: float, target_minute: int) -> bool:
        """Account one realised forecast (its served quantiles (5,) and the realised log move); False
        (nothing changed) when ``target_minute`` is not newer than :attr:`through`."""
        if target_minute <= self.through or not np.isfinite(realised_log_move):
            return False
        q = served_log_q
        miss80 = float(not (q[1] <= realised_log_move <= q[3]))
        miss90 = float(not (q[0] <= realised_log_move <= q[4]))
        self.log_s80 = f32(np.clip(self.log_s80 + GAMMA * (miss80 - 0.2), -LOG_S_LIMIT, LOG_S_LIMIT))
        self.log_s90 = f32(np.clip(self.log_s90 + GAMMA * (miss90 - 0.1), -LOG_S_LIMIT, LOG_S_LIMIT))
        self.through = int(target_minute)
        return True

    def to_dict(self) -> dict[str, float | int]:
        return {"log_s80": self.log_s80, "log_s90": self.log_s90, "through": self.through}

    @classmethod
    def from_dict(cls, d: dict[str, object] | None) -> OnlineScale:
        if not d:
            return cls()
        return cls(float(d.get("log_s80", 0.0)), float(d.get("log_s90", 0.0)),  # type: ignore[arg-type]
                   int(d.get("through", 0)))  # type: ignore[call-overload]


def calibrate_in_time_order(tickers: np.ndarray, ends: np.ndarray, raw_log_q: np.ndarray,
                            realised_log_move: np.ndarray) -> tuple[np.ndarray, dict[str, OnlineScale]]:
    """What subscribers were served: raw log quantiles (N, 5) of forecasts made at ``ends`` (as-of minutes)
    -> served ones, replaying each ticker's :class:`OnlineScale` in time order. A forecast's outcome is
    applied once its target minute (as-of + HORIZON) is not after the as-of minute of the forecast being
    served, exactly as the Spark job applies outcomes it can see in the window store."""
    served = np.empty_like(np.asarray(raw_log_q, dtype=np.float64))
    states: dict[str, OnlineScale] = {}
    for t in np.unique(tickers):
        idx = np.flatnonzero(tickers == t)
        idx = idx[np.argsort(ends[idx], kind="stable")]
        st = states[str(t)] = OnlineScale()
        targets = ends[idx] + 60 * HORIZON
        k = 0  # next forecast (in idx order) whose outcome is not yet applied
        for pos, i in enumerate(idx):
            while k < pos and targets[k] <= ends[i]:
                st.update(served[idx[k]], realised_log_move[idx[k]], int(targets[k]))
                k += 1
            served[i] = st.apply(raw_log_q[i])
    return served, states
