"""Message schemas (versioned JSON) and their validation, shared by every service.

Every message carries ``"v"`` (schema version). Validation raises
:class:`minutecast.errors.ValidationError` whose ``reason`` is one of :data:`REASONS`; dead letters
carry that code so operators can count and filter them.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from minutecast.errors import ValidationError

BAR_VERSION = 1
FORECAST_VERSION = 1
READY_VERSION = 1
DEADLETTER_VERSION = 1

TICKER_RE = re.compile(r"^[A-Z][A-Z0-9]{0,5}([.\-][A-Z0-9]{1,3})?$")  # AAPL, BRK-B, BF.B
MAX_PAYLOAD_BYTES = 4096  # a bar is ~200 bytes; anything this big is not a bar
MAX_PRICE = 10_000_000.0  # dollars; above this a price is a unit or parsing error
MAX_VOLUME = 1e11  # shares in one minute; more is a unit error
MIN_TIME = 946_684_800  # 2000-01-01 UTC: bars before this are "too_old"
FUTURE_SLACK_S = 120  # a bar may start at most this far past our clock (clock skew)

REASONS = (
    "payload_too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "schema_version",
    "missing_field",
    "unknown_field",
    "wrong_type",
    "bad_ticker",
    "key_mismatch",
    "bad_timestamp",
    "not_minute_aligned",
    "future_timestamp",
    "too_old",
    "non_finite",
    "non_positive_price",
    "absurd_price",
    "high_below_low",
    "open_close_outside_range",
    "negative_volume",
    "absurd_volume",
    "conflicting_duplicate",
    "nan_row",
    "window_missing",  # inference: a window-ready event whose window is gone from Redis (and not superseded)
)

_BAR_FIELDS = ("v", "ticker", "time", "open", "high", "low", "close", "volume", "source")
_BAR_OPTIONAL = ("published_at",)


def iso_minute(epoch_s: int) -> str:
    """Epoch seconds -> ``2025-10-01T13:30:00Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> int:
    """ISO-8601 (any offset) or epoch seconds -> integer epoch seconds (UTC)."""
    if isinstance(value, bool):
        raise ValidationError("wrong_type", "time must be an ISO-8601 string")
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError("bad_timestamp", f"unparseable time {value[:40]!r}") from exc
        if dt.tzinfo is None:
            raise ValidationError("bad_timestamp", "time has no UTC offset")
        ts = dt.timestamp()
    else:
        raise ValidationError("wrong_type", "time must be an ISO-8601 string")
    if ts != int(ts):
        raise ValidationError("not_minute_aligned", f"{value} has fractional seconds")
    return int(ts)


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

    def validate(self, now: float | None = None) -> Bar:
        """Check the values; raise :class:`ValidationError` with a reason code. Returns self."""
        if not TICKER_RE.match(self.ticker):
            raise ValidationError("bad_ticker", f"{self.ticker[:20]!r} is not a ticker")
        if self.minute % 60:
            raise ValidationError("not_minute_aligned", f"{iso_minute(self.minute)} is not on a minute")
        if self.minute < MIN_TIME:
            raise ValidationError("too_old", f"{iso_minute(self.minute)} is before 2000")
        now = time.time() if now is None else now
        if self.minute > now + FUTURE_SLACK_S:
            raise ValidationError("future_timestamp", f"{iso_minute(self.minute)} is in the future")
        prices = (self.open, self.high, self.low, self.close)
        if not all(math.isfinite(p) for p in prices) or not math.isfinite(self.volume):
            raise ValidationError("non_finite", "NaN or infinite price or volume")
        if min(prices) <= 0:
            raise ValidationError("non_positive_price", f"min price {min(prices)}")
        if max(prices) > MAX_PRICE:
            raise ValidationError("absurd_price", f"max price {max(prices)}")
        if self.high < self.low:
            raise ValidationError("high_below_low", f"high {self.high} < low {self.low}")
        if not (self.low <= self.open <= self.high and self.low <= self.close <= self.high):
            raise ValidationError("open_close_outside_range", "open/close outside [low, high]")
        if self.volume < 0:
            raise ValidationError("negative_volume", f"volume {self.volume}")
        if self.volume > MAX_VOLUME:
            raise ValidationError("absurd_volume", f"volume {self.volume}")
        return self


def _number(d: dict[str, Any], name: str) -> float:
    value = d[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("wrong_type", f"{name} must be a number")
    return float(value)


def parse_bar(raw: bytes | str, key: bytes | str | None = None, now: float | None = None) -> Bar:
    """Decode and validate one bar message. Raises :class:`ValidationError` with a reason code."""
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise ValidationError("payload_too_large", f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ValidationError("not_utf8", str(exc)[:80]) from exc
    try:
        # NaN/Infinity literals are refused here rather than parsed into floats.
        d = json.loads(text, parse_constant=_refuse_constant)
    except ValidationError:
        raise
    except ValueError as exc:
        raise ValidationError("not_json", str(exc)[:80]) from exc
    if not isinstance(d, dict):
        raise ValidationError("not_object", f"got {type(d).__name__}")
    if d.get("v") != BAR_VERSION:
        raise ValidationError("schema_version", f"v={d.get('v')!r}, expected {BAR_VERSION}")
    missing = [f for f in _BAR_FIELDS if f not in d]
    if missing:
        raise ValidationError("missing_field", ",".join(missing))
    unknown = set(d) - set(_BAR_FIELDS) - set(_BAR_OPTIONAL)
    if unknown:
        raise ValidationError("unknown_field", ",".join(sorted(unknown))[:80])
    ticker, source = d["ticker"], d["source"]
    if not isinstance(ticker, str) or not isinstance(source, str):
        raise ValidationError("wrong_type", "ticker and source must be strings")
    published = d.get("published_at")
    if published is not None and (isinstance(published, bool) or not isinstance(published, int | float)):
        raise ValidationError("wrong_type", "published_at must be a number")
    bar = Bar(
        ticker=ticker,
        minute=parse_time(d["time"]),
        open=_number(d, "open"),
        high=_number(d, "high"),
        low=_number(d, "low"),
        close=_number(d, "close"),
        volume=_number(d, "volume"),
        source=source[:32],
        published_at=None if published is None else float(published),
    )
    if key is not None:
        k = key.decode(errors="replace") if isinstance(key, bytes) else key
        if k != ticker:
            raise ValidationError("key_mismatch", f"key {k[:20]!r} != ticker {ticker[:20]!r}")
    return bar.validate(now)


def _refuse_constant(name: str) -> float:
    raise ValidationError("non_finite", f"{name} is not a finite number")


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
    def from_json(cls, raw: bytes | str) -> WindowReady:
        d = json.loads(raw)
        if d.get("v") != READY_VERSION:
            raise ValidationError("schema_version", f"window-ready v={d.get('v')!r}")
        return cls(d["ticker"], int(d["minute"]), d["checksum"], d.get("published_at"), d["ready_at"])


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast of ``ticker``'s close ``horizon_min`` minutes after the as-of minute."""

    ticker: str
    as_of: int  # epoch seconds of the last bar in the window (minute t)
    horizon_min: int  # minutes ahead: the forecast is for the close of minute t + horizon
    predicted_close: float
    last_close: float  # close at t (what persistence would forecast)
    model_version: str  # registry version, or "persistence" before any model is promoted
    model_kind: str  # "lstm" or "persistence"
    published_at: float | None  # bar publish time at the producer (epoch s)
    window_ready_at: float  # Faust made the window durable (epoch s)
    forecast_at: float  # model output ready (epoch s)

    @property
    def target_minute(self) -> int:
        return self.as_of + 60 * self.horizon_min

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": FORECAST_VERSION,
            **asdict(self),
            "as_of_time": iso_minute(self.as_of),
            "target_time": iso_minute(self.target_minute),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Forecast:
        if int(d.get("v", 0)) != FORECAST_VERSION:
            raise ValidationError("schema_version", f"forecast v={d.get('v')!r}")
        pub = d.get("published_at")
        return cls(
            ticker=str(d["ticker"]),
            as_of=int(d["as_of"]),
            horizon_min=int(d["horizon_min"]),
            predicted_close=float(d["predicted_close"]),
            last_close=float(d["last_close"]),
            model_version=str(d["model_version"]),
            model_kind=str(d["model_kind"]),
            published_at=None if pub in (None, "", "None") else float(pub),
            window_ready_at=float(d["window_ready_at"]),
            forecast_at=float(d["forecast_at"]),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Forecast:
        return cls.from_dict(json.loads(raw))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message and why. ``payload`` is cut to 2 kB (``truncated`` says so)."""

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
        err: ValidationError,
        payload: bytes | str | None,
        stage: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | str | None = None,
    ) -> DeadLetter:
        raw = payload if isinstance(payload, bytes) else (payload or "").encode()
        text = raw[:2048].decode(errors="replace")
        k = key.decode(errors="replace") if isinstance(key, bytes) else key
        return cls(err.reason, err.detail[:200], stage, topic, partition, offset, k, text,
                   len(raw) > 2048, time.time())

    def to_json(self) -> bytes:
        return json.dumps({"v": DEADLETTER_VERSION, **asdict(self)}, separators=(",", ":")).encode()
