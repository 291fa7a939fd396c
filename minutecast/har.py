"""The HAR-style baseline: a pooled log-volatility regression any model must beat (issue #25).

After Corsi's HAR-RV and the intraday versions of Engle & Sokalska (2012): the 5-minute move's scale is
regressed, pooled over every ticker, on several horizons of realised volatility, the bar range, the market's
volatility and a diurnal factor. Everything it reads is in the model's raw 60-minute window
(:mod:`minutecast.window`), so training, evaluation and serving compute it from the same array:

* ``log rv_h``: log RMS of the last ``h`` one-minute log returns, h in :data:`HORIZONS` (5, 15, 60 minutes;
  returns across a collapsed gap left out), times sqrt(HORIZON);
* ``log range``: log mean of log(high/low) over the last 15 real bars (Parkinson's range, per minute);
* ``log mkt_h``: the market ticker's RMS one-minute return over its last 15 and 60 bars;
* ``gap``: 1 when the window holds a collapsed gap (the session began inside it: the opening minutes);
* the diurnal factor: one intercept per 15-minute bucket of the regular session (its first one is the open),
  and one for outside regular hours, by New York wall clock.

The previous session's realised variance is not in a 60-minute window; the gap flag and the first buckets
stand in for it. Target: ``log(|m| + KAPPA * rv_60)`` with ``m`` the 5-minute log move (the floor keeps flat
minutes of illiquid tickers from dominating a log fit). Fitted by least squares from running sums
(:class:`HarFit`: X'X and X'y, so training data is streamed in chunks and memory stays fixed). The fitted
``exp(prediction)`` is a scale; the quantiles are ``z_q * c * scale`` with ``c`` per level chosen on the
training dates so that coverage there is nominal (:func:`minutecast.intervals.scale_from_ratios`), then
served through the same online calibration as every forecaster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minutecast import window as W
from minutecast.errors import ModelError
from minutecast.intervals import Z, pinball_sum, scale_from_ratios

HORIZONS = (5, 15, 60)  # minutes of realised volatility (the window's last h slots)
MKT_HORIZONS = (15, 60)
RANGE_SLOTS = 15  # bars averaged for the range feature
BUCKET_MIN = 15  # minutes per diurnal bucket
N_DIURNAL = (W.CLOSE_MIN - W.OPEN_MIN) // BUCKET_MIN + 1  # 26 regular-session buckets + "outside regular hours"
FEATURES = (*(f"log_rv{h}" for h in HORIZONS), "log_range", *(f"log_mkt{h}" for h in MKT_HORIZONS), "gap",
            *(f"diurnal{b}" for b in range(N_DIURNAL)))
N_FEATURES = len(FEATURES)
FLOOR = 1e-6  # log-return floor inside logs (0.01 bp): a flat window's volatility
KAPPA = 0.1  # the target's floor, in units of rv_60: |m| + KAPPA * rv_60
RIDGE = 1e-9  # relative ridge on X'X (a bucket no training sample fell in keeps a finite, tiny coefficient)
SPEC = f"har-v1:{','.join(FEATURES)}:kappa={KAPPA}"


def _rms(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    n = ok.sum(axis=-1)
    return np.sqrt(np.where(ok, x * x, 0.0).sum(axis=-1) / np.maximum(n, 1))


def _log(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(x, 0.0) + FLOOR)


def diurnal_bucket(minutes: np.ndarray) -> np.ndarray:
    """As-of epoch minutes (N,) -> diurnal bucket 0..N_DIURNAL-1 (the last: outside regular hours)."""
    mod = W.minute_of_day(minutes)
    b = np.clip((mod - W.OPEN_MIN) // BUCKET_MIN, 0, N_DIURNAL - 2)
    return np.where(W.regular_hours(minutes), b, N_DIURNAL - 1)


def design(windows: np.ndarray) -> np.ndarray:
    """Raw windows (N, WINDOW, N_COLUMNS) -> regressors (N, N_FEATURES) float64."""
    w = np.asarray(windows, dtype=np.float64)
    r = np.log(w[..., W.C] / w[..., W.PREV])
    ok = w[..., W.GAP] == 0
    sqrt_h = np.sqrt(W.HORIZON)
    cols = [_log(_rms(r[:, -h:], ok[:, -h:]) * sqrt_h) for h in HORIZONS]
    real = w[:, -RANGE_SLOTS:, W.FILLED] == 0
    rng = np.log(w[:, -RANGE_SLOTS:, W.H] / w[:, -RANGE_SLOTS:, W.L])
    cols.append(_log(np.where(real, rng, 0.0).sum(axis=1) / np.maximum(real.sum(axis=1), 1) * sqrt_h))
    mkt_ok = w[..., W.MKT_BAR] != 0
    cols += [_log(_rms(w[:, -h:, W.MKT_RET], mkt_ok[:, -h:]) * sqrt_h) for h in MKT_HORIZONS]
    cols.append((~ok).any(axis=1).astype(np.float64))
    dummies = np.zeros((len(w), N_DIURNAL))
    if len(w):
        dummies[np.arange(len(w)), diurnal_bucket(w[:, -1, W.MINUTE].astype(np.int64))] = 1.0
    return np.column_stack([*cols, dummies]) if len(w) else np.zeros((0, N_FEATURES))


def target(windows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The regression target (N,): log(|5-minute log move| + KAPPA * rv_60)."""
    w = np.asarray(windows, dtype=np.float64)
    move = np.log(np.asarray(targets, dtype=np.float64) / w[:, -1, W.C])
    rv60 = _rms(np.log(w[..., W.C] / w[..., W.PREV]), w[..., W.GAP] == 0) * np.sqrt(W.HORIZON)
    return np.log(np.abs(move) + KAPPA * rv60 + FLOOR)


@dataclass
class HarFit:
    """Running sums of a least-squares fit, fed chunk by chunk (memory: N_FEATURES^2 floats)."""

    xtx: np.ndarray = field(default_factory=lambda: np.zeros((N_FEATURES, N_FEATURES)))
    xty: np.ndarray = field(default_factory=lambda: np.zeros(N_FEATURES))
    n: int = 0

    def add(self, windows: np.ndarray, targets: np.ndarray) -> None:
        """Account training samples: raw windows (N, WINDOW, N_COLUMNS) and their target closes (N,)."""
        x, y = design(windows), target(windows, targets)
        keep = np.isfinite(y) & np.isfinite(x).all(axis=1)
        x, y = x[keep], y[keep]
        self.xtx += x.T @ x
        self.xty += x.T @ y
        self.n += int(len(y))

    def to_vector(self) -> np.ndarray:
        """The sums as one vector (to add them over Horovod ranks with one allreduce)."""
        return np.concatenate([self.xtx.ravel(), self.xty, [float(self.n)]])

    @classmethod
    def from_vector(cls, v: np.ndarray) -> HarFit:
        k = N_FEATURES
        return cls(np.asarray(v[:k * k], dtype=np.float64).reshape(k, k).copy(), np.asarray(v[k * k:k * k + k],
                   dtype=np.float64).copy(), int(round(float(v[-1]))))

    def solve(self) -> np.ndarray:
        """The coefficients (N_FEATURES,); ModelError when no sample was added."""
        if self.n == 0:
            raise ModelError("the HAR baseline has no training samples to fit")
        ridge = RIDGE * max(float(np.trace(self.xtx)) / N_FEATURES, 1e-12)
        return np.linalg.solve(self.xtx + ridge * np.eye(N_FEATURES), self.xty)

    def har(self) -> Har:
        """The fitted baseline, its levels' scales still (1, 1) (:meth:`Har.calibrated` sets them)."""
        return Har(tuple(float(c) for c in self.solve()))


@dataclass(frozen=True)
class Har:
    """A fitted HAR baseline: coefficients and the per-level scale (c80, c90) fitted on the training dates."""

    coef: tuple[float, ...]
    scale: tuple[float, float] = (1.0, 1.0)

    def sigma(self, windows: np.ndarray) -> np.ndarray:
        """The fitted 5-minute scale (N,) of each window (before the level's scale ``c``)."""
        return np.exp(design(windows) @ np.asarray(self.coef))

    def ratios(self, windows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """|log move| / sigma of each sample (what :func:`calibrated` fits the levels' scales on)."""
        move = np.abs(np.log(np.asarray(targets, dtype=np.float64) / np.asarray(windows)[:, -1, W.C]))
        s = self.sigma(windows)
        ok = np.isfinite(move) & (s > 0)
        return move[ok] / s[ok]

    def calibrated(self, ratios: np.ndarray) -> Har:
        """The same fit with the levels' scales at which it covers its levels of the samples behind ``ratios``."""
        return Har(self.coef, scale_from_ratios(ratios))

    def log_quantiles(self, windows: np.ndarray) -> np.ndarray:
        """Log-return quantiles (N, 5), the median 0 (like the window-vol baseline's)."""
        c = np.array([self.scale[1], self.scale[0], 0.0, self.scale[0], self.scale[1]])
        return self.sigma(windows)[:, None] * Z[None, :] * c[None, :]

    def to_dict(self) -> dict[str, Any]:
        return {"spec": SPEC, "coef": [float(c) for c in self.coef], "scale": [float(s) for s in self.scale]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Har:
        if d.get("spec") != SPEC or len(d.get("coef", ())) != N_FEATURES:
            raise ModelError(f"HAR baseline of another specification ({d.get('spec')!r}, want {SPEC!r}): refit it")
        return cls(tuple(float(c) for c in d["coef"]), (float(d["scale"][0]), float(d["scale"][1])))


def fit(chunks: Any) -> Har:
    """Fit and calibrate on training chunks (an iterable of ``(windows, targets)`` that can be iterated twice:
    the coefficients from the first pass, the levels' scales from the second)."""
    f = HarFit()
    for windows, targets in chunks:
        f.add(windows, targets)
    har = f.har()
    ratios = [har.ratios(w, t) for w, t in chunks]
    return har.calibrated(np.concatenate(ratios) if ratios else np.zeros(0))


def blend(model_log_q: np.ndarray, har_log_q: np.ndarray, weight: float, regular: np.ndarray) -> np.ndarray:
    """A model's log quantiles (N, 5) averaged with the HAR baseline's (N, 5) about the model's median, in
    regular hours (``regular`` (N,) bool; outside them the model's alone: the HAR fit saw no such minute):
    ``median + weight * (q - median) + (1 - weight) * q_har``. Quantile averaging (Vincentization) of two
    forecasts with different errors scores better than either (the weight is fitted on the validation dates:
    :func:`fit_weight`); the median, the point forecast, is the model's."""
    q = np.asarray(model_log_q, dtype=np.float64)
    if weight >= 1.0 or not len(q):
        return q
    med = q[:, 2:3]
    mixed = med + weight * (q - med) + (1.0 - weight) * np.asarray(har_log_q, dtype=np.float64)
    return np.where(np.asarray(regular, dtype=bool)[:, None], mixed, q)


WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)  # the grid the blend's weight is chosen on


def pinball_by_weight(model_log_q: np.ndarray, har_log_q: np.ndarray, moves: np.ndarray,
                      regular: np.ndarray) -> np.ndarray:
    """Summed pinball loss (over the five levels and the regular-hours samples) of :func:`blend` at each
    weight of :data:`WEIGHTS`: (len(WEIGHTS),) sums, to add over ranks before :func:`fit_weight`."""
    reg = np.asarray(regular, dtype=bool)
    q, h, y = np.asarray(model_log_q)[reg], np.asarray(har_log_q)[reg], np.asarray(moves, dtype=np.float64)[reg]
    every = np.ones(len(q), dtype=bool)
    return np.array([pinball_sum(blend(q, h, float(wt), every), y) for wt in WEIGHTS])


def fit_weight(losses: np.ndarray) -> float:
    """The weight of :data:`WEIGHTS` with the least summed validation pinball loss (1.0, the model alone, on
    ties and when there was nothing to score)."""
    losses = np.asarray(losses, dtype=np.float64)
    if not np.isfinite(losses).all() or losses[-1] <= 0:
        return 1.0
    return float(WEIGHTS[int(np.flatnonzero(losses <= losses.min())[-1])])
