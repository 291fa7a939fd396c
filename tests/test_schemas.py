"""Unit tests of the message schemas and their validation reasons (pure logic, no services)."""

from __future__ import annotations

import json
import math

import pytest

from minutecast.errors import ValidationError
from minutecast.schemas import REASONS, Bar, DeadLetter, Forecast, WindowReady, parse_bar

NOW = 1_764_000_000.0  # 2025-11-24
GOOD = Bar("AAPL", 1_759_325_400, 253.38, 253.5, 252.16, 252.52, 3395.0, "replay", 1_759_325_461.5)


def test_bar_round_trip() -> None:
    assert parse_bar(GOOD.to_json(), key=b"AAPL", now=NOW) == GOOD
    assert json.loads(GOOD.to_json())["time"] == "2025-10-01T13:30:00Z"


def test_time_with_offset_is_utc() -> None:
    d = GOOD.to_dict() | {"time": "2025-10-01T09:30:00-04:00"}
    assert parse_bar(json.dumps(d), now=NOW).minute == GOOD.minute


def _reason(payload: bytes | str, key: str | None = None) -> str:
    with pytest.raises(ValidationError) as info:
        parse_bar(payload, key=key, now=NOW)
    assert info.value.reason in REASONS
    return info.value.reason


def _with(**kw: object) -> str:
    d = GOOD.to_dict()
    for k, v in kw.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json at all", "not_json"),
        (GOOD.to_json()[:40], "not_json"),
        (b"\xff\xfe\x00", "not_utf8"),
        (b"[1, 2]", "not_object"),
        (_with(v=2), "schema_version"),
        (_with(close=...), "missing_field"),
        (_with(extra=1), "unknown_field"),
        (_with(close="252.5"), "wrong_type"),
        (_with(volume=True), "wrong_type"),
        (_with(ticker="aapl"), "bad_ticker"),
        (_with(ticker="TOOLONGTICKER"), "bad_ticker"),
        (_with(time="yesterday"), "bad_timestamp"),
        (_with(time="2025-10-01T13:30:00"), "bad_timestamp"),
        (_with(time="2025-10-01T13:30:17Z"), "not_minute_aligned"),
        (_with(time="2030-01-01T00:00:00Z"), "future_timestamp"),
        (_with(time="1990-01-01T00:00:00Z"), "too_old"),
        (GOOD.to_json().replace(b"252.52", b"NaN"), "non_finite"),
        (GOOD.to_json().replace(b"3395.0", b"Infinity"), "non_finite"),
        (_with(open=-1.0, low=-1.0), "non_positive_price"),
        (_with(low=0.0), "non_positive_price"),
        (_with(high=2e7), "absurd_price"),
        (_with(high=250.0), "high_below_low"),
        (_with(open=260.0), "open_close_outside_range"),
        (_with(volume=-5), "negative_volume"),
        (_with(volume=1e13), "absurd_volume"),
        (b"{" + b" " * 5000 + b"}", "payload_too_large"),
    ],
)
def test_invalid_bars_have_reasons(payload: bytes | str, reason: str) -> None:
    assert _reason(payload) == reason


def test_key_must_match_ticker() -> None:
    assert _reason(GOOD.to_json(), key="MSFT") == "key_mismatch"


def test_forecast_and_ready_round_trip() -> None:
    f = Forecast("AAPL", GOOD.minute, 5, 253.0, 252.52, "persistence", "persistence", 1.0, 2.0, 3.0)
    assert Forecast.from_json(f.to_json()) == f
    assert json.loads(f.to_json())["target_time"] == "2025-10-01T13:35:00Z"
    r = WindowReady("AAPL", GOOD.minute, "abcd", 1.0, 2.0)
    assert WindowReady.from_json(r.to_json()) == r


def test_dead_letter_truncates_and_keeps_reason() -> None:
    err = ValidationError("payload_too_large", "x")
    dl = json.loads(DeadLetter.of(err, b"a" * 10_000, "stream", topic="t", partition=0, offset=5).to_json())
    assert dl["reason"] == "payload_too_large" and dl["truncated"] and len(dl["payload"]) == 2048
    assert dl["offset"] == 5 and not math.isnan(dl["at"])
