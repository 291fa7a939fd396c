"""Upgrades of the forecast store: layouts v1 and v2 converted into :mod:`minutecast.forecast_store`'s (v3).

    from minutecast.forecast_migrate import migrate
    migrate(store, client)   # the Spark job's start-up does this (streams.repair.migrate_forecasts)

* **v2** (``ns:fc2:{T}`` records of :data:`V2` = 102 bytes, ``ns:fc2m:{T}`` meta hash): each record is
  decoded here, with v2's own offsets, into the Forecast JSON it stood for (byte for byte: v2 kept that
  promise too), and its calibration fields are carried over.
* **v1** (``ns:fc:{T}`` latest hash, ``ns:fchist:{T}`` history of JSON, ``ns:calib:{T}`` calibration).

Either way the JSON values go into v3 as they are: a ticker without v3 keys is built and set in one
transaction (:meth:`ForecastStore.queue_built`); one that has some goes through the serving write, record by
record. The old keys are deleted last, in the same pipeline, so the migration is idempotent and safe to
interrupt. A forecast written by an older version whose sigma or scales v3 cannot rebuild bit for bit is
stored raw (its JSON in the meta hash), never changed; such records age out of the history as new ones come.
A value that is not a forecast of its ticker is dropped and counted.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from minutecast.errors import Rejected
from minutecast.forecast_lua import TICK, WRITE_LUA
from minutecast.forecast_store import ForecastStore, StoreCorrupt, aux_dict, binary, unpack_strings
from minutecast.intervals import OnlineScale
from minutecast.redis import text
from minutecast.schemas import Forecast
from minutecast.window import HORIZON

# v2's record: as_of u32, flags u8 (1 has checksum, 2 raw, 4 no published_at), string id u8, window_ready_at
# f64, checksum 8 bytes, published_at and forecast_at as i32 ticks after window_ready_at, then predicted_close
# (= q50), last_close, q05, q10, q90, q95, sigma, log_s80, log_s90 as f64.
V2 = struct.Struct("<IBBd8sii9d")
_CALIB = ("through", "log_s80", "log_s90")


def decode_v2(ticker: str, rec: bytes, meta: Mapping[bytes, bytes]) -> bytes:
    """One v2 record (with its meta hash) -> the Forecast JSON it was written from."""
    (as_of, flags, sid, ready, _, pub, at, pc, last, q05, q10, q90, q95, sigma, s80, s90) = V2.unpack(rec)
    if flags & 2:
        js = meta.get(b"j:%d" % as_of)
        if not js:
            raise StoreCorrupt(f"{ticker}: v2 raw record {as_of} without its JSON")
        return js
    strs = meta.get(b"s:%d" % sid)
    if strs is None:
        raise StoreCorrupt(f"{ticker}: v2 record {as_of} names string set {sid}, which is not stored")
    mv, mk, ik = unpack_strings(strs)
    return Forecast(ticker=ticker, as_of=as_of, horizon_min=HORIZON, predicted_close=pc, last_close=last,
                    model_version=mv or "", model_kind=mk or "",
                    published_at=None if flags & 4 else ready + pub * TICK,
                    window_ready_at=ready, forecast_at=ready + at * TICK, q05=q05, q10=q10, q50=pc, q90=q90,
                    q95=q95, sigma=sigma, interval_kind=ik, log_s80=s80, log_s90=s90,
                    window_checksum=rec[14:22].hex() if flags & 1 else None).to_json()


def _read_v2(client: Any, store: ForecastStore, t: str) -> tuple[list[bytes], dict[str, str], tuple[str, ...]]:
    old = (store.keys.forecast_v2(t), store.keys.forecast_meta_v2(t))
    pipe = client.pipeline(transaction=False)
    pipe.get(old[0])
    pipe.hgetall(old[1])
    blob, meta = pipe.execute()
    blob = bytes(blob or b"")
    if len(blob) % V2.size:
        raise StoreCorrupt(f"{old[0]}: {len(blob)} bytes is not a whole number of v2 records")
    meta = aux_dict([x for kv in meta.items() for x in kv])
    values = []
    for i in range(0, len(blob), V2.size):
        try:
            values.append(decode_v2(t, blob[i:i + V2.size], meta))
        except StoreCorrupt:
            values.append(b"")  # counted as dropped below
    return values, {k: text(meta[k.encode()]) for k in _CALIB if k.encode() in meta}, old


def _read_v1(client: Any, store: ForecastStore, t: str) -> tuple[list[bytes], dict[str, str], tuple[str, ...]]:
    keys = store.keys
    old = (keys.forecast_v1(t), keys.forecast_history_v1(t), keys.calibration_v1(t))
    pipe = client.pipeline(transaction=False)
    pipe.hget(old[0], "json")
    pipe.hgetall(old[1])
    pipe.hgetall(old[2])
    latest, hist, calib = pipe.execute()
    values = [v for _, v in sorted(hist.items(), key=lambda kv: int(kv[0]))] + ([latest] if latest else [])
    return values, {k: text(calib[k.encode()]) for k in _CALIB if k.encode() in calib}, old


def _tickers(client: Any, patterns: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    for pat in patterns:
        found |= {text(k)[len(pat) - 1:] for k in client.scan_iter(match=pat, count=1000)}
    return found


def migrate(store: ForecastStore, client: Any) -> dict[str, int]:
    """Convert every ticker's v2 and v1 keys into the store's layout, then delete them (module docstring).
    Returns {"tickers", "forecasts", "dropped"} (a ticker counted once per old layout it had)."""
    client = binary(client)
    counts = {"tickers": 0, "forecasts": 0, "dropped": 0}
    layouts = ((_read_v2, (store.keys.forecast_v2_pattern(),)), (_read_v1, store.keys.forecast_v1_patterns()))
    for read, patterns in layouts:
        for t in sorted(_tickers(client, patterns)):
            values, text_fields, old = read(client, store, t)
            # the calibration as the serving write keeps it (float32-exact scales), not an older spelling
            fields = {k: str(v) if k == "through" else repr(v)
                      for k, v in OnlineScale.from_dict(dict(text_fields)).to_dict().items()} if text_fields else {}
            items = []
            for js in values:
                try:
                    f: Forecast | None = Forecast.from_json(js) if js else None
                except Rejected:
                    f = None
                if f is None or f.ticker != t:
                    counts["dropped"] += 1
                else:
                    items.append((f, bytes(js)))
            has_new = client.exists(*store.pair(t))
            pipe = client.pipeline(transaction=not has_new)
            if has_new:
                sha = store.queue_load(pipe)[WRITE_LUA]
                for f, js in items:
                    store.queue_write(pipe, sha, f, None, js)
                if fields:
                    store.queue_calibration(pipe, sha, t, fields)
            else:
                store.queue_built(pipe, t, items, fields)
            pipe.delete(*old)
            pipe.execute()
            counts["tickers"] += 1
            counts["forecasts"] += len(items)
    return counts
