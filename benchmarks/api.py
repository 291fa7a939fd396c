"""API benchmark: latency of `minutecast serve` on 503 tickers, and SSE delivery with 50 clients.

    python -m benchmarks.api            # 2,000 requests per route, SSE 50 clients x 20 forecasts/s for 20 s
    python -m benchmarks.api --quick    # 300 requests per route, SSE for 6 s

In a uuid namespace: 503 tickers (the S&P 500 list) each get a latest v2 forecast and a history of 120 in
Redis, written as the Spark job writes them (``minutecast.forecast_store``). The server runs as its own process
(``minutecast serve``, as deployed); one keep-alive client times sequential ``GET /api/forecasts/{ticker}``
(random tickers, ``history=0``) and ``GET /api/forecasts`` (all 503) from request to the last byte. Then 50
``/api/stream`` clients connect and forecasts are produced on the topic (linger 0); each event's latency is
the time from ``produce()`` returning to the client having parsed it, so it includes the broker's write.
Targets (issue 15): p99 < 5 ms, < 20 ms and < 100 ms. The last stdout line is the JSON result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from benchmarks.namespace import delete_namespace
from minutecast.errors import ServiceUnavailable
from minutecast.forecast_store import WRITE_LUA, ForecastStore
from minutecast.kafka import ensure_topics, make_producer
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Forecast
from minutecast.settings import InfraSettings
from minutecast.topics import Topics
from producers.universe import sp500
from web.server import free_port

REPO = Path(__file__).resolve().parents[1]


def make_forecast(ticker: str, as_of: int, price: float, *, v2: bool = True, now: float | None = None) -> Any:
    """A Forecast like the Spark job's (v2 with quantiles unless ``v2`` is False)."""
    now = time.time() if now is None else now
    extra: dict[str, Any] = {}
    if v2:
        extra = {"q05": price * 0.998, "q10": price * 0.9985, "q50": price, "q90": price * 1.0015,
                 "q95": price * 1.002, "sigma": 0.0012, "interval_kind": "lstm", "log_s80": 0.0, "log_s90": 0.0}
    return Forecast(ticker=ticker, as_of=as_of, horizon_min=5, predicted_close=price, last_close=price * 0.9999,
                    model_version="bench", model_kind="lstm", published_at=now - 0.5, window_ready_at=now - 0.3,
                    forecast_at=now, **extra)


def store_forecast(pipe: Any, keys: Any, f: Any) -> None:
    """Queue the serving write of ``f`` (latest and history) onto ``pipe``, through the forecast store."""
    ForecastStore(keys).queue_write(pipe, ForecastStore.queue_load(pipe)[WRITE_LUA], f)


def seed(redis: Any, keys: Any, tickers: list[str], history: int) -> None:
    now = int(time.time()) // 60 * 60
    pipe = redis.pipeline(transaction=False)
    for t in tickers:
        base = 50 + 400 * random.random()  # noqa: S311 - benchmark data
        for i in range(history):
            store_forecast(pipe, keys, make_forecast(t, now - 60 * (history - i), base * (1 + 0.0005 * i)))
        if len(pipe) > 5000:
            pipe.execute()
    pipe.execute()


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3)}


def time_get(url: str, paths: list[str], warmup: int = 30) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for p in paths[:warmup]:
            c.get(p).raise_for_status()
        for p in paths:
            t0 = time.perf_counter()
            r = c.get(p)
            r.read()
            out.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    return out


async def sse_latency(url: str, ks: Any, topic: str, tickers: list[str], clients: int, rate: float,
                      seconds: float) -> dict[str, Any]:
    """``clients`` SSE connections; forecasts at ``rate``/s for ``seconds``; per-event delivery latency."""
    sent: dict[str, float] = {}
    lat: list[float] = []
    per_msg: dict[str, list[float]] = {}
    connected = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal connected
        async with c.stream("GET", "api/stream") as r:
            connected += 1
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    now = time.perf_counter()
                    sid = json.loads(line[6:]).get("model_version", "")
                    if sid in sent:
                        lat.append((now - sent[sid]) * 1000)
                        per_msg.setdefault(sid, []).append(lat[-1])

    limits = httpx.Limits(max_connections=clients + 5)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None), limits=limits) as c:
        tasks = [asyncio.create_task(client(c)) for _ in range(clients)]
        while connected < clients:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        producer = make_producer(ks, **{"linger.ms": 0})
        # Warm-up (not timed): the producer's first message pays for connections and the idempotent producer id.
        for _ in range(3):
            producer.produce(topic, make_forecast(tickers[0], int(time.time()) // 60 * 60, 100.0).to_json(),
                             tickers[0].encode())
            producer.flush(10)
        await asyncio.sleep(0.5)
        stop = threading.Event()

        def produce() -> None:
            n, t0 = 0, time.perf_counter()
            while not stop.is_set() and time.perf_counter() - t0 < seconds:
                t = tickers[n % len(tickers)]
                f = make_forecast(t, int(time.time()) // 60 * 60, 100.0)
                sid = f"bench-{n}"
                d = f.to_dict() | {"model_version": sid}
                body = json.dumps(d).encode()
                sent[sid] = time.perf_counter()
                producer.produce(topic, body, t.encode())
                producer.poll(0)
                n += 1
                time.sleep(max(0.0, t0 + n / rate - time.perf_counter()))
            producer.flush(10)

        th = threading.Thread(target=produce, daemon=True)
        th.start()
        await asyncio.to_thread(th.join)
        await asyncio.sleep(1.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    expected = len(sent) * clients
    if os.environ.get("BENCH_DEBUG"):
        worst = sorted(per_msg.items(), key=lambda kv: -max(kv[1]))[:10]
        for sid, ls in worst:
            print(sid, f"min {min(ls):.1f} max {max(ls):.1f}", file=sys.stderr)
    return {"sse_clients": clients, "sse_forecasts": len(sent), "sse_events": len(lat),
            "sse_delivered_share": round(len(lat) / max(1, expected), 4), **{f"sse_{k}_ms": v for k, v in
                                                                            percentiles(lat or [0.0]).items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rate", type=float, default=20.0, help="forecasts per second on the topic (SSE part)")
    args = p.parse_args(argv)
    n = args.requests or (300 if args.quick else 2000)
    sse_s = 6.0 if args.quick else 20.0

    s = InfraSettings()
    ns = f"bench{uuid.uuid4().hex[:10]}"
    topics, keys = Topics(ns), Keys(ns)
    ensure_topics(s.kafka, topics.specs(s.bar_partitions))
    redis = connect(s.redis)
    tickers = sp500()
    port = free_port()
    env = os.environ | {"MINUTECAST_NAMESPACE": ns, "MINUTECAST_SERVE_PORT": str(port),
                        "MINUTECAST_SERVE_HOST": "127.0.0.1"}
    proc = None
    try:
        seed(redis, keys, tickers, 10 if args.quick else 120)
        proc = subprocess.Popen([sys.executable, "-m", "minutecast.cli", "serve"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=sys.stderr)
        url = f"http://127.0.0.1:{port}/"
        _wait_healthy(url)
        rnd = random.Random(7)
        one = time_get(url, [f"api/forecasts/{rnd.choice(tickers)}" for _ in range(n)])
        many = time_get(url, ["api/forecasts"] * n)
        sse = asyncio.run(sse_latency(url, s.kafka, topics.forecasts, tickers, args.clients, args.rate, sse_s))
        r1, r2 = percentiles(one), percentiles(many)
        result = {"tickers": len(tickers), "requests": n,
                  "forecast_one_p50_ms": r1["p50"], "forecast_one_p99_ms": r1["p99"],
                  "forecasts_all_p50_ms": r2["p50"], "forecasts_all_p99_ms": r2["p99"], **sse,
                  "load_avg": [round(x, 2) for x in os.getloadavg()]}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        delete_namespace(s.redis, s.kafka, ns)  # keys and topics, the deletions awaited (none left on the broker)
    print(json.dumps(result))
    return 0


def _wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    @retry(wait=wait_fixed(0.3), stop=stop_after_delay(timeout_s), retry=retry_if_exception_type(httpx.HTTPError),
           reraise=True)
    def check() -> None:
        httpx.get(url + "healthz", timeout=2).raise_for_status()

    try:
        check()
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"{url}healthz did not answer 200 within {timeout_s:.0f} s: {exc}") from exc

if __name__ == "__main__":
    sys.exit(main())
