"""Inputs of the inference job as the pipeline writes them: deterministic bars in the Faust app's Redis
storage format, the window-ready events it publishes, and tiny saved models (random weights, fixed scaler).

Building a model imports TensorFlow: tests that call :func:`tiny_model_version` carry the ``tensorflow`` marker.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from minutecast.features import Scaler
from minutecast.keys import Keys
from minutecast.model import build_model, get_preset
from minutecast.registry import Registry
from minutecast.schemas import Bar, WindowReady
from minutecast.settings import CommonSettings
from minutecast.window import RETAIN, checksum, window_at
from streams.window_store import WindowStore

T0 = 1_759_327_200  # 2025-10-01 14:00 UTC = 10:00 New York: one session, no date change for hours
MARKET = CommonSettings.model_fields["market_ticker"].default  # the market ticker the job reads (SPY)
# Fixed input scales of the test models (the values of a plausible large-cap minute series).
SCALER = Scaler(ret_scale=1e-3, gap_scale=5e-3, range_scale=2e-3, logvol_mean=7.0, logvol_std=1.0,
                mkt_ret_scale=1e-3, mkt_range_scale=2e-3, target_scale=2e-3)


def bars_for(ticker: str, minutes: range, seed: int = 0, published_at: float | None = None) -> list[Bar]:
    """Deterministic bars of ``ticker`` at T0 + 60*i for i in ``minutes``."""
    rng = np.random.default_rng([seed, *ticker.encode()])
    out = []
    for i in minutes:
        c = 100.0 + 10 * np.sin(i / 7 + len(ticker)) + rng.normal(0, 0.1)
        out.append(Bar(ticker, T0 + 60 * i, c, c + 0.2, c - 0.2, c, float(1000 + 10 * i), "test",
                       published_at=published_at if published_at is not None else time.time()))
    return out


def store_bars(client: Any, ns: str, bars: list[Bar]) -> None:
    """Write bars into the window store with its own script (one call, no announcement), retaining every bar
    given (at least ``RETAIN`` a ticker): the tests read windows far behind a ticker's newest bar."""
    per_ticker = max(Counter(b.ticker for b in bars).values(), default=0)
    WindowStore(client, Keys(ns), 3600, retain=max(RETAIN, per_ticker)).apply(bars)


def ready_event(bars: list[Bar], ticker: str, i: int) -> WindowReady:
    """The window-ready event the Faust app would publish for ``ticker``'s window ending at T0+60*i."""
    mine = [b for b in bars if b.ticker == ticker]
    minutes = np.array([b.minute for b in mine])
    ohlcv = np.array([[b.open, b.high, b.low, b.close, b.volume] for b in mine])
    t = T0 + 60 * i
    w = window_at(minutes, ohlcv, t)
    assert w is not None, f"no ready window at {i}"
    pub = next(b.published_at for b in mine if b.minute == t)
    return WindowReady(ticker, t, checksum(w), pub, time.time())


def tiny_model_version(models_dir: Path, seed: int) -> str:
    """Save (not promote) the "tiny" preset's network, randomly initialised, with a fixed scaler."""
    model = build_model(get_preset("tiny"), seed=seed)
    return Registry(models_dir).save(model, SCALER, {"test": True, "seed": seed})
