"""Print the latest forecast of one or more tickers from Redis.

    minutecast forecast AAPL MSFT
    minutecast forecast AAPL --json      # one JSON object per line (the Forecast v2 dict plus age_s)

One line per ticker, in New York time::

    AAPL 10:35 ET: 273.19 (+3.2 bp), 80% 272.80–273.60, 90% 272.60–273.80, sigma 12 bp, model lstm 2026...

(the median forecast of the close of the 10:35 bar, its move from the last close, the 80% and 90%
intervals, the implied std of the 5-minute move; then as-of minute, age and the model version).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from minutecast.forecast_store import ForecastStore
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Forecast
from minutecast.settings import CommonSettings
from minutecast.status import forecast_times as forecast_times  # noqa: F401 - its old home (tests import it)
from minutecast.window import SESSION_TZ


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tickers", nargs="+", help="tickers, e.g. AAPL MSFT (yfinance spelling: BRK-B)")
    p.add_argument("--json", action="store_true", help="print each forecast as one JSON line")


def fetch(tickers: list[str]) -> dict[str, object]:
    """Latest forecast per ticker (``Forecast`` or None), one pipelined round trip."""

    s = CommonSettings()
    got = ForecastStore(Keys(s.namespace)).newest_now(connect(s.redis), tickers)
    return {t: Forecast.from_json(got[t][-1][1]) if got[t] else None for t in tickers}


def _local(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).astimezone(SESSION_TZ).strftime("%Y-%m-%d %H:%M %Z")


def _hhmm(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).astimezone(SESSION_TZ).strftime("%H:%M")


def line(f: Forecast, now: float) -> str:
    """One forecast as a sentence (see the module docstring)."""
    move_bp = (f.predicted_close / f.last_close - 1) * 1e4
    head = f"{f.ticker} {_hhmm(f.target_minute)} ET: {f.predicted_close:.2f} ({move_bp:+.1f} bp)"
    if f.quantiles is not None and f.sigma is not None:
        q05, q10, _, q90, q95 = f.quantiles
        head += f", 80% {q10:.2f}–{q90:.2f}, 90% {q05:.2f}–{q95:.2f}, sigma {f.sigma * 1e4:.0f} bp"
        if f.interval_kind == "baseline":
            head += " (baseline interval)"
    else:
        head += ", no interval (v1 forecast)"
    model = f.model_kind if f.model_kind == f.model_version else f"{f.model_kind} {f.model_version}"
    return f"{head}, model {model}; as of {_local(f.as_of)}, {now - f.forecast_at:.0f}s ago"


def run(args: argparse.Namespace) -> int:
    tickers = [t.upper() for t in args.tickers]
    found = fetch(tickers)
    now = time.time()
    missing = 0
    for t in tickers:
        f = found[t]
        if f is None:
            missing += 1
            print(json.dumps({"ticker": t, "error": "no forecast"}) if args.json else f"{t} no forecast yet")
            continue
        assert isinstance(f, Forecast)
        if args.json:
            print(json.dumps(f.to_dict() | {"age_s": round(now - f.forecast_at, 3)}))
        else:
            print(line(f, now))
    return 1 if missing == len(tickers) else 0
