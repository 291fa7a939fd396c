"""Print the latest forecast of one or more tickers from Redis.

    minutecast forecast AAPL MSFT
    minutecast forecast AAPL --json      # one JSON object per line
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from minutecast.window import SESSION_TZ


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tickers", nargs="+", help="tickers, e.g. AAPL MSFT (yfinance spelling: BRK-B)")
    p.add_argument("--json", action="store_true", help="print each forecast as one JSON line")


def fetch(tickers: list[str]) -> dict[str, object]:
    """Latest forecast per ticker (``Forecast`` or None), one pipelined round trip."""
    from minutecast.keys import Keys
    from minutecast.redis import connect
    from minutecast.schemas import Forecast
    from minutecast.settings import CommonSettings

    s = CommonSettings()
    keys = Keys(s.namespace)
    client = connect(s.redis, decode_responses=True)
    pipe = client.pipeline(transaction=False)
    for t in tickers:
        pipe.hgetall(keys.forecast(t))
    out: dict[str, object] = {}
    for t, h in zip(tickers, pipe.execute(), strict=True):
        out[t] = Forecast.from_json(h["json"]) if "json" in h else (Forecast.from_dict(h) if h else None)
    return out


def forecast_times(client: Any, keys: Any) -> list[float]:
    """``forecast_at`` of every ticker's latest forecast in the namespace (one pipelined round trip)."""
    fkeys = list(client.scan_iter(match=keys.forecast_pattern(), count=1000))
    pipe = client.pipeline(transaction=False)
    for k in fkeys:
        pipe.hget(k, "forecast_at")
    return [float(x) for x in pipe.execute() if x]


def _local(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).astimezone(SESSION_TZ).strftime("%Y-%m-%d %H:%M %Z")


def run(args: argparse.Namespace) -> int:
    tickers = [t.upper() for t in args.tickers]
    found = fetch(tickers)
    now = time.time()
    missing = 0
    if not args.json:
        print(f"{'ticker':<7} {'forecast':>10} {'last':>10} {'move':>8}  {'for (close of)':<21} "
              f"{'as of':<21} {'age':>7}  model")
    for t in tickers:
        f = found[t]
        if f is None:
            missing += 1
            print(json.dumps({"ticker": t, "error": "no forecast"}) if args.json else f"{t:<7} no forecast yet")
            continue
        from minutecast.schemas import Forecast

        assert isinstance(f, Forecast)
        if args.json:
            print(json.dumps(f.to_dict() | {"age_s": round(now - f.forecast_at, 3)}))
            continue
        move_bp = (f.predicted_close / f.last_close - 1) * 1e4
        print(f"{t:<7} {f.predicted_close:>10.2f} {f.last_close:>10.2f} {move_bp:>+6.1f}bp  "
              f"{_local(f.target_minute):<21} {_local(f.as_of):<21} {now - f.forecast_at:>6.0f}s  "
              f"{f.model_version}")
    return 1 if missing == len(tickers) else 0
