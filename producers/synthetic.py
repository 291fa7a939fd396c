"""Synthetic bars: geometric Brownian motion with a U-shaped intraday volume profile.

Deterministic by seed: ticker ``i`` draws from its own generator seeded ``(seed, i)``, so a ticker's
path does not depend on how many tickers or processes there are. Minutes are regular-hours minutes
(09:30-15:59 New York, Monday to Friday; holidays are not modelled).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd

from minutecast.window import SESSION_TZ
from producers.bars import COLUMNS

SESSION_MINUTES = 390  # 09:30 .. 15:59
MINUTES_PER_YEAR = 252 * SESSION_MINUTES


def synthetic_tickers(n: int) -> list[str]:
    """``S00000`` .. : names that pass the ticker schema, for any n up to 100,000."""
    return [f"S{i:05d}" for i in range(n)]


def session_open(d: date) -> int:
    """Epoch seconds of 09:30 New York on ``d``."""
    return int(datetime.combine(d, time(9, 30), tzinfo=SESSION_TZ).timestamp())


def regular_minutes(count: int, end: float | None = None) -> np.ndarray:
    """The last ``count`` completed regular-hours minutes before ``end`` (epoch s; default now), ascending."""
    end_s = datetime.now(UTC).timestamp() if end is None else end
    day = datetime.fromtimestamp(end_s, SESSION_TZ).date()
    out: list[np.ndarray] = []
    need = count
    while need > 0:
        if day.weekday() < 5:
            start = session_open(day)
            mins = start + 60 * np.arange(SESSION_MINUTES, dtype=np.int64)
            mins = mins[mins + 60 <= end_s]  # completed minutes only
            take = mins[-need:] if len(mins) > need else mins
            out.append(take)
            need -= len(take)
        day -= timedelta(days=1)
    return np.concatenate(out[::-1]) if out else np.zeros(0, dtype=np.int64)


def volume_profile(minute_of_session: np.ndarray) -> np.ndarray:
    """U shape: about 4x the midday volume at the open, 3x at the close."""
    x = minute_of_session / (SESSION_MINUTES - 1)
    return 1.0 + 3.0 * np.exp(-x / 0.04) + 2.0 * np.exp(-(1.0 - x) / 0.05)


class Synthetic:
    """Bars for ``tickers`` (names) whose indices in the full universe are ``indices``."""

    def __init__(self, tickers: Sequence[str], indices: Sequence[int], seed: int = 0) -> None:
        self.tickers = list(tickers)
        self.rngs = [np.random.default_rng([seed, int(i)]) for i in indices]
        first = [rng.random(3) for rng in self.rngs]
        self.price = np.array([float(np.exp(rng_u[0] * np.log(500.0)) * 10.0) for rng_u in first])  # $10-$5000
        self.sigma = np.array([0.15 + 0.6 * u[1] for u in first]) / np.sqrt(MINUTES_PER_YEAR)  # per minute
        self.base_volume = np.array([2_000 + 50_000 * u[2] ** 2 for u in first])  # shares/minute at midday

    def frame(self, minutes: np.ndarray) -> pd.DataFrame:
        """Bars for ``minutes`` (ascending regular-hours minutes), in event-time order; advances the paths."""
        n_t, n_m = len(self.tickers), len(minutes)
        local = pd.to_datetime(minutes, unit="s", utc=True).tz_convert(SESSION_TZ)
        mos = ((local.hour - 9) * 60 + local.minute - 30).to_numpy()
        profile = volume_profile(mos)
        z = np.empty((n_t, n_m, 4))
        for k, rng in enumerate(self.rngs):
            z[k] = rng.standard_normal((n_m, 4))
        sig = self.sigma[:, None]
        # Per minute: open = previous close, close from GBM, wicks a fraction of sigma beyond.
        log_ret = -0.5 * sig**2 + sig * z[:, :, 0]
        close = self.price[:, None] * np.exp(np.cumsum(log_ret, axis=1))
        open_ = np.concatenate([self.price[:, None], close[:, :-1]], axis=1)
        hi = np.maximum(open_, close) * (1.0 + 0.5 * sig * np.abs(z[:, :, 1]))
        lo = np.minimum(open_, close) * (1.0 - 0.5 * sig * np.abs(z[:, :, 2]))
        vol = np.round(self.base_volume[:, None] * profile[None, :] * np.exp(0.5 * z[:, :, 3]))
        self.price = close[:, -1].copy()
        r = lambda a: np.round(a, 4)  # noqa: E731 - cents and sub-cents, like real quotes
        o, h, lw, c = r(open_), r(hi), r(lo), r(close)
        h = np.maximum.reduce([h, o, c])  # rounding must not push open/close outside [low, high]
        lw = np.minimum.reduce([lw, o, c])
        # Minute-major order (event time): transpose (tickers, minutes) -> (minutes, tickers).
        return pd.DataFrame({
            "ticker": np.tile(np.array(self.tickers, dtype=object), n_m),
            "minute": np.repeat(minutes.astype(np.int64), n_t),
            "open": o.T.ravel(), "high": h.T.ravel(), "low": lw.T.ravel(), "close": c.T.ravel(),
            "volume": vol.T.ravel(),
        })[COLUMNS]

    def frames(self, minutes: np.ndarray, chunk_minutes: int = 30) -> Iterator[pd.DataFrame]:
        for a in range(0, len(minutes), chunk_minutes):
            yield self.frame(minutes[a:a + chunk_minutes])
