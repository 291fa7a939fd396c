"""Rejection-only JSON decoding: the building blocks every decoder of :mod:`minutecast.schemas` uses.

Each helper returns a value or raises :class:`minutecast.errors.Rejected` with a reason code, never
another exception, whatever the input: oversized or non-UTF-8 bytes, deep nesting (``RecursionError``
in the json module), ``NaN``/``Infinity`` literals, numbers that overflow a float (``1e999``, a 400-digit
integer), booleans where numbers belong. Property-based tests: ``tests/test_decoders_fuzz.py``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from minutecast.errors import Rejected

# AAPL, BRK-B, BF.B. \A..\Z: "AAPL\n" is not a ticker (``$`` matches before a final newline); use
# :func:`is_ticker` (fullmatch).
TICKER_RE = re.compile(r"\A[A-Z][A-Z0-9]{0,5}([.\-][A-Z0-9]{1,3})?\Z")
MAX_KEY_BYTES = 16  # a Kafka key longer than this is not a ticker: "bad_key" (and cut in the dead letter)
MIN_TIME = 946_684_800  # 2000-01-01 UTC: bars before this are "too_old"
MAX_TIME = 4_102_444_800  # 2100-01-01 UTC: no clock of ours reads later; bounds every timestamp's plausibility
FUTURE_SLACK_S = 120  # a bar may start at most this far past our clock (clock skew)
PUBLISHED_SLACK_S = 600  # a bar's published_at may be at most this far past our clock (clock skew)
MAX_DEPTH = 32  # JSON nesting deeper than this is refused ("too_deep"); our messages have depth 1
MAX_INT = 2**53  # integers beyond this are not exact as floats: refused ("number_too_long")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # a JSON string literal (brackets inside don't nest)


def _refuse_constant(name: str) -> float:
    raise Rejected("non_finite", f"{name} is not a finite number")


def _depth(raw: bytes) -> int:
    """Greatest bracket nesting of ``raw`` outside string literals (only called on suspicious input)."""
    depth = top = 0
    for ch in _STRING.sub(b'""', raw):
        if ch in b"[{":
            depth += 1
            top = max(top, depth)
        elif ch in b"]}":
            depth -= 1
    return top


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)  # built once: json.loads(**kw) builds one per call


def loads(raw: bytes | str | None, limit: int) -> Any:
    """JSON text of at most ``limit`` bytes -> Python value. Reasons: payload_too_large, not_utf8,
    not_json, too_deep, non_finite."""
    if raw is None:
        raise Rejected("not_json", "no value (tombstone)")
    if isinstance(raw, str):
        try:
            raw = raw.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate
            raise Rejected("not_utf8", str(exc)[:80]) from exc
    elif not isinstance(raw, bytes | bytearray | memoryview):
        raise Rejected("wrong_type", f"message is {type(raw).__name__}, not bytes")
    raw = bytes(raw)
    if len(raw) > limit:
        raise Rejected("payload_too_large", f"{len(raw)} bytes > {limit}")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise Rejected("not_utf8", str(exc)[:80]) from exc
    # Cheap test first (two C-level counts): only input with many brackets is scanned for its depth.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(raw) > MAX_DEPTH:
        raise Rejected("too_deep", f"JSON nested deeper than {MAX_DEPTH}")
    try:
        # NaN/Infinity literals are refused here; 1e999 parses as inf and is refused by number().
        return _DECODER.decode(text)
    except Rejected:
        raise
    except RecursionError as exc:
        raise Rejected("too_deep", "JSON nested too deep") from exc
    except ValueError as exc:  # JSONDecodeError, and ints over Python's 4300-digit limit
        raise Rejected("not_json", str(exc)[:80]) from exc


def obj(value: Any, what: str = "message") -> dict[str, Any]:
    """``value`` as a JSON object, else ``not_object``."""
    if not isinstance(value, dict):
        raise Rejected("not_object", f"{what} is {type(value).__name__}, not an object")
    return value


def number(value: Any, name: str) -> float:
    """A finite JSON number (not a bool) as float. Reasons: wrong_type, number_too_long, non_finite."""
    if type(value) is float and value - value == 0.0:  # the hot path: x - x is nan for nan and +-inf
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected("wrong_type", f"{name} must be a number")
    if isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise Rejected("number_too_long", f"{name} has {len(str(abs(value)))} digits")
        return float(value)
    if not math.isfinite(value):
        raise Rejected("non_finite", f"{name} is not finite")
    return value


def integer(value: Any, name: str) -> int:
    """A JSON integer (not a bool, not 1.0) within +-2**53. Reasons: wrong_type, number_too_long."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Rejected("wrong_type", f"{name} must be an integer")
    if not -MAX_INT <= value <= MAX_INT:
        raise Rejected("number_too_long", f"{name} has {len(str(abs(value)))} digits")
    return value


def text(value: Any, name: str, max_len: int, reason: str = "bad_text") -> str:
    """A non-empty printable string of at most ``max_len`` characters: no NUL or other control
    characters, no bidi overrides or zero-width characters (Unicode categories C* and Z* except the
    space), no lone surrogates. Reasons: wrong_type, ``reason``."""
    if not isinstance(value, str):
        raise Rejected("wrong_type", f"{name} must be a string")
    if not value or len(value) > max_len or not value.isprintable():
        raise Rejected(reason, f"{name} {value[:20]!r} is empty, longer than {max_len} or not printable")
    return value


def is_ticker(value: object) -> bool:
    """True for a string that is a whole ticker (full match: no trailing newline)."""
    return isinstance(value, str) and TICKER_RE.fullmatch(value) is not None


def iso_minute(epoch_s: int) -> str:
    """Epoch seconds -> ``2025-10-01T13:30:00Z`` (``"<n>s"`` outside datetime's years 1..9999)."""
    try:
        return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        return f"{epoch_s}s"


def parse_time(value: Any) -> int:
    """ISO-8601 (any offset) or epoch seconds -> integer epoch seconds (UTC)."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise Rejected("wrong_type", "time must be an ISO-8601 string")
    if len(value) > 40:
        raise Rejected("bad_timestamp", f"time {value[:40]!r}... is too long")
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            raise Rejected("bad_timestamp", "time has no UTC offset")
        ts = dt.timestamp()
    except (ValueError, OverflowError, OSError) as exc:
        raise Rejected("bad_timestamp", f"unparseable time {value[:40]!r}") from exc
    if ts != int(ts):
        raise Rejected("not_minute_aligned", f"{value} has fractional seconds")
    return int(ts)


def check_published_at(value: Any, now: float) -> float | None:
    """None, or a publish time (epoch s) within [MIN_TIME, min(max(now, wall clock) + PUBLISHED_SLACK_S,
    MAX_TIME)]. published_at is always a real-time stamp (replays too), so a caller's ``now`` for the bar's
    minute (a test's fixed clock) cannot make it implausible; ``now`` may be inf (training reads history)."""
    if value is None:
        return None
    p = number(value, "published_at")
    if not MIN_TIME <= p <= min(max(now, time.time()) + PUBLISHED_SLACK_S, MAX_TIME):
        raise Rejected("bad_published_at", f"published_at {p!r} is not a plausible time")
    return p


def check_key(key: bytes | str | None, ticker: str) -> None:
    """A bar record's Kafka key must be its ticker: ``bad_key`` when absent, oversized or not a ticker,
    ``key_mismatch`` when another ticker."""
    if key is None:
        raise Rejected("bad_key", "the record has no key (the bar topic is keyed by ticker)")
    if len(key) > MAX_KEY_BYTES:
        raise Rejected("bad_key", f"key of {len(key)} bytes is not a ticker")
    if isinstance(key, bytes | bytearray):
        try:
            key = bytes(key).decode()
        except UnicodeDecodeError as exc:
            raise Rejected("bad_key", "key is not UTF-8") from exc
    if not is_ticker(key):
        raise Rejected("bad_key", f"key {key!r} is not a ticker")
    if key != ticker:
        raise Rejected("key_mismatch", f"key {key!r} != ticker {ticker!r}")


def plausible_minute(value: Any, name: str) -> int:
    m = integer(value, name)
    if not MIN_TIME <= m <= MAX_TIME:
        raise Rejected("bad_timestamp", f"{name} {m} is not a time between 2000 and 2100")
    if m % 60:
        raise Rejected("not_minute_aligned", f"{name} {m} is not on a minute")
    return m


def stamp(value: Any, name: str) -> float:
    """A non-negative finite epoch-seconds stamp (forecasts' and events' own clocks)."""
    x = number(value, name)
    if x < 0 or x > MAX_TIME:
        raise Rejected("bad_timestamp", f"{name} {x!r} is not a time")
    return x


def header(d: dict[str, Any], what: str, required: Mapping[int, Sequence[str]]) -> int:
    """Check a decoded message's schema version (``v``, one of ``required``'s keys) and that the fields the
    version requires are there; returns the version. Raises only :class:`Rejected`."""
    v = d.get("v")
    if type(v) is not int or v not in required:
        raise Rejected("schema_version", f"{what} v={str(v)[:20]!r}, expected {'/'.join(map(str, required))}")
    missing = [f for f in required[v] if f not in d]
    if missing:
        raise Rejected("missing_field", ",".join(missing))
    return v
