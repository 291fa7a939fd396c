"""Benchmark: backfill the shared real bars through ONE Faust worker into Redis.

    python -m benchmarks.state [--quick] [--workers N]
    python -m benchmarks.state --tickers 5000 [--minutes 20]   # every bar another ticker (the real shape)

Publishes the shared Q4-2025 1-minute bars (~973k; ``--quick``: 3 tickers x 3 days; pace: a backfill, each
ticker's bars one after the other) or, with ``--tickers N``, synthetic bars of N distinct tickers, one bar per
ticker per minute in minute order (pace: the real shape of a minute, every bar another ticker; ``--minutes``
of them) into the bar topic of a fresh uuid namespace, starts one ``minutecast stream`` worker subprocess on it
(``--workers N``: N of them in
one consumer group, sharing the partitions; the suite's ``state_2workers``) and times until every bar is
applied (the store's ``stream_messages`` counter in ``ns:stats`` reaches the count published, dead
letters included). Reports bars/s (from the first applied bar to the last, so worker start-up is excluded) and
Redis round trips per bar (the store counts its own round trips: Lua calls + meta pipelines). The topics
and keys of the namespace are deleted afterwards. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.namespace import delete_namespace
from infra.procs import terminate
from minutecast.errors import DeliveryError, InfraError, ServiceUnavailable
from minutecast.kafka import ensure_topics, make_producer
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Bar
from minutecast.settings import StreamSettings
from minutecast.topics import Topics
from minutecast.universe import sp500
from minutecast.window import session_ids
from producers import replay
from producers.synthetic import synthetic_tickers

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MINUTECAST_SHARED_DATA", REPO.parent / "shared" / "data" / "bars-1m"))
GOAL_BARS_PER_S = 20_000


def load_bars(path: Path, days: int | None = None, published_at: float | None = None) -> list[Bar]:
    """Bars of one recorded file (read by the replay producer's reader), its first ``days`` New York dates."""
    frame = replay.read_file(path)
    if days is not None:
        day = session_ids(frame["minute"].to_numpy(dtype="int64"))
        frame = frame[np.isin(day, pd.unique(day)[:days])]
    cols = [frame[c].tolist() for c in ("ticker", "minute", "open", "high", "low", "close")]
    volume = frame["volume"].fillna(0.0).tolist()  # an empty Volume cell counts as 0
    return [Bar(t, int(m), o, h, lo, c, v, "replay", published_at)
            for t, m, o, h, lo, c, v in zip(*cols, volume, strict=True)]


def shared_files(tickers: Iterable[str] | None = None) -> list[Path]:
    files = sorted(SHARED.glob("*.csv.gz"))
    if tickers is not None:
        want = set(tickers)
        files = [f for f in files if replay.ticker_of(f) in want]
    return files


def publish(bars: Iterable[Bar], topic: str, settings: StreamSettings) -> int:
    """Produce bars (key = ticker) and wait for delivery. Returns the count; raises if any failed."""
    producer = make_producer(settings.kafka)
    failed: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    n = 0
    for b in bars:
        while True:
            try:
                producer.produce(topic, b.to_json(), b.ticker.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    if failed:
        raise DeliveryError(f"{len(failed)} bars not delivered: {failed[0]}")
    return n


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu_s(client: object) -> float:
    info = client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _stats(client: object, keys: Keys) -> dict[str, int]:
    raw = client.hgetall(keys.stats())  # type: ignore[attr-defined]
    return {k.decode(): int(v) for k, v in raw.items()}


def iter_all(files: list[Path], days: int | None, published_at: float) -> Iterator[Bar]:
    for f in files:
        yield from load_bars(f, days, published_at)


def tickers(n: int) -> list[str]:
    """The first ``n`` S&P 500 names, then generated ones (``S00000`` ..., valid tickers) beyond its 503."""
    names = sp500()[:n]
    taken = set(names)
    return names + [t for t in synthetic_tickers(n) if t not in taken][:n - len(names)]


def distinct_bars(n_tickers: int, minutes: int, published_at: float) -> Iterator[Bar]:
    """``minutes`` minutes of one bar per ticker for ``n_tickers`` tickers, minute by minute (a random walk)."""
    rng = np.random.default_rng(0)
    names_ = tickers(n_tickers)
    price = rng.uniform(20, 500, n_tickers)
    t0 = 1_759_325_400  # 2025-10-01 13:30 UTC
    for m in range(minutes):
        move = np.exp(rng.normal(0, 1e-3, n_tickers))
        close = price * move
        for i, t in enumerate(names_):
            o, c = float(price[i]), float(close[i])
            yield Bar(t, t0 + 60 * m, o, max(o, c) * 1.0005, min(o, c) * 0.9995, c, float(100 + m), "bench",
                      published_at)
        price = close


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 tickers x 3 days")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the worker")
    ap.add_argument("--workers", type=int, default=1, help="worker processes in the group (scale-out check)")
    ap.add_argument("--tickers", type=int, help="synthetic: this many distinct tickers, one bar each per minute")
    ap.add_argument("--minutes", type=int, default=20, help="with --tickers: minutes of bars")
    return ap.parse_args(argv)


def publish_all(args: argparse.Namespace, settings: StreamSettings, files: list[Path]) -> tuple[int, dict[str, object]]:
    """Publish the run's bars (synthetic distinct tickers, or the recorded files) into the namespace's bar topic,
    before any worker runs: the worker then meets a full topic, as in a backfill."""
    t0 = time.monotonic()
    bars = distinct_bars(args.tickers, args.minutes, time.time()) if args.tickers else \
        iter_all(files, 3 if args.quick else None, time.time())
    n = publish(bars, Topics(settings.namespace).bars, settings)
    out = {"bars": n, "tickers": args.tickers or len(files), "publish_s": round(time.monotonic() - t0, 2)}
    print(f"published {n} bars in {out['publish_s']} s", file=sys.stderr)
    return n, out


def start_workers(ns: str, workers: int) -> tuple[list[subprocess.Popen[bytes]], Path]:
    """``workers`` ``minutecast stream`` processes in one consumer group on namespace ``ns``, and their log."""
    env = os.environ | {"MINUTECAST_NAMESPACE": ns}
    log_path = Path(tempfile.gettempdir()) / f"minutecast-state-worker-{ns}.log"
    with open(log_path, "wb") as log:  # the children hold their own descriptors
        procs = [subprocess.Popen([sys.executable, "-m", "minutecast.cli", "stream", "--web-port", "0",
                                   "--metrics-port", "0", "--no-rebuild", "--loglevel", "warning"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT) for _ in range(workers)]
    return procs, log_path


@dataclass
class Applied:
    """From the first applied bar to the last: when and how many, and the CPU s the workers and Redis used."""

    first_t: float
    first_n: int
    end_t: float
    cpu: float  # workers' CPU s between the first applied bar and the last
    redis_cpu: float  # Redis's, the same span
    stats: dict[str, int]  # the store's counters at the end


def wait_applied(procs: list[subprocess.Popen[bytes]], log: Path, client: Any, keys: Keys, n: int,
                 timeout: float) -> Applied:
    """Poll the store's ``stream_messages`` counter (valid bars and dead-lettered messages) until all ``n`` bars
    are applied; a worker that exits or a run past ``timeout`` s fails."""
    t_start = time.monotonic()
    first_t: float | None = None
    first_n = 0
    while True:
        s = _stats(client, keys)
        done = s.get("stream_messages", 0)
        if done and first_t is None:
            first_t, first_n = time.monotonic(), done
            cpu0, rcpu0 = sum(_cpu_s(p.pid) for p in procs), _redis_cpu_s(client)
        if done >= n:
            break
        if any(p.poll() is not None for p in procs):
            raise InfraError(f"a worker exited; see {log}")
        if time.monotonic() - t_start > timeout:
            raise ServiceUnavailable(f"only {done}/{n} bars applied after {timeout:.0f} s")
        time.sleep(0.05)
    end_t = time.monotonic()
    cpu1, rcpu1 = sum(_cpu_s(p.pid) for p in procs), _redis_cpu_s(client)
    assert first_t is not None
    return Applied(first_t, first_n, end_t, cpu1 - cpu0, rcpu1 - rcpu0, s)


def figures(a: Applied, n: int, t_start: float, client: Any, keys: Keys) -> dict[str, object]:
    """Rate, CPU per bar, Redis round trips per bar and the store's counters, in the JSON's order."""
    rate = (n - a.first_n) / max(a.end_t - a.first_t, 1e-9)
    # CPU per bar does not depend on how busy the shared machine is: bars per worker-CPU-second is
    # what one worker does on a core of its own (Redis and Kafka run on other cores).
    cpu_per_bar = a.cpu / max(n - a.first_n, 1)
    s = a.stats
    return {
        "bars_per_s": round(rate),
        "worker_cpu_us_per_bar": round(cpu_per_bar * 1e6, 1),
        "bars_per_worker_cpu_s": round(1 / cpu_per_bar) if cpu_per_bar > 0 else None,
        "redis_cpu_us_per_bar": round(a.redis_cpu / max(n - a.first_n, 1) * 1e6, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "total_s_including_startup": round(a.end_t - t_start, 2),
        "redis_roundtrips": s.get("stream_roundtrips", 0),
        "redis_roundtrips_per_bar": round(s.get("stream_roundtrips", 0) / n, 5),
        "late": s.get("stream_late", 0),
        "conflicts": s.get("stream_conflict", 0),
        "tickers_with_windows": sum(1 for _ in client.scan_iter(match=keys.window_pattern(), count=1000)),
        "goal_bars_per_s": GOAL_BARS_PER_S,
        "meets_goal": rate >= GOAL_BARS_PER_S,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ns = f"bench{uuid.uuid4().hex[:10]}"
    os.environ["MINUTECAST_NAMESPACE"] = ns
    if args.tickers:
        os.environ["MINUTECAST_TICKER_ALLOWLIST"] = "false"  # generated names beyond the S&P 500
    settings = StreamSettings()
    keys = Keys(ns)
    files = shared_files(["AAPL", "MSFT", "NVDA"] if args.quick else None)
    result: dict[str, object] = {"benchmark": "state", "quick": args.quick, "workers": args.workers, "namespace": ns,
                                 "pace": f"{args.tickers} distinct tickers, one bar each per minute"
                                 if args.tickers else "backfill of the recorded bars, ticker after ticker"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ensure_topics(settings.kafka, Topics(ns).specs())
        n, published = publish_all(args, settings, files)
        result |= published
        client = connect(settings.redis)
        t_start = time.monotonic()
        procs, log = start_workers(ns, args.workers)
        applied = wait_applied(procs, log, client, keys, n, args.timeout)
        result |= figures(applied, n, t_start, client, keys)
        log.unlink(missing_ok=True)
    finally:
        terminate(procs)
        delete_namespace(settings.redis, settings.kafka, ns)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
