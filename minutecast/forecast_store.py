"""The forecast store: the only code that knows the bytes of a ticker's forecasts in Redis (layout v3).

Like Feast's ``RedisOnlineStore``, one class owns the layout, its writes and its reads; the Spark partition,
the repair, the web app, the CLI and the benchmarks all go through :class:`ForecastStore`
(:mod:`minutecast.forecast_migrate` converts older layouts into it).

Two keys per ticker (``ns:fc3:{T}``, ``ns:fc3m:{T}``: :class:`minutecast.keys.Keys`):

* **records** (string): the ticker's forecasts, one fixed record of :data:`R` bytes per as-of minute, sorted
  by as-of, the newest ``history_len`` kept. The newest record *is* the latest forecast (latest moves forward
  in as-of or to a correction of its own as-of, exactly as the history's newest entry does).
* **meta** (hash): the online calibration (``through``, ``log_s80``, ``log_s90``, Python repr text, as
  ``intervals.OnlineScale.to_dict``), the string table (``s:<id>`` = the record's model_version,
  model_kind, interval_kind, each as u16 length + UTF-8; ``i:<strings>`` = its id, 1..127) and, for the
  rare record that has no exact compact form, its Forecast JSON verbatim (``j:<as-of>``).

Record (little endian, :data:`RECORD`, 85 bytes; :mod:`minutecast.forecast_lua` has the offsets): as_of
u32, one byte (top bit :data:`HAS_SUM`, low 7 bits the string id, 0 = raw), window_ready_at f64, window
checksum 8 bytes (16 hex digits; another spelling: its blake2b-64, then the record is raw), published_at
(:data:`NO_PUB`: none) and forecast_at as i32 counts of 2**-22 s after window_ready_at (exact: same binade),
then last_close, q05, q10, q50 (= predicted_close), q90, q95 as f64 and log_s80, log_s90 as f32 (the online
calibration is float32-exact). sigma is :func:`minutecast.intervals.implied_sigma` of q10 and q90. A forecast
is stored compact only if decoding the record gives back its JSON byte for byte (checked on every write:
every field's type and bits, and a given JSON's bytes); otherwise (a v1 forecast, a horizon other than 5,
a timestamp too far from window_ready_at, a sigma or scale of another writer, JSON written by another
encoder) the record is raw and its JSON lives in the meta hash. So a read always returns the exact bytes
that were written or published.

Write rules (:data:`WRITE_LUA`): one forecast per as-of, the first one, unless a *correction* replaces it:
the new one has a checksum, a newer window_ready_at, and the stored one has no or another checksum; the
calibration moves forward only (in ``through``); TTL of both keys renewed. A replay gets the stored record.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from minutecast.errors import MinutecastError, Rejected
from minutecast.forecast_lua import (  # noqa: F401 - re-exported: the store's one import for its users
    HAS_SUM,
    NEWEST_LUA,
    NO_PUB,
    READ_LUA,
    RECORD,
    SCRIPTS,
    SHA,
    TICK,
    WRITE_LUA,
    R,
)
from minutecast.intervals import OnlineScale, f32, implied_sigma
from minutecast.keys import Keys
from minutecast.redis import text
from minutecast.schemas import Forecast
from minutecast.window import HORIZON

_HEX16 = re.compile(rb"[0-9a-f]{16}")
_F64 = struct.Struct("<d")
WRITTEN = {1: "forecasts", 2: "corrections", 0: "replayed"}  # the write script's first value -> counter
CHUNK = 500  # tickers per call of the newest-records script in the *_now readers


class StoreCorrupt(MinutecastError):
    """A forecast key holds bytes this layout did not write (never decoded as something else)."""


# --- the record codec (pure) ------------------------------------------------------------------------------
def pack_strings(*xs: str | None) -> bytes:
    """model_version, model_kind, interval_kind -> the string table's entry (u16 length + UTF-8; 0xFFFF: None)."""
    out = b""
    for x in xs:
        b = b"" if x is None else x.encode()
        out += struct.pack("<H", 0xFFFF if x is None else len(b)) + b
    return out


def unpack_strings(b: bytes) -> list[str | None]:
    out: list[str | None] = []
    pos = 0
    while pos < len(b):
        (n,) = struct.unpack_from("<H", b, pos)
        pos += 2
        out.append(None if n == 0xFFFF else b[pos:pos + n].decode())
        pos += 0 if n == 0xFFFF else n
    if len(out) != 3:
        raise StoreCorrupt(f"string table entry {b[:40]!r} does not hold 3 strings")
    return out


def _tick(v: float, base: float) -> int | None:
    """``v`` as a count of :data:`TICK` after ``base`` if that is exact and fits an i32, else None."""
    k = (v - base) / TICK
    if not k.is_integer() or not NO_PUB < k < 2**31 or _F64.pack(base + int(k) * TICK) != _F64.pack(v):
        return None
    return int(k)


def _sum_bytes(cs: str | None) -> tuple[int, bytes]:
    """The id byte's :data:`HAS_SUM` bit (or 0) and the record's 8 checksum bytes."""
    if cs is None:
        return 0, bytes(8)
    b = cs.encode()
    return HAS_SUM, bytes.fromhex(cs) if _HEX16.fullmatch(b) else hashlib.blake2b(b, digest_size=8).digest()


@dataclass(frozen=True)
class Encoded:
    """A forecast ready for the write script: its record, string-table entry ('' if raw), JSON if raw."""

    record: bytes
    strings: bytes
    raw: bytes


def encode(f: Forecast, js: bytes | None = None) -> Encoded:
    """``f`` (whose JSON is ``js``: the topic's bytes, or ``f.to_json()`` when None) -> its record; compact
    only if :func:`decode` gives that JSON back byte for byte (:func:`_compact`), raw otherwise."""
    flag_sum, sum_b = _sum_bytes(f.window_checksum)
    try:
        return _compact(f, js, flag_sum, sum_b)
    except (struct.error, TypeError, ValueError, OverflowError, UnicodeError, Rejected, StoreCorrupt):
        pass  # no exact compact form: stored raw
    rec = RECORD.pack(f.as_of, flag_sum, f.window_ready_at, sum_b, 0, 0, *([0.0] * 8))  # id 0: raw
    return Encoded(rec, b"", f.to_json() if js is None else js)


_FLOATS = ("predicted_close", "last_close", "q05", "q10", "q50", "q90", "q95", "sigma", "log_s80", "log_s90",
           "window_ready_at", "forecast_at")
_ID = 1  # the string id a record is checked with here; the write script (or a built store) sets the real one
def _compact(f: Forecast, js: bytes | None, flag_sum: int, sum_b: bytes) -> Encoded:
    """The compact record of ``f``, or ValueError. Every field decodes to the same type and bits (so the
    same JSON: ``to_json`` is a function of the fields); ``js`` given (bytes of another writer, such as the
    topic's): decoded and compared byte for byte as well."""
    pub = None if f.published_at is None else _tick(f.published_at, f.window_ready_at)
    at = _tick(f.forecast_at, f.window_ready_at)
    if not (f.version == 2 and type(f.as_of) is int and type(f.horizon_min) is int and f.horizon_min == HORIZON
            and at is not None and (pub is not None or f.published_at is None)
            and all(isinstance(getattr(f, n), float) for n in _FLOATS)
            and (f.published_at is None or isinstance(f.published_at, float))
            and _F64.pack(f.q50) == _F64.pack(f.predicted_close)  # type: ignore[arg-type]
            and _F64.pack(f.log_s80) == _F64.pack(f32(f.log_s80))  # type: ignore[arg-type]
            and _F64.pack(f.log_s90) == _F64.pack(f32(f.log_s90))  # type: ignore[arg-type]
            and _F64.pack(f.sigma) == _F64.pack(implied_sigma(f.q10, f.q90))  # type: ignore[arg-type]
            and all(isinstance(x, str) for x in (f.model_version, f.model_kind, f.interval_kind))
            and (f.window_checksum is None or (isinstance(f.window_checksum, str)
                                               and _HEX16.fullmatch(f.window_checksum.encode()) is not None))):
        raise ValueError("no compact form")
    rec = RECORD.pack(f.as_of, flag_sum | _ID, f.window_ready_at, sum_b, NO_PUB if pub is None else pub, at,
                      f.last_close, f.q05, f.q10, f.q50, f.q90, f.q95, f.log_s80, f.log_s90)
    strs = pack_strings(f.model_version, f.model_kind, f.interval_kind)
    if js is not None and decode(f.ticker, rec, {b"s:%d" % _ID: strs}) != js:
        raise ValueError("the compact form does not give the JSON back")
    return Encoded(rec, strs, b"")


def decode(ticker: str, rec: bytes, aux: Mapping[bytes, bytes]) -> bytes:
    """One record (with the meta fields it needs, keyed ``s:<id>`` / ``j:<as-of>``) -> the Forecast JSON
    that was written."""
    return _decode(ticker, rec, aux, as_json=True)  # type: ignore[return-value]


def decode_forecast(ticker: str, rec: bytes, aux: Mapping[bytes, bytes]) -> Forecast:
    return _decode(ticker, rec, aux, as_json=False)  # type: ignore[return-value]


def _decode(ticker: str, rec: bytes, aux: Mapping[bytes, bytes], *, as_json: bool) -> bytes | Forecast:
    (as_of, idb, ready, _, pub, at, last, q05, q10, q50, q90, q95, s80, s90) = RECORD.unpack(rec)
    sid = idb & ~HAS_SUM
    if sid == 0:
        js = aux.get(b"j:%d" % as_of)
        if not js:
            raise StoreCorrupt(f"{ticker}: raw record {as_of} without its JSON")
        return js if as_json else Forecast.from_json(js)
    strs = aux.get(b"s:%d" % sid)
    if strs is None:
        raise StoreCorrupt(f"{ticker}: record {as_of} names string set {sid}, which is not stored")
    mv, mk, ik = unpack_strings(strs)
    f = Forecast(ticker=ticker, as_of=as_of, horizon_min=HORIZON, predicted_close=q50, last_close=last,
                 model_version=mv or "", model_kind=mk or "",
                 published_at=None if pub == NO_PUB else ready + pub * TICK,
                 window_ready_at=ready, forecast_at=ready + at * TICK, q05=q05, q10=q10, q50=q50, q90=q90, q95=q95,
                 sigma=implied_sigma(q10, q90), interval_kind=ik, log_s80=s80, log_s90=s90,
                 window_checksum=rec[13:21].hex() if idb & HAS_SUM else None)
    return f.to_json() if as_json else f


def binary(client: Any) -> Any:
    """``client`` itself, or a client of the same Redis that returns bytes (the records are binary; a
    ``decode_responses`` client would try to read them as UTF-8)."""
    pool = client.connection_pool
    if not pool.connection_kwargs.get("decode_responses"):
        return client
    return type(client)(connection_pool=type(pool)(connection_class=pool.connection_class,
                                                   **(pool.connection_kwargs | {"decode_responses": False})))


def records(blob: bytes) -> list[bytes]:
    if len(blob) % R:
        raise StoreCorrupt(f"a records value of {len(blob)} bytes is not a multiple of {R}")
    return [blob[i:i + R] for i in range(0, len(blob), R)]


def aux_dict(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {bytes(flat[i]): bytes(flat[i + 1]) for i in range(0, len(flat), 2)}


def as_of_of(rec: bytes) -> int:
    return int(RECORD.unpack_from(rec)[0])


# --- the store ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ForecastStore:
    """Queue-onto-a-pipeline methods (sync or asyncio redis-py pipelines: queuing is synchronous) and
    decoders of their results; ``*_now`` methods are one round trip on a sync client. Script SHAs: load
    :data:`SCRIPTS` once (``client.script_load``, or :meth:`queue_load` in the same pipeline) and pass the SHA."""

    keys: Keys
    history_len: int = 120
    ttl_s: int = 5 * 24 * 3600

    def pair(self, ticker: str) -> list[str]:
        return [self.keys.forecast(ticker), self.keys.forecast_meta(ticker)]

    @staticmethod
    def queue_load(pipe: Any) -> dict[str, str]:
        """Queue SCRIPT LOAD of every script (cheap when loaded); returns their SHAs, usable right after."""
        for src in SCRIPTS:
            pipe.script_load(src)
        return SHA

    # writes
    def queue_write(self, pipe: Any, sha: str, f: Forecast, state: OnlineScale | None = None,
                    js: bytes | None = None) -> Encoded:
        """The serving write of ``f`` and the calibration ``state`` that served it (None: leave it)."""
        e = encode(f, js)
        st = state or OnlineScale()
        pipe.evalsha(sha, 2, *self.pair(f.ticker), e.record, e.strings, e.raw, self.history_len,
                     st.through if state else 0, repr(st.log_s80), repr(st.log_s90), self.ttl_s)
        return e

    def queue_calibration(self, pipe: Any, sha: str, ticker: str, fields: Mapping[str, str]) -> None:
        """Only a calibration state (text fields ``through``/``log_s80``/``log_s90``, moved forward only)."""
        pipe.evalsha(sha, 2, *self.pair(ticker), b"", b"", b"", self.history_len, fields.get("through", "0"),
                     fields.get("log_s80", "0.0"), fields.get("log_s90", "0.0"), self.ttl_s)

    @staticmethod
    def written(f: Forecast, e: Encoded, result: Sequence[Any]) -> tuple[int, bytes]:
        """A write's result -> (1 written / 2 corrected / 0 kept, the JSON Redis holds for that as-of)."""
        code = int(result[0])
        if code:
            return code, e.raw or f.to_json()
        return 0, decode(f.ticker, bytes(result[1]), aux_dict(result[2]))

    def write_now(self, client: Any, forecasts: Iterable[tuple[Forecast, bytes | None]],
                  state: Mapping[str, OnlineScale] | None = None) -> list[tuple[int, bytes]]:
        """Write ``(forecast, its JSON or None)`` pairs in one pipelined round trip (restore, tests, bench)."""
        pipe = binary(client).pipeline(transaction=False)
        sha = self.queue_load(pipe)[WRITE_LUA]
        done = [(f, self.queue_write(pipe, sha, f, (state or {}).get(f.ticker), js)) for f, js in forecasts]
        results = pipe.execute()[len(SCRIPTS):] if done else []
        return [self.written(f, e, r) for (f, e), r in zip(done, results, strict=True)]

    # reads
    def queue_due(self, pipe: Any, sha: str, ticker: str, t: int) -> None:
        """The Spark partition's read: calibration state and the history entries due at as-of ``t``."""
        pipe.evalsha(sha, 2, *self.pair(ticker), t, 60 * HORIZON)

    @staticmethod
    def decode_due(ticker: str, result: Sequence[Any]) -> tuple[OnlineScale, dict[int, Forecast]]:
        through, s80, s90, blob, flat = result
        named = (("through", through), ("log_s80", s80), ("log_s90", s90))
        st: dict[str, object] = {k: text(v) for k, v in named if v}
        aux = aux_dict(flat)
        due: dict[int, Forecast] = {}
        for rec in records(bytes(blob)):
            try:
                due[as_of_of(rec)] = decode_forecast(ticker, rec, aux)
            except Rejected:
                continue  # a raw entry that is not a valid forecast has no served interval to score
        return OnlineScale.from_dict(st), due

    def newest_args(self, tickers: Sequence[str], n: int = 1) -> tuple[list[str], list[int]]:
        """KEYS and ARGV of :data:`NEWEST_LUA` for the newest ``n`` forecasts of each of ``tickers``."""
        return [k for t in tickers for k in self.pair(t)], [n]

    @staticmethod
    def split_newest(tickers: Sequence[str], result: Sequence[Any]) -> dict[str, tuple[bytes, tuple[bytes, ...]]]:
        """:data:`NEWEST_LUA`'s reply -> {ticker: (its records, its aux fields)} for the tickers that have
        forecasts: the undecoded bytes (comparable), for a cache that decodes only what changed
        (:meth:`decode_part`)."""
        return {t: (bytes(result[2 * i]), tuple(bytes(x) for x in result[2 * i + 1]))
                for i, t in enumerate(tickers) if result[2 * i]}

    @staticmethod
    def decode_part(ticker: str, part: tuple[bytes, tuple[bytes, ...]]) -> list[tuple[int, bytes]]:
        """One ticker's :meth:`split_newest` part -> [(as-of, Forecast JSON), oldest first]."""
        blob, flat = part
        aux = aux_dict(flat)
        return [(as_of_of(rec), decode(ticker, rec, aux)) for rec in records(blob)]

    @classmethod
    def decode_newest(cls, tickers: Sequence[str], result: Sequence[Any]) -> dict[str, list[tuple[int, bytes]]]:
        """:data:`NEWEST_LUA`'s reply -> {ticker: [(as-of, Forecast JSON), oldest first]} ([]: none)."""
        parts = cls.split_newest(tickers, result)
        return {t: cls.decode_part(t, parts[t]) if t in parts else [] for t in tickers}

    def newest_now(self, client: Any, tickers: Sequence[str], n: int = 1) -> dict[str, list[tuple[int, bytes]]]:
        """{ticker: [(as-of, Forecast JSON)]} of the newest ``n``, one pipelined round trip (scripts of
        :data:`CHUNK` tickers each, so that Redis is never held long by one)."""
        if not tickers:
            return {}
        pipe = binary(client).pipeline(transaction=False)
        sha = self.queue_load(pipe)[NEWEST_LUA]
        chunks = [list(tickers[i:i + CHUNK]) for i in range(0, len(tickers), CHUNK)]
        for chunk in chunks:
            keys, args = self.newest_args(chunk, n)
            pipe.evalsha(sha, len(keys), *keys, *args)
        results = pipe.execute()[len(SCRIPTS):]
        return {t: v for chunk, res in zip(chunks, results, strict=True)
                for t, v in self.decode_newest(chunk, res).items()}

    def latest_now(self, client: Any, ticker: str) -> bytes | None:
        """The latest forecast's JSON (None: no forecast)."""
        got = self.newest_now(client, [ticker])[ticker]
        return got[-1][1] if got else None

    def history_now(self, client: Any, ticker: str) -> dict[int, bytes]:
        """{as-of: Forecast JSON} of every stored forecast of ``ticker``."""
        return dict(self.newest_now(client, [ticker], self.history_len + 1)[ticker])

    def calibration_now(self, client: Any, ticker: str) -> dict[str, str]:
        """The calibration state's text fields (``through``, ``log_s80``, ``log_s90``; {} when none)."""
        vals = client.hmget(self.keys.forecast_meta(ticker), "through", "log_s80", "log_s90")
        return {k: text(v) for k, v in zip(("through", "log_s80", "log_s90"), vals, strict=True) if v is not None}


    def queue_built(self, pipe: Any, ticker: str, items: list[tuple[Forecast, bytes]], calib: dict[str, str],
                     ) -> None:
        """A ticker's keys built whole (what the serving write would leave after writing ``items`` in order
        to empty keys: the first forecast per as-of, the newest ``history_len``; the calibration if any)."""
        first: dict[int, tuple[Forecast, bytes]] = {}
        for f, js in items:
            first.setdefault(f.as_of, (f, js))
        ids: dict[bytes, int] = {}
        meta: dict[bytes, bytes] = {}
        recs = []
        for as_of in sorted(first)[-self.history_len:] if self.history_len > 0 else []:
            e = encode(*first[as_of])
            sid = ids.setdefault(e.strings, len(ids) + 1) if e.strings else 0
            if sid > 127:
                raise StoreCorrupt(f"{ticker}: over 127 string sets in one history")
            recs.append(e.record[:4] + bytes([e.record[4] & HAS_SUM | sid]) + e.record[5:])
            if e.raw:
                meta[b"j:%d" % as_of] = e.raw
        meta |= {k: v for strs, i in ids.items() for k, v in ((b"s:%d" % i, strs), (b"i:" + strs, b"%d" % i))}
        if float(calib.get("through", "0")) > 0:
            meta |= {b"log_s80": calib.get("log_s80", "0.0").encode(), b"log_s90": calib.get("log_s90", "0.0").encode(),
                     b"through": calib["through"].encode()}
        records_key, meta_key = self.pair(ticker)
        if recs:
            pipe.set(records_key, b"".join(recs), ex=self.ttl_s)
        if meta:
            pipe.hset(meta_key, mapping=meta)  # type: ignore[arg-type]
            pipe.expire(meta_key, self.ttl_s)
