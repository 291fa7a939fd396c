"""Ingest benchmark: replay the shared real bars into Kafka (acks=all, idempotent) vs the naive baseline.

    python -m benchmarks.ingest [--quick] [--path ../shared/data/bars-1m] [--limit N] [--baseline N]

What is timed: ``Publisher.publish_encoded`` (produce() per bar with a delivery report each, poll,
then the final flush until every bar is acknowledged by the broker) on bars already parsed,
validated and JSON-encoded (that preparation is reported as ``prep_s``, not timed). The baseline
publishes a sample of the same bars with one produce() + flush() per message, same producer config.
Runs once with one producer process and once with two (tickers split between them), into a fresh
uuid topic (6 partitions) on the real broker that is deleted afterwards. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from minutecast.kafka import end_offsets, ensure_topics, make_admin, make_producer
from minutecast.settings import ProducerSettings
from minutecast.topics import Topics, TopicSpec
from producers import replay
from producers.bars import check, encode, stamp_suffix
from producers.publisher import Publisher
from producers.universe import shard

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = Path(os.environ.get("MINUTECAST_SHARED_DATA", REPO.parent / "shared" / "data" / "bars-1m"))


def _publish(settings: Any, topic: str, keys: list[bytes], bodies: list[bytes]) -> tuple[float, float, int, int]:
    """Publish and flush; (start, end, delivered, failed), wall clock."""
    pub = Publisher(settings, topic=topic, create_topics=False)
    t0 = time.time()
    pub.publish_encoded(keys, bodies)
    pub.close()
    return t0, time.time(), pub.stats.delivered, pub.stats.failed


def _child(settings: Any, topic: str, keys: list[bytes], bodies: list[bytes], barrier: Any, out: Any) -> None:
    pub = Publisher(settings, topic=topic, create_topics=False)  # connect before the clock starts
    barrier.wait()
    t0 = time.time()
    pub.publish_encoded(keys, bodies)
    pub.close()
    out.put((t0, time.time(), pub.stats.delivered, pub.stats.failed))


def _baseline(settings: Any, topic: str, keys: list[bytes], bodies: list[bytes]) -> tuple[float, int]:
    """The naive way: produce one message, flush, repeat (same acks=all idempotent producer)."""
    p = make_producer(settings.kafka)
    ok = [0]

    def cb(err: Any, _msg: Any) -> None:
        ok[0] += err is None

    p.produce(topic, b"{}", b"warmup-skip", on_delivery=lambda e, m: None)  # connection + producer id
    p.flush(30)
    t0 = time.perf_counter()
    for k, b in zip(keys, bodies, strict=True):
        p.produce(topic, b + stamp_suffix(time.time()), k, on_delivery=cb)
        p.flush(30)
    return time.perf_counter() - t0, ok[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small sample (50k bars, 500 baseline)")
    ap.add_argument("--path", type=Path, default=DEFAULT_PATH)
    ap.add_argument("--limit", type=int, help="bars to replay (default: all; --quick: 50,000)")
    ap.add_argument("--baseline", type=int, help="bars in the naive baseline sample (default 3000; --quick 500)")
    args = ap.parse_args(argv)
    limit = args.limit if args.limit is not None else (50_000 if args.quick else None)
    n_base = args.baseline if args.baseline is not None else (500 if args.quick else 3000)

    t = time.perf_counter()
    frame = replay.load(args.path, limit=limit)
    checked = check(frame, "replay")
    keys, bodies = encode(checked.valid, "replay")
    tickers = sorted(set(checked.valid["ticker"]))
    halves = []
    for k in range(2):
        mine = set(shard(tickers, k, 2))
        idx = [i for i, key in enumerate(keys) if key.decode() in mine]
        halves.append(([keys[i] for i in idx], [bodies[i] for i in idx]))
    prep_s = time.perf_counter() - t
    n = len(keys)
    print(f"prepared {n} bars of {len(tickers)} tickers from {args.path} in {prep_s:.1f} s "
          f"(parse+validate+encode, not timed)", flush=True)

    ns = f"ingest{uuid.uuid4().hex[:10]}"
    settings = ProducerSettings(namespace=ns)
    topic = Topics(ns).bars
    ensure_topics(settings.kafka, [TopicSpec(topic, 6, 24 * 3600 * 1000)])
    result: dict[str, Any] = {"bench": "ingest", "bars": n, "tickers": len(tickers), "prep_s": round(prep_s, 2),
                              "cpus": os.cpu_count()}
    try:
        nb = min(n_base, n)
        base_s, base_ok = _baseline(settings, topic, keys[:nb], bodies[:nb])
        result |= {"baseline_bars": nb, "baseline_s": round(base_s, 3), "baseline_bars_per_s": round(nb / base_s)}
        print(f"baseline (produce+flush per message): {nb} bars in {base_s:.2f} s = {nb / base_s:,.0f} bars/s",
              flush=True)

        t0, t1, delivered, failed = _publish(settings, topic, keys, bodies)
        rate1 = n / (t1 - t0)
        result |= {"seconds": round(t1 - t0, 3), "bars_per_s": round(rate1), "delivered": delivered,
                   "failed": failed}
        print(f"1 process: {n} bars in {t1 - t0:.2f} s = {rate1:,.0f} bars/s (delivered {delivered})", flush=True)

        ctx = mp.get_context("fork")
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_child, args=(settings, topic, hk, hb, barrier, out)) for hk, hb in halves]
        for p in procs:
            p.start()
        rows = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        start, end = min(r[0] for r in rows), max(r[1] for r in rows)
        delivered2, failed2 = sum(r[2] for r in rows), sum(r[3] for r in rows)
        rate2 = n / (end - start)
        result |= {"seconds_2proc": round(end - start, 3), "bars_per_s_2proc": round(rate2),
                   "delivered_2proc": delivered2, "failed_2proc": failed2}
        print(f"2 processes: {n} bars in {end - start:.2f} s = {rate2:,.0f} bars/s (delivered {delivered2})",
              flush=True)

        in_topic = sum(end_offsets(settings.kafka, topic).values())
        expected = 1 + base_ok + delivered + delivered2  # +1: the baseline's warm-up message
        result |= {"speedup": round(rate1 / result["baseline_bars_per_s"], 1),
                   "speedup_2proc": round(rate2 / result["baseline_bars_per_s"], 1),
                   "messages_in_topic": in_topic, "messages_expected": expected,
                   "timed": "produce()+delivery reports+final flush of pre-encoded bars, acks=all, idempotent, "
                            "lz4; CSV parse/validate/encode excluded (prep_s)"}
        ok = failed == 0 and failed2 == 0 and delivered == n and delivered2 == n and in_topic == expected
    finally:
        admin = make_admin(settings.kafka)  # keep a reference: the futures die with their client
        for fut in admin.delete_topics([topic], operation_timeout=30).values():
            try:
                fut.result()
            except Exception as exc:  # noqa: BLE001 - report, do not hide the measurement
                print(f"could not delete benchmark topic {topic}: {exc}", file=sys.stderr)
    result["ok"] = ok
    print(json.dumps(result), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
