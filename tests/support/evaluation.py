"""Synthetic evaluation inputs: random-walk bars with a known intraday volatility shape on a few sessions
(one with an early close), and a fake model that knows that shape (for the evaluation and README tests)."""

from __future__ import annotations

from datetime import datetime

import numpy as np

from minutecast.intervals import Z
from minutecast.window import HORIZON, MINUTE, SESSION_TZ, close_minute, minute_of_day, slots, with_market
from training.data import Samples

DAYS = ("2025-11-24", "2025-11-25", "2025-11-26", "2025-11-28", "2025-12-01", "2025-12-02")  # 11-28: 13:00 close


def session_minutes(day: str, skip: tuple[str, ...] = ()) -> np.ndarray:
    """Epoch seconds of every regular-hours minute of ``day`` (YYYY-MM-DD), less ``skip`` (HH:MM)."""
    open_ = int(datetime.fromisoformat(f"{day}T09:30").replace(tzinfo=SESSION_TZ).timestamp())
    n = int(close_minute(np.array([open_]))[0]) - 570
    m = open_ + 60 * np.arange(n)
    drop = [int(datetime.fromisoformat(f"{day}T{hm}").replace(tzinfo=SESSION_TZ).timestamp()) for hm in skip]
    return m[~np.isin(m, drop)]


def true_sigma(minutes: np.ndarray) -> np.ndarray:
    """Per-minute log-return std of the synthetic market: an intraday U shape (high at the open/close)."""
    mod = minute_of_day(minutes)
    close = close_minute(minutes)
    return 4e-4 * (1.0 + 2.0 * np.exp(-(mod - 570) / 30.0) + 1.5 * np.exp(-(close - 1 - mod) / 15.0))


def synthetic(tickers: tuple[str, ...] = ("AAA", "BBB"), seed: int = 7) -> tuple[Samples, dict[str, np.ndarray]]:
    """Random-walk bars with the U-shaped volatility on DAYS' regular hours; every ready window with a
    target, market context from the first ticker. Returns the samples and each ticker's bar minutes."""
    rng = np.random.default_rng(seed)
    minutes = np.concatenate([session_minutes(d) for d in DAYS])
    series, parts = {}, []
    for k, t in enumerate(tickers):
        close = 50.0 * (k + 1) * np.exp(np.cumsum(rng.normal(0.0, true_sigma(minutes))))
        ohlcv = np.stack([close, close * 1.0003, close * 0.9997, close, np.full(close.size, 1e4)], axis=1)
        series[t] = slots(minutes, ohlcv)
    market = series[tickers[0]]
    for t, s in series.items():
        bars = s.ready()
        tg = s.targets(bars)
        keep = bars[np.isfinite(tg)]
        parts.append(Samples(np.full(keep.size, t), s.minutes[keep], with_market(s.windows(keep), market),
                             tg[np.isfinite(tg)]))
    return Samples.concat(parts), {t: minutes for t in tickers}


class FakeModel:
    """Knows the volatility's intraday shape exactly; ``width`` scales its intervals (1 = calibrated)."""

    def __init__(self, width: float, version: str = "fake", bias: float = 0.0) -> None:
        self.version, self.width, self.bias = version, width, bias

    def predict_log_quantiles(self, windows: np.ndarray) -> np.ndarray:
        t = windows[:, -1, MINUTE].astype(np.int64)
        ahead = t[:, None] + 60 * np.arange(1, HORIZON + 1)
        sd5 = np.sqrt(np.sum(true_sigma(ahead.ravel()).reshape(ahead.shape) ** 2, axis=1))
        return self.bias + self.width * sd5[:, None] * Z[None, :]
