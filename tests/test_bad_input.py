"""Malformed messages on the bar topic (over 60 kinds, issue 17's included: 400-digit numbers, 2,000-deep
nesting, ``1e999`` / ``1e300`` / negative / 0 ``published_at``, NUL and bidi characters, ``"AAA\n"``, no key,
a 600 kB key, a ticker outside the allowlist), produced raw (confluent-kafka) between good bars; ONE Faust
worker (ticker allowlist on), ONE ``minutecast infer --available-now`` run, one rebuild and one training
read serve every assertion:

* each bad message is on the dead-letter topic exactly once, with its machine-readable reason, and the
  partition/offset it had on the bar topic; dead letters are bounded (payload and key cut);
* the worker's Prometheus endpoint counts them per reason, every message (good or bad) is counted as
  taken, the worker never stalled, and its consumer group commits past every record (the 600 kB key too);
* the good tickers' windows equal a clean application of the good bars, and each gets its forecast;
* a corrupt model promoted before the run is refused and the job serves the previous version;
* ``streams.rebuild`` and training's ``read_topic`` finish over the same topic, skipping and counting every
  bad record under the reason the worker gave it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from infra.procs import terminate
from minutecast.errors import ModelError
from minutecast.forecast_store import ForecastStore
from minutecast.kafka import end_offsets, make_admin, make_producer
from minutecast.keys import Keys
from minutecast.registry import Registry
from minutecast.schemas import REASONS, Bar, Forecast
from minutecast.settings import KafkaSettings, RedisSettings, StreamSettings
from minutecast.topics import Topics
from minutecast.universe import allowlist
from streams.rebuild import rebuild
from tests.support.inference import T0, bars_for, tiny_model_version
from tests.support.kafka import committed, read_topic
from tests.support.metrics import scrape
from tests.support.services import free_port, wait_until
from tests.support.windows import reference, snapshot
from training import data as D

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
GOOD = ("AAA", "BBB", "CCC")
BIG = 1 << 20  # the 1 MiB payload


def _bar(**over: Any) -> dict[str, Any]:
    d = json.loads(bars_for("AAA", range(5, 6))[0].to_json())
    return d | over


def _j(d: Any) -> bytes:
    return json.dumps(d, allow_nan=True).encode()


def bad_messages() -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(kind, key, value, expected reason). Keys are good tickers where the kind allows: their windows
    must stay exactly those of the good bars."""
    good = _bar()
    raw = _j(good)
    no_close = {k: v for k, v in good.items() if k != "close"}
    return [
        ("not json", b"AAA", b"{oops", "not_json"),
        ("truncated", b"AAA", raw[: len(raw) // 2], "not_json"),
        ("empty value", b"AAA", b"", "not_json"),
        ("tombstone", b"AAA", None, "not_json"),
        ("json array", b"AAA", b"[1,2,3]", "not_object"),
        ("json scalar", b"AAA", b'"AAA"', "not_object"),
        ("non-utf8", b"AAA", b"\xff\xfe\x00bar", "not_utf8"),
        ("schema version 2", b"AAA", _j(good | {"v": 2}), "schema_version"),
        ("no schema version", b"AAA", _j({k: v for k, v in good.items() if k != "v"}), "schema_version"),
        ("missing field", b"AAA", _j(no_close), "missing_field"),
        ("unknown field", b"AAA", _j(good | {"extra": 1}), "unknown_field"),
        ("price as string", b"AAA", _j(good | {"close": "100.0"}), "wrong_type"),
        ("price as bool", b"AAA", _j(good | {"open": True}), "wrong_type"),
        ("ticker as number", b"AAA", _j(good | {"ticker": 7}), "wrong_type"),
        ("time as epoch number", b"AAA", _j(good | {"time": T0}), "wrong_type"),
        ("NaN price", b"AAA", _j(good | {"close": math.nan}), "non_finite"),
        ("Infinity volume", b"AAA", _j(good | {"volume": math.inf}), "non_finite"),
        ("negative price", b"AAA", _j(good | {"low": -1.0}), "non_positive_price"),
        ("zero price", b"AAA", _j(good | {"open": 0.0, "low": 0.0}), "non_positive_price"),
        ("absurd price", b"AAA", _j(good | {"high": 1e12}), "absurd_price"),
        ("high below low", b"AAA", _j(good | {"high": good["low"] - 1}), "high_below_low"),
        ("close outside range", b"AAA", _j(good | {"close": good["high"] + 5}), "open_close_outside_range"),
        ("negative volume", b"AAA", _j(good | {"volume": -5.0}), "negative_volume"),
        ("absurd volume", b"AAA", _j(good | {"volume": 1e15}), "absurd_volume"),
        ("bad ticker format", b"aapl$$", _j(good | {"ticker": "aapl$$"}), "bad_ticker"),
        ("key/ticker mismatch", b"BBB", raw, "key_mismatch"),
        ("unparseable time", b"AAA", _j(good | {"time": "yesterday"}), "bad_timestamp"),
        ("time without offset", b"AAA", _j(good | {"time": "2025-10-01T14:05:00"}), "bad_timestamp"),
        ("not on a minute", b"AAA", _j(good | {"time": "2025-10-01T14:05:30Z"}), "not_minute_aligned"),
        ("far future", b"AAA", _j(good | {"time": "2100-01-01T00:00:00Z"}), "future_timestamp"),
        ("far past", b"AAA", _j(good | {"time": "1990-01-02T15:00:00Z"}), "too_old"),
        ("1 MiB payload", b"AAA", b'{"v":1,"pad":"' + os.urandom(BIG // 2).hex().encode() + b'"}', "payload_too_large"),
        *hostile_messages(good),
    ]


def _raw(d: dict[str, Any], name: str, literal: str) -> bytes:
    """``d`` as JSON with field ``name`` spelled ``literal`` verbatim (numbers json.dumps cannot write)."""
    return json.dumps(d | {name: "@@"}).replace('"@@"', literal).encode()


def hostile_messages(good: dict[str, Any]) -> list[tuple[str, bytes | None, bytes | None, str]]:
    """Issue 17's cases and their neighbours: numbers, nesting, timestamps, text, keys, versions."""
    raw = _j(good)
    now = time.time()
    return [
        ("400-digit volume", b"AAA", _raw(good, "volume", "1" * 400), "number_too_long"),
        ("400-digit price", b"AAA", _raw(good, "high", "9" * 400), "number_too_long"),
        ("2**60 integer price", b"AAA", _raw(good, "open", str(2**60)), "number_too_long"),
        ("2000-deep array", b"AAA", b"[" * 2000 + b"]" * 2000, "too_deep"),
        ("600-deep object", b"AAA", b'{"a":' * 600 + b"1" + b"}" * 600, "too_deep"),
        ("1e999 open", b"AAA", _raw(good, "open", "1e999"), "non_finite"),
        ("published_at 1e999", b"AAA", _raw(good, "published_at", "1e999"), "non_finite"),
        ("published_at NaN", b"AAA", _raw(good, "published_at", "NaN"), "non_finite"),
        ("published_at 1e300", b"AAA", _j(good | {"published_at": 1e300}), "bad_published_at"),
        ("published_at negative", b"AAA", _j(good | {"published_at": -1.0}), "bad_published_at"),
        ("published_at 0", b"AAA", _j(good | {"published_at": 0}), "bad_published_at"),
        ("published_at tomorrow", b"AAA", _j(good | {"published_at": now + 86_400}), "bad_published_at"),
        ("published_at as string", b"AAA", _j(good | {"published_at": str(now)}), "wrong_type"),
        ("NUL in source", b"AAA", _j(good | {"source": "rep\x00lay"}), "bad_source"),
        ("RTL override in source", b"AAA", _j(good | {"source": "rep\u202elay"}), "bad_source"),
        ("zero-width space in source", b"AAA", _j(good | {"source": "re\u200bplay"}), "bad_source"),
        ("newline in source", b"AAA", _j(good | {"source": "replay\n"}), "bad_source"),
        ("empty source", b"AAA", _j(good | {"source": ""}), "bad_source"),
        ("100-character source", b"AAA", _j(good | {"source": "s" * 100}), "bad_source"),
        ("source as number", b"AAA", _j(good | {"source": 5}), "wrong_type"),
        ('ticker "AAA\\n"', b"AAA\n", _j(good | {"ticker": "AAA\n"}), "bad_ticker"),
        ("empty ticker", b"AAA", _j(good | {"ticker": ""}), "bad_ticker"),
        ("bidi ticker", b"AAA", _j(good | {"ticker": "A\u202eA"}), "bad_ticker"),
        ("lone surrogate ticker", b"AAA", raw.replace(b'"ticker": "AAA"', b'"ticker": "\\ud800"'), "bad_ticker"),
        ("unknown ticker (allowlist)", b"ZZZ", _j(good | {"ticker": "ZZZ"}), "unknown_ticker"),
        ("no key at all", None, raw, "bad_key"),
        ("600 kB key", os.urandom(300_000).hex().encode(), raw, "bad_key"),
        ("non-UTF-8 key", b"\xffAAA", raw, "bad_key"),
        ("lowercase key", b"aaa", raw, "bad_key"),
        ("empty key", b"", raw, "bad_key"),
        ("key with newline", b"AAA\n", raw, "bad_key"),
        ("v true", b"AAA", _j(good | {"v": True}), "schema_version"),
        ('v "1"', b"AAA", _j(good | {"v": "1"}), "schema_version"),
        ("v 1.0", b"AAA", _j(good | {"v": 1.0}), "schema_version"),
        ("time null", b"AAA", _j(good | {"time": None}), "wrong_type"),
        ("time before year 1 in UTC", b"AAA", _j(good | {"time": "0001-01-01T00:00:00+23:59"}), "too_old"),
        ("100-character time", b"AAA", _j(good | {"time": "2025-10-01T14:05:00Z" + " " * 80}), "bad_timestamp"),
        ("UTF-8 BOM", b"AAA", b"\xef\xbb\xbf" + raw, "not_json"),
        ("JSON null", b"AAA", b"null", "not_object"),
        ("JSON true", b"AAA", b"true", "not_object"),
    ]


def conflicting(good: list[Bar]) -> Bar:
    """AAA at minute 10 again, with another close: a duplicated key with different values."""
    b = next(x for x in good if x.ticker == "AAA" and x.minute == T0 + 600)
    return Bar(b.ticker, b.minute, b.open, b.high + 1, b.low, b.close + 0.5, b.volume + 1, b.source, b.published_at)


@pytest.mark.tensorflow  # saves two tiny models, serves one
def test_bad_messages_are_dead_lettered_counted_and_good_bars_still_forecast(
        topics: Topics, kafka: KafkaSettings, redis_client: Any, redis_settings: RedisSettings, namespace: str,
        tmp_path: Path) -> None:
    # The bar topic accepts the 1 MiB payload (the default limit is ~1 MB); the producer may send it.
    admin = make_admin(kafka)
    res = ConfigResource(ConfigResource.Type.TOPIC, topics.bars, incremental_configs=[
        ConfigEntry("max.message.bytes", str(4 * BIG), incremental_operation=AlterConfigOpType.SET)])
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(30)

    good = [b for i in range(61) for t in GOOD for b in bars_for(t, range(i, i + 1))]
    bad = bad_messages()
    n_kinds = len({k for k, *_ in bad}) + 1  # + the conflicting duplicate below
    assert n_kinds >= 60 and {r for *_, r in bad} <= set(REASONS)
    dup = conflicting(good)
    # A bad message after every other good bar; the conflicting duplicate right after its original.
    records: list[tuple[str | None, bytes | None, bytes | None, str | None]] = []
    queue = list(bad)
    for i, b in enumerate(good):
        records.append((None, b.ticker.encode(), b.to_json(), None))
        if b.ticker == "AAA" and b.minute == dup.minute:
            records.append(("conflicting duplicate", b"AAA", dup.to_json(), "conflicting_duplicate"))
        elif i % 2 == 1 and queue:
            records.append(queue.pop(0))
    assert not queue
    expected: dict[tuple[int, int], tuple[str, str]] = {}  # (partition, offset) -> (kind, reason)

    def on_delivery(err: Any, msg: Any, kind: str | None, reason: str | None) -> None:
        assert err is None, err
        if kind is not None:
            expected[(msg.partition(), msg.offset())] = (kind, reason or "")

    producer = make_producer(kafka, **{"message.max.bytes": 4 * BIG, "linger.ms": 5})
    for kind, key, value, reason in records:
        producer.produce(topics.bars, value, key,
                         on_delivery=lambda e, m, k=kind, r=reason: on_delivery(e, m, k, r))
    assert producer.flush(60) == 0
    n_bad = len(bad) + 1
    assert len(expected) == n_bad

    # A served model, then a corrupt one promoted: refused, the first stays current.
    home = tmp_path / "home"
    registry = Registry(home / "models")
    v1 = tiny_model_version(home / "models", seed=1)
    registry.promote(v1)
    v2 = tiny_model_version(home / "models", seed=2)
    (registry.path(v2) / "model.keras").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ModelError, match=v2):
        registry.promote(v2)
    assert registry.current_version() == v1

    assert redis_settings.password is not None
    allow_file = tmp_path / "universe.csv"
    allow_file.write_text("ticker\n" + "\n".join(GOOD) + "\n")  # ZZZ is not in it: unknown_ticker
    env = os.environ | {"MINUTECAST_NAMESPACE": namespace, "MINUTECAST_HOME": str(home),
                        "MINUTECAST_REDIS_PASSWORD": redis_settings.password.get_secret_value(),
                        "MINUTECAST_TICKER_ALLOWLIST": "true", "MINUTECAST_TICKER_ALLOWLIST_FILE": str(allow_file),
                        "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    port = free_port()
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "minutecast.cli", "stream", "--web-port", "0",
                               "--metrics-port", str(port), "--no-rebuild"], cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    keys = Keys(namespace)
    try:
        wait_until(lambda: int(redis_client.hget(keys.stats(), "stream_messages") or 0) >= len(records), 180,
                   "every message taken", [worker])
        wait_until(lambda: scrape(port).get("minutecast_stream_bars_in_total", 0) >= len(records)
                   and sum(v for k, v in scrape(port).items()
                           if k.startswith("minutecast_stream_deadletters_total")) >= n_bad, 60,
                   "metrics", [worker])
        metrics = scrape(port)
        # Offsets commit past every record, the 600 kB key included: the worker did not stall on any.
        ends = end_offsets(kafka, topics.bars)
        wait_until(lambda: committed(kafka, f"minutecast-windows-{namespace}", topics.bars, ends) == ends, 60,
                   "offsets committed to the end", [worker])
    finally:
        terminate([worker], 60, group=True)
        log.close()

    # Dead letters: one per bad message, at its offset, with its reason.
    dead = [json.loads(v) for _, v in read_topic(kafka, topics.deadletter, timeout=30)]
    stream_dead = [d for d in dead if d["stage"] == "stream"]
    got = {(d["partition"], d["offset"]): d for d in stream_dead}
    assert len(stream_dead) == len(got) == n_bad, Counter(d["reason"] for d in stream_dead)
    assert set(got) == set(expected)
    wrong = {expected[po][0]: (d["reason"], expected[po][1]) for po, d in got.items() if d["reason"] != expected[po][1]}
    assert not wrong, wrong
    assert all(d["source_topic"] == topics.bars and d["v"] == 1 for d in stream_dead)
    big = next(d for d in stream_dead if d["reason"] == "payload_too_large")
    assert big["truncated"] is True and len(big["payload"]) <= 2048
    huge_key = next(d for po, d in got.items() if expected[po][0] == "600 kB key")
    assert huge_key["truncated"] is True and len(huge_key["key"]) <= 64

    # Metrics: every message taken, every dead letter counted under its reason.
    assert metrics["minutecast_stream_bars_in_total"] == len(records)
    assert metrics["minutecast_stream_stalled"] == 0 and not any(k.startswith("minutecast_stream_retries_total")
                                                                 for k in metrics)
    want = Counter(reason for _, reason in expected.values())
    for reason, n in want.items():
        assert metrics[f'minutecast_stream_deadletters_total{{reason="{reason}"}}'] == n, reason
    stats = {k.decode(): int(v) for k, v in redis_client.hgetall(keys.stats()).items()}
    assert stats["stream_conflict"] == 1

    # The good tickers' windows are those of the good bars alone (conflicting duplicate: first kept).
    assert snapshot(redis_client, namespace) == reference(redis_client, namespace, good)

    # One inference run over the window-ready events: a forecast per good ticker, from the kept model.
    out = subprocess.run([sys.executable, "-m", "minutecast.cli", "infer", "--available-now", "--metrics-port", "0",
                          "--checkpoint", str(tmp_path / "ckpt")], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for t in GOOD:
        raw = ForecastStore(keys).latest_now(redis_client, t)
        assert raw is not None, t
        f = Forecast.from_json(raw)
        assert f.as_of == T0 + 60 * 60 and f.model_version == v1 and f.model_kind == "lstm"
    # A rebuild and training's reader take the same topic: every bad record skipped and counted, never a crash.
    settings = StreamSettings(namespace=namespace, kafka=kafka, redis=redis_settings, ticker_allowlist=True,
                              ticker_allowlist_file=allow_file)
    report = rebuild(settings)
    invalid = Counter(reason for reason in want.elements() if reason != "conflicting_duplicate")
    assert report.messages == len(records) and report.conflicts == 1 and Counter(report.rejected) == invalid
    assert snapshot(redis_client, namespace) == reference(redis_client, namespace, good)
    bars, krange = D.read_topic(kafka, topics.bars, end_offsets(kafka, topics.bars), allowed=allowlist(settings))
    # Training has no clock (now = inf): a published_at past *its* reader's clock is no reason to drop a bar
    # there, so exactly that kind is read (a repeat of a stored minute: training keeps a minute's first bar).
    assert Counter(krange.rejected) == invalid - Counter(["bad_published_at"]) and sorted(bars) == sorted(GOOD)
    assert krange.bars == len(good) + 2  # + the conflicting duplicate and the "published_at tomorrow" bar
    print(f"bad inputs tried: {n_kinds} kinds / {n_bad} messages, dead-lettered: {len(stream_dead)}, "
          f"good bars: {len(good)}, forecasts: {len(GOOD)}, rebuild skipped {report.invalid}, "
          f"training skipped {sum(krange.rejected.values())}")
