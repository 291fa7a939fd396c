"""Message schemas (versioned JSON) and their validation, shared by every service.

Every message carries ``"v"`` (schema version). Every decoder here (:func:`parse_bar`,
:func:`parse_bar_record`, :meth:`WindowReady.from_json`, :meth:`Forecast.from_dict` / ``from_json``,
:meth:`DeadLetter.from_json`) returns a value or raises :class:`minutecast.errors.Rejected` (alias
``ValidationError``) whose ``reason`` is one of :data:`REASONS`, never another exception, whatever the
input (fuzzed in ``tests/test_decoders_fuzz.py``); dead letters carry that code so operators can count
and filter them. Text fields are refused, not cleaned, when they hold control, bidi-override or
zero-width characters (``bad_source`` for a bar's ``source``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from minutecast import decoding
from minutecast.decoding import FUTURE_SLACK_S as FUTURE_SLACK_S
from minutecast.decoding import MAX_KEY_BYTES as MAX_KEY_BYTES
from minutecast.decoding import MAX_TIME as MAX_TIME
from minutecast.decoding import MIN_TIME as MIN_TIME
from minutecast.decoding import PUBLISHED_SLACK_S as PUBLISHED_SLACK_S
from minutecast.decoding import TICKER_RE as TICKER_RE
from minutecast.decoding import is_ticker as is_ticker
from minutecast.decoding import iso_minute as iso_minute
from minutecast.decoding import parse_time as parse_time
from minutecast.errors import Rejected

BAR_VERSION = 1
FORECAST_VERSION = 2  # v2 adds quantiles, sigma, interval_kind and the online scales (additive)
READY_VERSION = 1
DEADLETTER_VERSION = 1

# Quantile levels of the close at t + HORIZON that v2 forecasts carry (the 80% interval is q10..q90, the 90%
# interval q05..q95, q50 the point forecast) and their field names on the topic and in Redis.
QUANTILES = (0.05, 0.10, 0.50, 0.90, 0.95)
QUANTILE_FIELDS = ("q05", "q10", "q50", "q90", "q95")

MAX_PAYLOAD_BYTES = 4096  # a bar is ~200 bytes; anything this big is not a bar
MAX_EVENT_BYTES = 65_536  # window-ready events, forecasts and dead letters (a dead letter is < ~16 kB)
MAX_PRICE = 10_000_000.0  # dollars; above this a price is a unit or parsing error
MAX_VOLUME = 1e11  # shares in one minute; more is a unit error
DL_PAYLOAD_BYTES = 2048  # a dead letter keeps this much of the rejected payload
DL_KEY_CHARS = 64  # ... and this much of its key

REASONS = (
    "payload_too_large",
    "not_utf8",
    "not_json",
    "too_deep",  # JSON nested deeper than decoding.MAX_DEPTH
    "not_object",
    "schema_version",
    "missing_field",
    "unknown_field",
    "wrong_type",
    "number_too_long",  # an integer beyond +-2**53 (e.g. 400 digits: would overflow a float)
    "bad_ticker",
    "unknown_ticker",  # a ticker outside the allowlist (MINUTECAST_TICKER_ALLOWLIST, minutecast.universe)
    "bad_key",  # a bar record without a Kafka key, or whose key is not a ticker (keys must be the ticker)
    "key_mismatch",
    "bad_source",  # a bar's source is empty, over 64 characters, or holds control/bidi/zero-width characters
    "bad_text",  # the same for a forecast's model_version / model_kind
    "bad_timestamp",
    "bad_published_at",  # published_at not within [MIN_TIME, now + PUBLISHED_SLACK_S] (or after MAX_TIME)
    "not_minute_aligned",
    "future_timestamp",
    "too_old",
    "out_of_range",  # a forecast's horizon_min outside [1, 1440]
    "non_finite",
    "non_positive_price",
    "absurd_price",
    "high_below_low",
    "open_close_outside_range",
    "negative_volume",
    "absurd_volume",
    "conflicting_duplicate",
    "nan_row",
    "store_error",  # the window store's script refused this one bar (a Redis script error; see faust_app)
    "window_missing",  # inference: a window-ready event whose window is gone from Redis (and not superseded)
    "quantile_order",  # a forecast's quantiles decrease (q05 <= q10 <= q50 <= q90 <= q95 required), or sigma < 0
    "median_mismatch",  # a v2 forecast whose predicted_close is not its median q50
    "unknown_interval_kind",  # a v2 forecast's interval_kind is not one of INTERVAL_KINDS
)
# Where a v2 forecast's interval comes from: the promoted model's quantiles, or the calibrated window-vol
# baseline (persistence served before any model, or a model output that was non-finite or crossing).
INTERVAL_KINDS = ("lstm", "baseline")

_BAR_FIELDS = ("v", "ticker", "time", "open", "high", "low", "close", "volume", "source")
_BAR_OPTIONAL = ("published_at",)


@dataclass(frozen=True, slots=True)
class Bar:
    """One 1-minute OHLCV bar. ``minute`` is the bar's start in epoch seconds (UTC, multiple of 60)."""

    ticker: str
    minute: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    source: str
    published_at: float | None = None  # producer's clock when it published (epoch s), for latency

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": BAR_VERSION,
            "ticker": self.ticker,
            "time": iso_minute(self.minute),
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
            "source": self.source,
        }
        if self.published_at is not None:
            d["published_at"] = self.published_at
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    def validate(self, now: float | None = None, allowed: frozenset[str] | None = None) -> Bar:
        """Check the values; raise :class:`Rejected` with a reason code. Returns self. ``allowed``: the
        ticker allowlist (None: any ticker)."""
        if not is_ticker(self.ticker):
            raise Rejected("bad_ticker", f"{str(self.ticker)[:20]!r} is not a ticker")
        if allowed is not None and self.ticker not in allowed:
            raise Rejected("unknown_ticker", f"{self.ticker} is not in the ticker allowlist")
        if self.minute % 60:
            raise Rejected("not_minute_aligned", f"{iso_minute(self.minute)} is not on a minute")
        if self.minute < MIN_TIME:
            raise Rejected("too_old", f"{iso_minute(self.minute)} is before 2000")
        now = time.time() if now is None else now
        if self.minute > now + FUTURE_SLACK_S or self.minute >= MAX_TIME:  # MAX_TIME: also when now = inf
            raise Rejected("future_timestamp", f"{iso_minute(self.minute)} is in the future")
        decoding.text(self.source, "source", 64, "bad_source")
        decoding.check_published_at(self.published_at, now)
        prices = (self.open, self.high, self.low, self.close)
        if not all(math.isfinite(p) for p in prices) or not math.isfinite(self.volume):
            raise Rejected("non_finite", "NaN or infinite price or volume")
        if min(prices) <= 0:
            raise Rejected("non_positive_price", f"min price {min(prices)}")
        if max(prices) > MAX_PRICE:
            raise Rejected("absurd_price", f"max price {max(prices)}")
        if self.high < self.low:
            raise Rejected("high_below_low", f"high {self.high} < low {self.low}")
        if not (self.low <= self.open <= self.high and self.low <= self.close <= self.high):
            raise Rejected("open_close_outside_range", "open/close outside [low, high]")
        if self.volume < 0:
            raise Rejected("negative_volume", f"volume {self.volume}")
        if self.volume > MAX_VOLUME:
            raise Rejected("absurd_volume", f"volume {self.volume}")
        return self


def parse_bar(raw: bytes | str | None, key: bytes | str | None = None, now: float | None = None,
              allowed: frozenset[str] | None = None) -> Bar:
    """Decode and validate one bar message; ``key`` (when given) must equal its ticker. Raises only
    :class:`Rejected` with a reason code. Records read from the bar topic use :func:`parse_bar_record`."""
    d = decoding.obj(decoding.loads(raw, MAX_PAYLOAD_BYTES))
    v = d.get("v")
    if type(v) is not int or v != BAR_VERSION:
        raise Rejected("schema_version", f"v={str(v)[:20]!r}, expected {BAR_VERSION}")
    missing = [f for f in _BAR_FIELDS if f not in d]
    if missing:
        raise Rejected("missing_field", ",".join(missing))
    unknown = set(d) - set(_BAR_FIELDS) - set(_BAR_OPTIONAL)
    if unknown:
        raise Rejected("unknown_field", ",".join(sorted(unknown))[:80])
    ticker, source = d["ticker"], d["source"]
    if not isinstance(ticker, str) or not isinstance(source, str):
        raise Rejected("wrong_type", "ticker and source must be strings")
    published = d.get("published_at")
    bar = Bar(
        ticker=ticker,
        minute=parse_time(d["time"]),
        open=decoding.number(d["open"], "open"),
        high=decoding.number(d["high"], "high"),
        low=decoding.number(d["low"], "low"),
        close=decoding.number(d["close"], "close"),
        volume=decoding.number(d["volume"], "volume"),
        source=decoding.text(source, "source", 64, "bad_source")[:32],
        published_at=None if published is None else decoding.number(published, "published_at"),
    ).validate(now, allowed)
    if key is not None:
        decoding.check_key(key, ticker)
    return bar


def parse_bar_record(key: bytes | str | None, value: bytes | str | None, now: float | None = None,
                     allowed: frozenset[str] | None = None) -> Bar:
    """A record of the bar topic: :func:`parse_bar` with the key required (a missing key is ``bad_key``).
    Used by the Faust worker, the rebuild and training, so all three accept exactly the same records."""
    bar = parse_bar(value, None, now, allowed)
    decoding.check_key(key, bar.ticker)
    return bar


_READY_FIELDS = ("ticker", "minute", "checksum", "ready_at")


@dataclass(frozen=True, slots=True)
class WindowReady:
    """The Faust app's announcement that ``ticker``'s window ending at ``minute`` is complete in Redis."""

    ticker: str
    minute: int  # epoch seconds of the window's last bar (as-of minute t)
    checksum: str  # hex digest of the window's contents: a version of the window
    published_at: float | None  # producer publish time of the bar at t (epoch s)
    ready_at: float  # when the Redis write was durable (epoch s)

    def to_json(self) -> bytes:
        d = {"v": READY_VERSION, **asdict(self), "time": iso_minute(self.minute)}
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> WindowReady:
        """Decode one event; raises only :class:`Rejected` (extra fields such as ``time`` are ignored)."""
        d = decoding.obj(decoding.loads(raw, MAX_EVENT_BYTES))
        v = d.get("v")
        if type(v) is not int or v != READY_VERSION:
            raise Rejected("schema_version", f"window-ready v={str(v)[:20]!r}")
        missing = [f for f in _READY_FIELDS if f not in d]
        if missing:
            raise Rejected("missing_field", ",".join(missing))
        if not is_ticker(d["ticker"]):
            raise Rejected("bad_ticker", f"{str(d['ticker'])[:20]!r} is not a ticker")
        decoding.text(d["checksum"], "checksum", 64, "wrong_type")
        pub = d.get("published_at")
        return cls(d["ticker"], decoding.plausible_minute(d["minute"], "minute"), d["checksum"],
                   None if pub is None else decoding.stamp(pub, "published_at"),
                   decoding.stamp(d["ready_at"], "ready_at"))


_FORECAST_V1 = ("ticker", "as_of", "horizon_min", "predicted_close", "last_close", "model_version", "model_kind",
                "window_ready_at", "forecast_at")  # required in every version (published_at may be null)
_FORECAST_V2 = (*QUANTILE_FIELDS, "sigma", "interval_kind", "log_s80", "log_s90")  # required in v2


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast of ``ticker``'s close ``horizon_min`` minutes after the as-of minute.

    v2 (additive over v1): ``q05 .. q95`` are prices of the close at the target minute at the levels of
    :data:`QUANTILES` (80% interval q10..q90, 90% interval q05..q95) and ``predicted_close`` is the median
    ``q50``; ``sigma`` is the std of the 5-minute log move implied by the 80% interval,
    ``(log q90 - log q10) / (2 z_0.9)``; ``interval_kind`` is ``"lstm"`` or ``"baseline"``; ``log_s80`` /
    ``log_s90`` the ticker's online-calibration scales (:class:`minutecast.intervals.OnlineScale`) that
    were applied. A v1 forecast (decoded from an old message) has these None; :meth:`to_dict` writes v1
    for it and v2 otherwise.
    """

    ticker: str
    as_of: int  # epoch seconds of the last bar in the window (minute t)
    horizon_min: int  # minutes ahead: the forecast is for the close of minute t + horizon
    predicted_close: float  # v2: = q50
    last_close: float  # close at t (what persistence would forecast)
    model_version: str  # registry version, or "persistence" before any model is promoted
    model_kind: str  # "lstm" or "persistence"
    published_at: float | None  # bar publish time at the producer (epoch s)
    window_ready_at: float  # Faust made the window durable (epoch s)
    forecast_at: float  # model output ready (epoch s)
    q05: float | None = None  # prices ($) of the close at t + horizon
    q10: float | None = None
    q50: float | None = None
    q90: float | None = None
    q95: float | None = None
    sigma: float | None = None  # std of log(close_{t+h} / close_t) implied by the 80% interval (log units)
    interval_kind: str | None = None  # one of INTERVAL_KINDS
    log_s80: float | None = None  # online-calibration log scales applied to the 80% / 90% intervals
    log_s90: float | None = None

    @property
    def target_minute(self) -> int:
        return self.as_of + 60 * self.horizon_min

    @property
    def version(self) -> int:
        return 1 if self.q50 is None else FORECAST_VERSION

    @property
    def quantiles(self) -> tuple[float, ...] | None:
        """(q05, q10, q50, q90, q95) prices, or None for a v1 forecast."""
        q = tuple(getattr(self, f) for f in QUANTILE_FIELDS)
        return None if any(x is None for x in q) else q

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.version == 1:
            for f in _FORECAST_V2:
                d.pop(f)
        return {"v": self.version, **d, "as_of_time": iso_minute(self.as_of),
                "target_time": iso_minute(self.target_minute)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: Any) -> Forecast:
        """v1 or v2 (extra fields such as ``as_of_time`` are ignored). Raises only :class:`Rejected`
        with a reason of :data:`REASONS`; v2 is validated strictly, v1 leniently as v1 readers always did."""
        d = decoding.obj(d, "forecast")
        v = d.get("v", 0)
        if type(v) is str and v in ("1", "2"):  # v1-era hashes held numbers as text
            v = int(v)
        if type(v) is not int or v not in (1, FORECAST_VERSION):
            raise Rejected("schema_version", f"forecast v={str(v)[:20]!r}")
        required = _FORECAST_V1 + (_FORECAST_V2 if v == 2 else ())
        missing = [f for f in required if f not in d]
        if missing:
            raise Rejected("missing_field", ",".join(missing))
        if v == 1:
            return cls._from_v1(d)
        bad = [n for n in ("ticker", "model_version", "model_kind", "interval_kind") if not isinstance(d[n], str)]
        if bad:
            raise Rejected("wrong_type", f"{','.join(bad)}: wrong type")
        if not is_ticker(d["ticker"]):
            raise Rejected("bad_ticker", f"{d['ticker'][:20]!r} is not a ticker")
        as_of = decoding.plausible_minute(d["as_of"], "as_of")
        horizon = decoding.integer(d["horizon_min"], "horizon_min")
        if not 1 <= horizon <= 1440:
            raise Rejected("out_of_range", f"horizon_min {horizon} is not within [1, 1440]")
        for n in ("model_version", "model_kind"):
            decoding.text(d[n], n, 64)
        pub = d.get("published_at")
        pub = None if pub is None else decoding.stamp(pub, "published_at")
        nums = {n: decoding.number(d[n], n) for n in ("predicted_close", "last_close", *QUANTILE_FIELDS, "sigma",
                                                      "log_s80", "log_s90")}
        stamps = {n: decoding.stamp(d[n], n) for n in ("window_ready_at", "forecast_at")}
        q = [nums[f] for f in QUANTILE_FIELDS]
        if min(q) <= 0 or nums["last_close"] <= 0:
            raise Rejected("non_positive_price", f"quantiles {q}, last_close {nums['last_close']}")
        if any(b < a for a, b in zip(q, q[1:], strict=False)) or nums["sigma"] < 0:
            raise Rejected("quantile_order", f"quantiles {q}, sigma {nums['sigma']}")
        if nums["predicted_close"] != nums["q50"]:
            raise Rejected("median_mismatch", f"predicted_close {nums['predicted_close']} != q50 {nums['q50']}")
        if d["interval_kind"] not in INTERVAL_KINDS:
            raise Rejected("unknown_interval_kind", f"{d['interval_kind'][:20]!r}")
        return cls(ticker=d["ticker"], as_of=as_of, horizon_min=horizon,
                   predicted_close=nums["predicted_close"], last_close=nums["last_close"],
                   model_version=d["model_version"], model_kind=d["model_kind"], published_at=pub,
                   window_ready_at=stamps["window_ready_at"], forecast_at=stamps["forecast_at"],
                   q05=q[0], q10=q[1], q50=q[2], q90=q[3], q95=q[4], sigma=nums["sigma"],
                   interval_kind=d["interval_kind"], log_s80=nums["log_s80"], log_s90=nums["log_s90"])

    @classmethod
    def _from_v1(cls, d: dict[str, Any]) -> Forecast:
        """Lenient as v1 readers always were (numbers as text; old latest hashes held "None" for null),
        but still only a value or :class:`Rejected`: finite numbers, a plausible as-of minute."""
        pub = d.get("published_at")
        try:
            strs = {n: str(d[n])[:64] for n in ("ticker", "model_version", "model_kind")}
            ints = {n: int(d[n]) for n in ("as_of", "horizon_min")}
            nums = {n: float(d[n]) for n in ("predicted_close", "last_close", "window_ready_at", "forecast_at")}
            nums["published_at"] = math.nan if pub in (None, "", "None") else float(pub)
        except (TypeError, ValueError, OverflowError) as exc:
            raise Rejected("wrong_type", f"v1 forecast field: {str(exc)[:80]}") from exc
        bad = [n for n, x in nums.items() if not math.isfinite(x) and not (n == "published_at" and pub in
                                                                          (None, "", "None"))]
        if bad:
            raise Rejected("non_finite", ",".join(bad))
        if not MIN_TIME <= ints["as_of"] <= MAX_TIME or not 0 < ints["horizon_min"] <= 1440:
            raise Rejected("out_of_range", f"as_of {ints['as_of']} / horizon_min {ints['horizon_min']}")
        return cls(ticker=strs["ticker"], as_of=ints["as_of"], horizon_min=ints["horizon_min"],
                   predicted_close=nums["predicted_close"], last_close=nums["last_close"],
                   model_version=strs["model_version"], model_kind=strs["model_kind"],
                   published_at=None if pub in (None, "", "None") else nums["published_at"],
                   window_ready_at=nums["window_ready_at"], forecast_at=nums["forecast_at"])

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Forecast:
        """Decode one forecast message; raises only :class:`Rejected`."""
        return cls.from_dict(decoding.loads(raw, MAX_EVENT_BYTES))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message and why, bounded in size whatever was rejected: ``payload`` is cut to
    :data:`DL_PAYLOAD_BYTES` and ``key`` to :data:`DL_KEY_CHARS` (``truncated`` says either was cut), so
    a dead letter always fits the producer's request limit (< ~16 kB as JSON)."""

    reason: str  # one of REASONS
    detail: str
    stage: str  # "producer", "stream", "infer"
    source_topic: str | None
    partition: int | None
    offset: int | None
    key: str | None
    payload: str
    truncated: bool
    at: float

    @classmethod
    def of(
        cls,
        err: Rejected,
        payload: bytes | str | None,
        stage: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | str | None = None,
    ) -> DeadLetter:
        raw = payload if isinstance(payload, bytes) else (payload or "").encode(errors="replace")
        text = raw[:DL_PAYLOAD_BYTES].decode(errors="replace")
        cut = len(raw) > DL_PAYLOAD_BYTES
        k = None
        if key is not None:
            kb = key if isinstance(key, bytes) else key.encode(errors="replace")
            k = kb[:DL_KEY_CHARS].decode(errors="replace")
            cut = cut or len(kb) > DL_KEY_CHARS
        return cls(err.reason, err.detail[:200], stage, topic, partition, offset, k, text, cut, time.time())

    @property
    def kafka_key(self) -> bytes | None:
        """The key to publish this dead letter under: the rejected record's ticker key, else none."""
        return self.key.encode() if self.key is not None and is_ticker(self.key) else None

    def to_json(self) -> bytes:
        return json.dumps({"v": DEADLETTER_VERSION, **asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> DeadLetter:
        """Decode a dead letter (operators' tools, tests); raises only :class:`Rejected`."""
        d = decoding.obj(decoding.loads(raw, MAX_EVENT_BYTES))
        v = d.get("v")
        if type(v) is not int or v != DEADLETTER_VERSION:
            raise Rejected("schema_version", f"dead letter v={str(v)[:20]!r}")
        missing = [f for f in ("reason", "detail", "stage", "payload", "truncated", "at") if f not in d]
        if missing:
            raise Rejected("missing_field", ",".join(missing))
        if d["reason"] not in REASONS:
            raise Rejected("wrong_type", f"unknown reason {str(d['reason'])[:40]!r}")
        strs = [n for n in ("detail", "stage", "payload") if not isinstance(d[n], str)]
        strs += [n for n in ("source_topic", "key") if d.get(n) is not None and not isinstance(d[n], str)]
        if strs or not isinstance(d["truncated"], bool):
            raise Rejected("wrong_type", ",".join(strs) or "truncated")
        pos = {n: None if d.get(n) is None else decoding.integer(d[n], n) for n in ("partition", "offset")}
        return cls(d["reason"], d["detail"][:200], d["stage"][:16], d.get("source_topic"), pos["partition"],
                   pos["offset"], d.get("key"), d["payload"][:DL_PAYLOAD_BYTES], d["truncated"],
                   decoding.stamp(d["at"], "at"))
