"""Forecast store benchmark: Redis bytes per ticker with full retention (#24), layout v3 beside layout v1.

    python -m benchmarks.forecast_store                 # 500 tickers x 120 forecasts
    python -m benchmarks.forecast_store --tickers 100

In a uuid namespace of the running local Redis (``minutecast infra up``): every ticker gets ``history_len``
forecasts made as the Spark job makes them (``streams.serving.make_forecast``: served quantiles of a random
walk, online scales moving per minute, wall-clock stamps, a 16-hex checksum, a registry-style model version)
and its calibration state, written through :class:`minutecast.forecast_store.ForecastStore` (the serving
write); the same forecasts are then laid out as layout v1 held them (history hash of JSON, latest hash with
its three number copies, calibration hash) and converted by the store's migration, which must give every
byte back. ``MEMORY USAGE`` (all samples) of each key, summed per ticker; the write's cost per forecast
(pipelined, 1,000 a round trip). The last stdout line is the JSON result. Keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
import uuid
from typing import Any

import numpy as np

from minutecast.forecast_migrate import migrate
from minutecast.forecast_store import ForecastStore
from minutecast.intervals import OnlineScale, Z
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Forecast
from minutecast.settings import InfraSettings
from streams.serving import make_forecast, price_quantiles

VERSION = "20261205T120000Z-3f9a1c2b"  # the registry's version format


def ticker_forecasts(ticker: str, n: int, rng: random.Random) -> tuple[list[Forecast], OnlineScale]:
    """``n`` consecutive forecasts of one ticker as the Spark job serves them, and its final state."""
    state = OnlineScale()
    close = rng.uniform(20, 900)
    t0 = int(time.time()) // 60 * 60 - 60 * n
    out = []
    for i in range(n):
        close *= math.exp(rng.gauss(0, 1e-3))
        s5 = abs(rng.gauss(2e-3, 5e-4))
        raw = np.array([s5 * Z])
        prices = price_quantiles(np.array([close]), state.apply(raw))
        as_of = t0 + 60 * i
        pub = as_of + 60 + rng.uniform(0.05, 0.5)
        ready = pub + rng.uniform(0.002, 0.05)
        out.append(make_forecast(ticker=ticker, as_of=as_of, last_close=close, prices=prices[0], state=state,
                                 model_version=VERSION, model_kind="lstm", interval_kind="lstm",
                                 published_at=pub, window_ready_at=ready, forecast_at=ready + rng.uniform(0.05, 0.4),
                                 window_checksum=f"{rng.getrandbits(64):016x}"))
        state.update(state.apply(raw)[0], rng.gauss(0, s5), as_of + 60)  # the outcome of a minute earlier
    return out, state


def memory(client: Any, keys: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
    return sum(x or 0 for x in pipe.execute())


def write_v1(client: Any, keys: Keys, forecasts: list[Forecast], state: OnlineScale) -> None:
    """The hashes layout v1's write script left (history JSON per as-of, latest + copies, calibration)."""
    pipe = client.pipeline(transaction=False)
    t = forecasts[0].ticker
    for f in forecasts:
        pipe.hset(keys.forecast_history_v1(t), str(f.as_of), f.to_json())
    js = forecasts[-1].to_json()
    d = json.loads(js)
    pipe.hset(keys.forecast_v1(t), mapping={"json": js, **{k: json.dumps(d[k]) for k in
                                                           ("as_of", "predicted_close", "forecast_at")}})
    pipe.hset(keys.calibration_v1(t), mapping={k: repr(v) if isinstance(v, float) else str(v)
                                                for k, v in state.to_dict().items()})
    pipe.execute()


def run(n_tickers: int, history: int) -> dict[str, Any]:
    s = InfraSettings()
    client = connect(s.redis)
    keys = Keys(f"bench{uuid.uuid4().hex[:10]}")
    store = ForecastStore(keys, history_len=history, ttl_s=3600)
    rng = random.Random(24)
    made = {f"T{i:04d}": ticker_forecasts(f"T{i:04d}", history, rng) for i in range(n_tickers)}
    try:
        t0 = time.perf_counter()
        for t, (fs, st) in made.items():
            store.write_now(client, [(f, None) for f in fs], {t: st})
        write_us = (time.perf_counter() - t0) / (n_tickers * history) * 1e6
        v3 = memory(client, [k for t in made for k in store.pair(t)]) / n_tickers
        raw = sum(1 for t in made for k in client.hkeys(keys.forecast_meta(t)) if k.startswith(b"j:"))
        t0 = time.perf_counter()
        latest = store.newest_now(client, list(made))
        read_ms = (time.perf_counter() - t0) * 1000
        assert all(latest[t][-1][1] == fs[-1].to_json() for t, (fs, _) in made.items())
        client.delete(*[k for t in made for k in store.pair(t)])
        for fs, st in made.values():
            write_v1(client, keys, fs, st)
        v1 = memory(client, [k for t in made for k in (keys.forecast_v1(t), keys.forecast_history_v1(t),
                                                       keys.calibration_v1(t))]) / n_tickers
        t0 = time.perf_counter()
        migrated = migrate(store, client)
        migrate_s = time.perf_counter() - t0
        same = all(store.history_now(client, t) == {f.as_of: f.to_json() for f in fs} for t, (fs, _) in made.items())
    finally:
        for k in client.scan_iter(match=keys.namespace_pattern(), count=1000):
            client.delete(k)
    return {"benchmark": "forecast_store", "tickers": n_tickers, "history": history,
            "v1_bytes_per_ticker": round(v1), "v3_bytes_per_ticker": round(v3), "v3_raw_records": raw,
            "write_us_per_forecast": round(write_us, 1), "latest_all_ms": round(read_ms, 2),
            "migrate_s": round(migrate_s, 2), "migrated": migrated, "migration_exact": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tickers", type=int, default=500)
    p.add_argument("--history", type=int, default=120)
    args = p.parse_args(argv)
    print(json.dumps(run(args.tickers, args.history)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
