"""Synthetic 1-minute bars with the recorded data's shape, for the trainer's memory benchmark at any universe size.

    python -m benchmarks.training --rss-only --tickers 503 --days 45     # writes them on first use

Shape of ``../shared/data/bars-1m`` (20 tickers, Q4 2025): every New York session (weekdays, no exchange
holidays, early closes at 13:00) with its regular hours complete but for rare missing minutes and a few
short halts, and sparse pre-market (04:00-09:29) and post-market (close-19:59) bars whose density differs by
ticker (most liquid ~70% of those minutes, least ~10%). Prices: a random walk with the intraday U-shaped
volatility and an overnight gap; OHLC consistent; volume log-normal, lower outside regular hours. One Parquet
file per ticker (``ticker, minute, open, high, low, close, volume``; the replay loader's layout), the market
ticker ``SPY`` first. Written once under ``<tmp>/minutecast-bench-bars/<N>x<D>-v1`` and reused.
"""

from __future__ import annotations

import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from minutecast.window import SESSION_TZ, close_minute

FIRST_DAY = date(2025, 9, 2)  # 45 sessions reach into November: a DST change and the 13:00 close of 11-28
HOLIDAYS = {date(2025, 11, 27), date(2025, 12, 25), date(2026, 1, 1), date(2026, 1, 19), date(2026, 2, 16)}
VERSION = "v1"  # bump when the shape changes (cached files are keyed by it)


def sessions(n: int) -> list[date]:
    out: list[date] = []
    d = FIRST_DAY
    while len(out) < n:
        if d.weekday() < 5 and d not in HOLIDAYS:
            out.append(d)
        d += timedelta(days=1)
    return out


def _day_minutes(d: date) -> tuple[np.ndarray, int, int]:
    """Every minute 04:00..19:59 New York of ``d`` (epoch s), and the indexes of 09:30 and of the close."""
    start = int(datetime(d.year, d.month, d.day, 4, 0, tzinfo=SESSION_TZ).timestamp())
    m = start + 60 * np.arange(16 * 60)
    close = int(close_minute(m[:1])[0])
    return m, 330, close - 240  # 09:30 is 330 minutes after 04:00


def ticker_bars(ticker: str, days: list[date], rng: np.random.Generator) -> pa.Table:
    density = rng.uniform(0.1, 0.75)  # share of extended-hours minutes with a trade
    price = float(rng.uniform(10.0, 500.0))
    parts = []
    for d in days:
        m, open_i, close_i = _day_minutes(d)
        keep = rng.random(m.size) < density
        keep[open_i:close_i] = rng.random(close_i - open_i) > 0.002  # regular hours: complete but for a few
        if rng.random() < 0.03:  # a short halt
            h = int(rng.integers(open_i, close_i - 15))
            keep[h:h + int(rng.integers(6, 15))] = False
        idx = np.flatnonzero(keep)
        mod = idx - open_i
        sd = 4e-4 * (1.0 + 2.0 * np.exp(-np.clip(mod, 0, None) / 30.0)
                     + 1.5 * np.exp(-np.clip(close_i - 1 - idx, 0, None) / 15.0))
        sd = np.where((idx < open_i) | (idx >= close_i), 2.5e-4, sd)
        r = rng.normal(0.0, sd)
        r[0] += rng.normal(0.0, 0.01)  # the overnight gap
        close = price * np.exp(np.cumsum(r))
        open_ = np.r_[price, close[:-1]]
        wiggle = np.abs(rng.normal(0.0, 2e-4, (2, idx.size)))
        high = np.maximum(open_, close) * (1.0 + wiggle[0])
        low = np.minimum(open_, close) * (1.0 - wiggle[1])
        vol = np.round(rng.lognormal(np.where((idx < open_i) | (idx >= close_i), 6.0, 9.0), 1.0))
        parts.append((m[idx], open_, high, low, close, vol))
        price = float(close[-1])
    cols = [np.concatenate([p[k] for p in parts]) for k in range(6)]
    return pa.table({"ticker": pa.array([ticker] * cols[0].size, pa.string()), "minute": cols[0],
                     "open": cols[1], "high": cols[2], "low": cols[3], "close": cols[4], "volume": cols[5]})


def names(n: int) -> list[str]:
    return ["SPY", *(f"T{i:04d}" for i in range(1, n))]


def synthetic_bars(n_tickers: int, n_days: int, seed: int = 0, root: Path | None = None) -> Path:
    """The directory of ``n_tickers`` x ``n_days`` synthetic bars (written on first use)."""
    out = (root or Path(tempfile.gettempdir()) / "minutecast-bench-bars") / f"{n_tickers}x{n_days}-{VERSION}"
    if (out / "COMPLETE").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    days = sessions(n_days)
    rng = np.random.default_rng(seed)
    for t in names(n_tickers):
        pq.write_table(ticker_bars(t, days, rng), out / f"{t}.parquet")
    (out / "COMPLETE").write_text(f"{n_tickers} tickers x {n_days} sessions from {days[0]} to {days[-1]}\n")
    return out
