"""Bars: the 1-minute OHLCV record on the bar topic, its decoder and the record (key + value) check."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from minutecast import decoding
from minutecast.decoding import FUTURE_SLACK_S, MAX_TIME, MIN_TIME, is_ticker, iso_minute, parse_time
from minutecast.errors import Rejected
from minutecast.schemas.bar_wire import FIELDS, OPTIONAL_FIELDS, SOURCE_KEPT, SOURCE_MAX
from minutecast.schemas.common import BAR_VERSION, MAX_PAYLOAD_BYTES, MAX_PRICE, MAX_VOLUME

_BAR_FIELDS = FIELDS  # the wire format's one definition (minutecast.schemas.bar_wire)
_BAR_OPTIONAL = OPTIONAL_FIELDS


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
        """The JSON object, fields in the wire format's order (:data:`minutecast.schemas.bar_wire.WIRE`)."""
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
        """The reference encoding (the producers' and the worker's fast paths are proven equal to it)."""
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
        decoding.text(self.source, "source", SOURCE_MAX, "bad_source")
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
    decoding.header(d, "bar", {BAR_VERSION: _BAR_FIELDS})
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
        source=decoding.text(source, "source", SOURCE_MAX, "bad_source")[:SOURCE_KEPT],
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
