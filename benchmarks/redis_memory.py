"""Redis bytes per ticker: what each ticker's keys of a namespace take (``MEMORY USAGE``), by key kind.

    python -m benchmarks.redis_memory --tickers 8000      # full retention: RETAIN bars, HISTORY forecasts
    from benchmarks.redis_memory import bytes_per_ticker   # benchmarks.e2e, at the end of its run

The run fills a fresh namespace through the stores' own code (the window store's script; the forecast
store's write), ``RETAIN`` bars and ``history_len`` forecasts per ticker, then reports the mean
``MEMORY USAGE`` per ticker (total and by kind) and Redis's ``used_memory`` growth per ticker; the
namespace is deleted afterwards.

A namespace's per-ticker keys end in ``:{ticker}`` (:class:`minutecast.keys.Keys`); they are grouped by
their kind (the part between the namespace and the ticker: the window value, the latest forecast, the
history, the calibration, ...). One SCAN of the namespace, then ``MEMORY USAGE key SAMPLES 0`` (exact for
every element) of the sampled tickers' keys in one pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import defaultdict
from typing import Any

from benchmarks.state import tickers
from minutecast.forecast_store import ForecastStore
from minutecast.intervals import OnlineScale
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Bar, Forecast
from minutecast.settings import CommonSettings, InferenceSettings
from minutecast.window import RETAIN
from streams.serving import make_forecast
from streams.window_store import WindowStore

GOAL_BYTES = 16_000  # issue 24: <= 16 kB per ticker with full retention
HISTORY = InferenceSettings.model_fields["history_len"].default  # forecasts kept per ticker


def bytes_per_ticker(client: Any, keys: Keys, tickers: list[str], sample: int = 50) -> dict[str, Any]:
    """Mean bytes per ticker over the first ``sample`` of ``tickers`` that have keys: the total and by kind."""
    want = set(tickers[:sample])
    by_key: list[tuple[str, str]] = []  # (kind, key)
    prefix = keys.namespace + ":"
    for raw in client.scan_iter(match=keys.namespace_pattern(), count=5000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        kind, _, ticker = key[len(prefix):].rpartition(":")
        if ticker in want and kind:
            by_key.append((kind, key))
    pipe = client.pipeline(transaction=False)
    for _, key in by_key:
        pipe.memory_usage(key, samples=0)
    sizes = pipe.execute()
    per_kind: dict[str, int] = defaultdict(int)
    seen: set[str] = set()
    for (kind, key), size in zip(by_key, sizes, strict=True):
        per_kind[kind] += int(size or 0)
        seen.add(key.rpartition(":")[2])
    n = max(len(seen), 1)
    return {"tickers_sampled": len(seen), "total": round(sum(per_kind.values()) / n),
            "by_kind": {k: round(v / n) for k, v in sorted(per_kind.items())}}


def fill_windows(client: Any, keys: Keys, tickers: list[str], minutes: int = RETAIN + 10) -> None:
    """``minutes`` bars per ticker through the window store itself, a minute of all tickers per call."""
    store = WindowStore(client, keys, 3600)
    t0 = 1_759_325_400  # 2025-10-01 13:30 UTC
    for m in range(minutes):
        store.apply([Bar(t, t0 + 60 * m, 100.0 + i / 7, 100.5 + i / 7, 99.5 + i / 7, 100.1 + i / 7 + m / 1000,
                         1000.0 + m, "bench", 1.75e9 + m) for i, t in enumerate(tickers)])


def forecast(ticker: str, i: int, as_of: int) -> Forecast:
    """A forecast as the Spark job serves it (``streams.serving.make_forecast``: every field set, numbers
    with full float precision like real ones, the calibration state's float32 scales)."""
    c = 100.0 + i / 7 + as_of % 997 / 1e4
    q = [c * (1 + k * 7.3e-4) for k in (-1.645, -1.2816, 0.0, 1.2816, 1.645)]
    return make_forecast(ticker=ticker, as_of=as_of, last_close=c * 0.99993, prices=q,
                         state=OnlineScale(0.0123456789, -0.0098765432, as_of),
                         model_version="20261206T131234Z-bf2e03c1", model_kind="lstm", interval_kind="lstm",
                         published_at=as_of + 61.237, window_ready_at=as_of + 61.402, forecast_at=as_of + 61.634,
                         window_checksum=f"{as_of:016x}")


def fill_forecasts(client: Any, keys: Keys, tickers: list[str], n: int = HISTORY) -> None:
    """``n`` forecasts per ticker (one per minute) through the forecast store's serving write, a minute per call."""
    store = ForecastStore(keys, HISTORY, 3600)
    t0 = 1_759_325_400 + 60 * RETAIN
    for m in range(n):
        fs = [forecast(t, i, t0 + 60 * m) for i, t in enumerate(tickers)]
        store.write_now(client, [(f, None) for f in fs],
                        {f.ticker: OnlineScale(f.log_s80 or 0.0, f.log_s90 or 0.0, f.as_of) for f in fs})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tickers", type=int, default=8000)
    args = ap.parse_args(argv)
    settings = CommonSettings()
    client = connect(settings.redis)
    keys = Keys(f"mem{uuid.uuid4().hex[:10]}")
    names = tickers(args.tickers)
    try:
        before = client.info("memory")["used_memory"]
        fill_windows(client, keys, names)
        fill_forecasts(client, keys, names)
        after = client.info("memory")["used_memory"]
        per = bytes_per_ticker(client, keys, names, sample=200)
    finally:
        found = list(client.scan_iter(match=keys.namespace_pattern(), count=5000))
        for i in range(0, len(found), 1000):
            client.delete(*found[i:i + 1000])
    result = {"benchmark": "redis_memory", "tickers": args.tickers, "bars_per_ticker": RETAIN,
              "forecasts_per_ticker": HISTORY, "bytes_per_ticker": per,
              "used_memory_per_ticker": round((after - before) / args.tickers),
              "goal_bytes_per_ticker": GOAL_BYTES, "goal_met": per["total"] <= GOAL_BYTES}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
