"""The forecast store (``minutecast.forecast_store``, layout v3): its record codec gives back every forecast's
JSON byte for byte (hypothesis: arbitrary valid v2 forecasts incl. None fields and checksums, v1 forecasts,
JSON from another encoder), what the Spark job serves fits the 85-byte record, its write script keeps today's
rules against the real Redis (first value wins, corrections, latest forward only, calibration forward only,
bounded history with raw and compact records, string-table reuse), and the migrations from layouts v1 and v2
(``minutecast.forecast_migrate``) convert a store without changing a byte a reader sees.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

import pytest
from confluent_kafka import KafkaException
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minutecast import forecast_store as fs
from minutecast.forecast_migrate import V2, migrate
from minutecast.forecast_store import ForecastStore, decode, decode_forecast, encode, pack_strings
from minutecast.intervals import OnlineScale, f32, implied_sigma
from minutecast.kafka import end_offsets
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Forecast
from minutecast.settings import KafkaSettings, RedisSettings
from minutecast.topics import Topics
from ops.forecast import fetch, forecast_times
from streams.repair import repair_forecasts
from tests.support.services import wait_until

integration = pytest.mark.integration
T0 = 1_764_945_000  # 2025-12-05 14:30 UTC, a minute

prices = st.floats(min_value=1e-4, max_value=1e7, allow_nan=False, allow_infinity=False)
stamps = st.one_of(st.floats(min_value=1e9, max_value=4e9, allow_nan=False),
                   st.integers(min_value=T0, max_value=T0 + 3600).map(float))
small = st.floats(min_value=-1.4, max_value=1.4, allow_nan=False, allow_infinity=False)
names = st.text(min_size=1, max_size=64).filter(lambda s: s.isprintable())


@st.composite
def forecasts(draw: Any, served: bool = False) -> Forecast:
    """Valid Forecasts (v2 mostly, v1 sometimes) with near or far timestamps, None fields and checksums;
    ``served``: as the Spark job makes them (v2, horizon 5, wall-clock stamps, a 16-hex checksum or none)."""
    if served:
        f = draw(forecasts())
        ready = draw(st.floats(min_value=1.1e9, max_value=2.1e9))
        near = st.floats(min_value=-500, max_value=500).map(lambda d: ready + d)
        q = sorted(draw(st.lists(prices, min_size=5, max_size=5)))
        return dataclasses.replace(
            f, horizon_min=5, window_ready_at=ready, forecast_at=draw(near), published_at=draw(st.none() | near),
            predicted_close=q[2], q05=q[0], q10=q[1], q50=q[2], q90=q[3], q95=q[4], sigma=implied_sigma(q[1], q[3]),
            interval_kind=draw(st.sampled_from(["lstm", "baseline"])), log_s80=f32(draw(small)),
            log_s90=f32(draw(small)),
            window_checksum=draw(st.none() | st.text("0123456789abcdef", min_size=16, max_size=16)))
    as_of = T0 + 60 * draw(st.integers(min_value=-10**6, max_value=10**6))
    ready = draw(st.one_of(stamps, *[st.floats(min_value=0, max_value=600).map(lambda d: as_of + 60 + d)] * 3))
    near = st.floats(min_value=-400, max_value=400, allow_nan=False).map(lambda d: ready + d)
    pub = draw(st.one_of(st.none(), near, near, stamps))
    at = draw(st.one_of(near, near, near, stamps))
    q = sorted(draw(st.lists(prices, min_size=5, max_size=5)))
    v1 = draw(st.integers(0, 7)) == 0
    cs = draw(st.one_of(st.none(), st.text("0123456789abcdef", min_size=16, max_size=16),
                        st.text("0123456789abcdef", min_size=16, max_size=16),
                        st.text("0123456789abcdef", min_size=1, max_size=64)))
    base = dict(ticker=draw(st.sampled_from(["AAPL", "BRK-B", "X"])), as_of=as_of,
                horizon_min=draw(st.sampled_from([5] * 8 + [1, 60])), predicted_close=q[2],
                last_close=draw(prices), model_version=draw(st.one_of(st.sampled_from(["persistence", "20261205-1"]),
                                                                      names)),
                model_kind=draw(st.sampled_from(["lstm", "persistence"])), published_at=pub,
                window_ready_at=ready, forecast_at=at)
    if v1:
        return Forecast(**base)
    return Forecast(**base, q05=q[0], q10=q[1], q50=q[2], q90=q[3], q95=q[4],
                    sigma=draw(st.floats(min_value=0, max_value=2, allow_nan=False)),
                    interval_kind=draw(st.sampled_from(["lstm", "baseline"])), log_s80=draw(small),
                    log_s90=draw(small), window_checksum=cs)


def with_id(e: fs.Encoded, sid: int = 7) -> bytes:
    """The record as the write script stores it: the string id it assigns (0 for a raw record) in the low bits."""
    return e.record[:4] + bytes([e.record[4] & fs.HAS_SUM | (sid if e.strings else 0)]) + e.record[5:]


def roundtrip(f: Forecast, js: bytes | None = None) -> tuple[bytes, fs.Encoded]:
    e = encode(f, js)
    aux = {b"s:7": e.strings, b"j:%d" % f.as_of: e.raw}
    return decode(f.ticker, with_id(e), aux), e


SERVED = Forecast(ticker="AAPL", as_of=T0, horizon_min=5, predicted_close=273.19000000000005,
                  last_close=273.1, model_version="20261205-1", model_kind="lstm", published_at=T0 + 60.123456,
                  window_ready_at=T0 + 60.2345678, forecast_at=T0 + 60.4567891, q05=272.6, q10=272.8,
                  q50=273.19000000000005, q90=273.6, q95=273.8, sigma=implied_sigma(272.8, 273.6),
                  interval_kind="lstm", log_s80=f32(-0.004), log_s90=f32(0.016), window_checksum="0123456789abcdef")


@given(forecasts() | forecasts(served=True))
@example(SERVED)
@example(dataclasses.replace(SERVED, published_at=None, window_checksum=None))
@example(dataclasses.replace(SERVED, window_ready_at=1e9 + 0.3, forecast_at=1e9 + 0.55, published_at=1e9 + 0.1))
@example(dataclasses.replace(SERVED, window_ready_at=2.0**31 - 0.1, forecast_at=2.0**31 + 0.3))
@settings(max_examples=600, deadline=None)
def test_every_forecast_reads_back_byte_identical(f: Forecast) -> None:
    got, e = roundtrip(f)
    assert got == f.to_json()
    assert decode_forecast(f.ticker, with_id(e), {b"s:7": e.strings, b"j:%d" % f.as_of: e.raw}).to_json() == f.to_json()
    assert len(e.record) == fs.R == 85


@given(forecasts(served=True))
@settings(max_examples=300, deadline=None)
def test_served_forecasts_are_compact(f: Forecast) -> None:
    got, e = roundtrip(f)
    assert e.raw == b"" and got == f.to_json()


def test_served_forecasts_are_compact_and_the_rest_raw() -> None:
    """What the Spark job serves fits the record; v1, odd horizons, far timestamps, other JSON do not."""
    assert encode(SERVED).raw == b"" and encode(dataclasses.replace(SERVED, published_at=None)).raw == b""
    v1 = Forecast(**{k: getattr(SERVED, k) for k in ("ticker", "as_of", "horizon_min", "predicted_close",
                                                     "last_close", "model_version", "model_kind", "published_at",
                                                     "window_ready_at", "forecast_at")})
    for f in (v1, dataclasses.replace(SERVED, horizon_min=1), dataclasses.replace(SERVED, forecast_at=T0 + 9999.0),
              dataclasses.replace(SERVED, window_checksum="abc"),
              dataclasses.replace(SERVED, sigma=0.0012),  # not the sigma its interval implies (another writer)
              dataclasses.replace(SERVED, log_s80=-0.004000000000000001)):  # a scale that is not float32-exact
        got, e = roundtrip(f)
        assert e.raw == f.to_json() and got == f.to_json()
    # JSON another encoder wrote (an int where ours writes a float; spaces): kept verbatim
    other = json.dumps(SERVED.to_dict() | {"last_close": 273}).encode()
    got, e = roundtrip(Forecast.from_json(other), other)
    assert e.raw == other and got == other


def test_timestamp_offsets_are_exact_or_refused() -> None:
    ready = T0 + 60.2345678
    assert fs._tick(ready + 0.25, ready) == 2**20
    assert fs._tick(0.1, ready) is None  # far away
    assert fs._tick(1e9 + 0.1, 1e9) is None  # a finer binade: not a whole number of ticks
    assert fs._tick(ready + 1000.0, ready) is None  # beyond an i32 of ticks
    assert fs._tick(ready + fs.NO_PUB * fs.TICK, ready) is None  # the "no published_at" value itself
    assert all(ready + fs._tick(ready + d, ready) * fs.TICK == ready + d  # type: ignore[operator]
               for d in (0.001, 0.1234567, -3.3, 511.9))
    assert not math.isnan(fs.TICK)


def write(store: ForecastStore, client: Any, f: Forecast, state: OnlineScale | None = None) -> tuple[int, bytes]:
    return store.write_now(client, [(f, None)], {f.ticker: state} if state else None)[0]


@integration
def test_write_rules_against_redis(redis_client: Any, namespace: str) -> None:
    store = ForecastStore(Keys(namespace), history_len=4, ttl_s=3600)
    f0 = SERVED
    assert write(store, redis_client, f0, OnlineScale(0.1, 0.2, T0)) == (1, f0.to_json())
    replay = dataclasses.replace(f0, forecast_at=f0.forecast_at + 5)  # same window, made again: kept
    assert write(store, redis_client, replay) == (0, f0.to_json())
    older = dataclasses.replace(f0, window_ready_at=f0.window_ready_at - 1, window_checksum="1111111111111111")
    assert write(store, redis_client, older) == (0, f0.to_json())  # an older announcement never replaces
    fix = dataclasses.replace(f0, window_ready_at=f0.window_ready_at + 1, window_checksum="2222222222222222",
                              predicted_close=274.0, q50=274.0, q90=274.5, q95=275.0, sigma=implied_sigma(272.8, 274.5))
    assert write(store, redis_client, fix) == (2, fix.to_json())  # a correction
    assert write(store, redis_client, dataclasses.replace(fix, window_ready_at=fix.window_ready_at + 1)) == \
        (0, fix.to_json())  # the same window re-announced later: not a correction
    assert store.latest_now(redis_client, "AAPL") == fix.to_json()
    # older as-of: stored, latest stays; v1 (raw) records mixed in; history bounded; strings reused
    v1 = Forecast(**{k: getattr(f0, k) for k in ("ticker", "horizon_min", "predicted_close", "last_close",
                                                 "model_version", "model_kind", "published_at", "window_ready_at",
                                                 "forecast_at")}, as_of=T0 - 60)
    assert write(store, redis_client, v1)[0] == 1
    assert store.latest_now(redis_client, "AAPL") == fix.to_json()
    made = {T0: fix.to_json(), T0 - 60: v1.to_json()}
    for i in range(1, 6):
        g = dataclasses.replace(f0, as_of=T0 + 60 * i, model_version=f"m{i % 2}")
        assert write(store, redis_client, g, OnlineScale(0.3, 0.4, T0 - 60 * i))[0] == 1  # calibration: older
        made[g.as_of] = g.to_json()
    hist = store.history_now(redis_client, "AAPL")
    assert hist == {t: made[t] for t in sorted(made)[-4:]}
    assert store.latest_now(redis_client, "AAPL") == made[T0 + 300]
    meta = redis_client.hgetall(Keys(namespace).forecast_meta("AAPL"))
    assert not [k for k in meta if k.startswith(b"j:")], "the raw record's JSON left with it"
    assert sorted(k for k in meta if k.startswith(b"s:")) == [b"s:1", b"s:2", b"s:3"]  # strings in use only
    assert store.calibration_now(redis_client, "AAPL") == {"through": str(T0), "log_s80": repr(f32(0.1)),
                                                           "log_s90": repr(f32(0.2))}
    assert 0 < redis_client.ttl(Keys(namespace).forecast("AAPL")) <= 3600
    # the Spark partition's read: the calibration and the entries due at t
    pipe = redis_client.pipeline(transaction=False)
    store.queue_due(pipe, redis_client.script_load(fs.READ_LUA), "AAPL", T0 + 60 * 7)
    state, due = store.decode_due("AAPL", pipe.execute()[0])
    assert state == OnlineScale(0.1, 0.2, T0) and sorted(due) == [T0 + 120]
    assert due[T0 + 120].to_json() == made[T0 + 120]


@integration
def test_a_foreign_value_is_refused_not_misread(redis_client: Any, namespace: str) -> None:
    store = ForecastStore(Keys(namespace))
    redis_client.set(Keys(namespace).forecast("AAPL"), b'{"v":2}')
    with pytest.raises(Exception, match="not a fc3 record string"):
        store.latest_now(redis_client, "AAPL")
    with pytest.raises(Exception, match="not a fc3 record string"):
        write(store, redis_client, SERVED)


@integration
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(forecasts(), min_size=1, max_size=8), st.booleans())
def test_migration_from_layout_v1_keeps_every_byte(redis_client: Any, namespace: str, fs_list: list[Forecast],
                                                   written_since: bool) -> None:
    """A v1 store (as the old WRITE_LUA left it) converts to v3: same latest, history and calibration; built
    whole, it holds the very records (and meta fields) the serving write leaves; a ticker the new job already
    wrote to (an interrupted upgrade) is merged through the serving write."""
    keys = Keys(namespace)
    redis_client.delete(*redis_client.keys(keys.namespace_pattern()) or ["-"])
    hist = {f.as_of: dataclasses.replace(f, ticker="AAPL").to_json() for f in fs_list}
    newest = hist[max(hist)]
    redis_client.hset(keys.forecast_history_v1("AAPL"), mapping=hist)
    redis_client.hset(keys.forecast_v1("AAPL"), mapping={"json": newest, "as_of": max(hist)})
    calib = {"log_s80": "0.123", "log_s90": "-0.05", "through": str(T0)}
    redis_client.hset(keys.calibration_v1("AAPL"), mapping=calib)
    store = ForecastStore(keys, history_len=120, ttl_s=3600)
    if written_since:
        pre = dataclasses.replace(SERVED, as_of=min(hist) - 60)
        store.write_now(redis_client, [(pre, None)], {"AAPL": OnlineScale(0.5, 0.5, T0 + 60)})
        hist[pre.as_of] = pre.to_json()
        calib = {"through": str(T0 + 60), "log_s80": "0.5", "log_s90": "0.5"}
    assert migrate(store, redis_client) == {"tickers": 1, "forecasts": len(fs_list and hist) + 1 - written_since,
                                            "dropped": 0}
    calib = {k: str(v) if k == "through" else repr(v) for k, v in OnlineScale.from_dict(dict(calib)).to_dict().items()}
    assert store.history_now(redis_client, "AAPL") == hist
    assert store.latest_now(redis_client, "AAPL") == hist[max(hist)]
    assert store.calibration_now(redis_client, "AAPL") == calib
    assert all(0 < redis_client.ttl(k) <= 3600 for k in store.pair("AAPL"))
    assert not any(redis_client.exists(k) for k in (keys.forecast_v1("AAPL"), keys.forecast_history_v1("AAPL"),
                                                     keys.calibration_v1("AAPL")))
    assert migrate(store, redis_client) == {"tickers": 0, "forecasts": 0, "dropped": 0}  # once
    if not written_since:  # the same forecasts through the serving write: byte-identical keys
        ref = ForecastStore(Keys(f"{namespace}:ref"), history_len=120, ttl_s=3600)
        ref.write_now(redis_client, [(Forecast.from_json(js), js) for js in [*hist.values(), newest]],
                      {"AAPL": OnlineScale.from_dict(dict(calib))})
        (records, meta), (ref_records, ref_meta) = store.pair("AAPL"), ref.pair("AAPL")
        assert redis_client.get(records) == redis_client.get(ref_records)
        assert redis_client.hgetall(meta) == redis_client.hgetall(ref_meta)


def v2_record(f: Forecast, sid: int) -> tuple[bytes, bytes]:
    """``f`` as layout v2 stored it (compact with string id ``sid``, or raw with sid 0): record, raw JSON."""
    ready = f.window_ready_at
    cs = f.window_checksum
    if sid == 0:
        return V2.pack(f.as_of, 2 | (cs is not None), 0, ready, bytes.fromhex(cs) if cs else bytes(8), 0, 0,
                       *([0.0] * 9)), f.to_json()
    pub = 4 if f.published_at is None else 0
    ticks = [0 if x is None else round((x - ready) / fs.TICK) for x in (f.published_at, f.forecast_at)]
    return V2.pack(f.as_of, (cs is not None) | pub, sid, ready, bytes.fromhex(cs) if cs else bytes(8), *ticks,
                   f.predicted_close, f.last_close, f.q05, f.q10, f.q90, f.q95, f.sigma, f.log_s80,
                   f.log_s90), b""


@integration
def test_migration_from_layout_v2_keeps_every_byte(redis_client: Any, namespace: str) -> None:
    """A v2 store (102-byte records as the v2 write script left them: compact with v2's f64 sigma and scales,
    raw with JSON in the meta hash, a forecast without published_at or checksum) converts to v3: the same
    JSON for every as-of and the calibration, the v2 keys gone; v2's scales and sigma are not v3's spelling,
    so those records are kept raw, never rounded."""
    keys = Keys(namespace)
    old = [dataclasses.replace(SERVED, as_of=T0 + 60 * i, sigma=0.0012 + i / 1e5, log_s80=-0.004000000000000001)
           for i in range(3)]
    old.append(dataclasses.replace(SERVED, as_of=T0 + 180, published_at=None, window_checksum=None))
    old.append(Forecast(**{k: getattr(SERVED, k) for k in ("ticker", "horizon_min", "predicted_close", "last_close",
                                                            "model_version", "model_kind", "published_at",
                                                            "window_ready_at", "forecast_at")}, as_of=T0 + 240))
    recs, meta = [], {b"s:1": pack_strings(SERVED.model_version, SERVED.model_kind, SERVED.interval_kind),
                      b"log_s80": b"0.1", b"log_s90": b"-0.2", b"through": str(T0).encode()}
    for f in old:
        rec, raw = v2_record(f, 0 if f.q05 is None else 1)
        recs.append(rec)
        if raw:
            meta[b"j:%d" % f.as_of] = raw
    redis_client.set(keys.forecast_v2("AAPL"), b"".join(recs))
    redis_client.hset(keys.forecast_meta_v2("AAPL"), mapping=meta)  # type: ignore[arg-type]
    store = ForecastStore(keys, history_len=120, ttl_s=3600)
    assert migrate(store, redis_client) == {"tickers": 1, "forecasts": 5, "dropped": 0}
    assert store.history_now(redis_client, "AAPL") == {f.as_of: f.to_json() for f in old}
    assert store.calibration_now(redis_client, "AAPL") == {"through": str(T0), "log_s80": repr(f32(0.1)),
                                                           "log_s90": repr(f32(-0.2))}
    assert not redis_client.exists(keys.forecast_v2("AAPL"), keys.forecast_meta_v2("AAPL"))
    raw = [k for k in redis_client.hkeys(keys.forecast_meta("AAPL")) if k.startswith(b"j:")]
    assert sorted(raw) == sorted(b"j:%d" % (T0 + 60 * i) for i in (0, 1, 2, 4))  # v2's sigma/scales, v1: raw
    assert migrate(store, redis_client) == {"tickers": 0, "forecasts": 0, "dropped": 0}  # once


def _has_leaders(kafka: KafkaSettings, topic: str) -> bool:
    try:
        return bool(end_offsets(kafka, topic))
    except KafkaException:
        return False  # just created: a partition's leader is not elected yet


@integration
def test_the_spark_jobs_first_check_converts_a_v1_store_and_says_so(
        redis_client: Any, namespace: str, kafka: KafkaSettings, topics: Topics,
        caplog: pytest.LogCaptureFixture) -> None:
    """An upgrade: the Spark driver's first Redis check (``repair_forecasts``, run before the first batch)
    converts what layout v1 left, in one log line; later checks of the same process do not scan again."""
    keys = Keys(namespace)
    hist = {SERVED.as_of + 60 * i: dataclasses.replace(SERVED, as_of=SERVED.as_of + 60 * i).to_json() for i in range(3)}
    redis_client.hset(keys.forecast_history_v1("AAPL"), mapping=hist)
    redis_client.hset(keys.forecast_v1("AAPL"), mapping={"json": hist[max(hist)]})
    wait_until(lambda: _has_leaders(kafka, topics.forecasts), 30, "the new forecasts topic's leaders")
    with caplog.at_level(logging.WARNING, logger="streams.repair"):
        repair_forecasts(redis_client, kafka, namespace, 120, 3600)
    assert [r.getMessage() for r in caplog.records if "upgraded" in r.getMessage()] == [
        "forecast store upgraded: 1 tickers converted to layout v3 (4 forecasts, 0 unreadable dropped) in "
        + caplog.records[0].getMessage().rsplit(" in ", 1)[1]]
    store = ForecastStore(keys)
    assert store.history_now(redis_client, "AAPL") == hist
    redis_client.hset(keys.forecast_history_v1("AAPL"), mapping=hist)  # not looked for again by this process
    caplog.clear()
    repair_forecasts(redis_client, kafka, namespace, 120, 3600)
    assert not [r for r in caplog.records if "upgraded" in r.getMessage()]


@integration
def test_cli_readers_get_the_served_forecasts_even_on_a_text_client(
        redis_client: Any, redis_settings: RedisSettings, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``minutecast forecast`` and ``status`` (ops/forecast.py) read through the store; ``status`` hands it a
    ``decode_responses`` client, which must not try to read the binary records as text."""
    keys = Keys(namespace)
    msft = dataclasses.replace(SERVED, ticker="MSFT", forecast_at=SERVED.forecast_at + 1)
    ForecastStore(keys).write_now(redis_client, [(SERVED, None), (msft, None)])
    text_client = connect(redis_settings, decode_responses=True)
    monkeypatch.setattr(fs, "CHUNK", 1)  # one script call per ticker, all in one pipeline
    assert sorted(forecast_times(text_client, keys)) == [SERVED.forecast_at, msft.forecast_at]
    monkeypatch.setenv("MINUTECAST_NAMESPACE", namespace)
    assert fetch(["AAPL", "MSFT", "NVDA"]) == {"AAPL": SERVED, "MSFT": msft, "NVDA": None}
