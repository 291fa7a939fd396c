"""Unit tests of the message schemas and their validation reasons (pure logic, no services)."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from minutecast.decoding import iso_minute
from minutecast.errors import Rejected
from minutecast.schemas import (
    FORECAST_VERSION,
    QUANTILE_FIELDS,
    REASONS,
    Bar,
    DeadLetter,
    Forecast,
    WindowReady,
    parse_bar,
)
from minutecast.schemas.bar_wire import FIELDS, OPTIONAL_FIELDS, canonical_pattern
from minutecast.schemas.forecast import _FORECAST_V2

NOW = 1_764_000_000.0  # 2025-11-24
GOOD = Bar("AAPL", 1_759_325_400, 253.38, 253.5, 252.16, 252.52, 3395.0, "replay", 1_759_325_461.5)


def test_bar_round_trip() -> None:
    assert parse_bar(GOOD.to_json(), key=b"AAPL", now=NOW) == GOOD
    assert json.loads(GOOD.to_json())["time"] == "2025-10-01T13:30:00Z"


def test_bar_json_follows_the_one_wire_definition() -> None:
    # Bar.to_json writes the fields in bar_wire's order, and the fast decoder's pattern (generated from it)
    # takes the reference's bytes, with and without the optional publish time.
    assert tuple(GOOD.to_dict()) == FIELDS + OPTIONAL_FIELDS
    assert tuple(dataclasses.replace(GOOD, published_at=None).to_dict()) == FIELDS
    pattern = re.compile(canonical_pattern())
    for bar in (GOOD, dataclasses.replace(GOOD, published_at=None)):
        g = pattern.match(bar.to_json())
        assert g is not None and g[1] == b"AAPL" and float(g[8]) == bar.close
        assert (g[11] is None) == (bar.published_at is None)


def test_time_with_offset_is_utc() -> None:
    d = GOOD.to_dict() | {"time": "2025-10-01T09:30:00-04:00"}
    assert parse_bar(json.dumps(d), now=NOW).minute == GOOD.minute


def _reason(payload: bytes | str, key: str | None = None) -> str:
    with pytest.raises(Rejected) as info:
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


V1 = Forecast("AAPL", GOOD.minute, 5, 253.0, 252.52, "persistence", "persistence", 1.0, 2.0, 3.0)
V2 = Forecast("AAPL", GOOD.minute, 5, 252.6, 252.52, "20261201T100000Z-0a1b2c3d", "lstm", None, 2.0, 3.0,
              q05=251.9, q10=252.1, q50=252.6, q90=253.05, q95=253.2, sigma=0.00130, interval_kind="lstm",
              log_s80=0.05, log_s90=-0.02)


def test_forecast_and_ready_round_trip() -> None:
    assert Forecast.from_json(V1.to_json()) == V1
    assert json.loads(V1.to_json())["target_time"] == "2025-10-01T13:35:00Z"
    r = WindowReady("AAPL", GOOD.minute, "abcd", 1.0, 2.0)
    assert WindowReady.from_json(r.to_json()) == r


def test_forecast_v2_round_trip_and_v1_compatibility() -> None:
    d = json.loads(V2.to_json())
    assert d["v"] == FORECAST_VERSION == 2 and Forecast.from_json(V2.to_json()) == V2
    assert [d[f] for f in QUANTILE_FIELDS] == list(V2.quantiles or ()) and d["predicted_close"] == d["q50"]
    # v2 is additive: every v1 field keeps its name and meaning, so a v1 reader's fields are all there.
    v1 = json.loads(V1.to_json())
    assert v1["v"] == 1 and set(v1) - {"v"} <= set(d) and not set(QUANTILE_FIELDS) & set(v1)
    # A v1 message (old history, old topic data) decodes with the new fields None.
    old = Forecast.from_json(V1.to_json())
    assert old.quantiles is None and old.sigma is None and old.interval_kind is None and old.version == 1
    # The old latest-hash encoding (every field a string, null as "None") still reads.
    legacy = {k: ("None" if v is None else str(v)) for k, v in v1.items()}
    assert Forecast.from_dict(legacy) == V1


def _v2_reason(**kw: object) -> str:
    d = json.loads(V2.to_json())
    for k, v in kw.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    with pytest.raises(Rejected) as info:
        Forecast.from_json(json.dumps(d))
    assert info.value.reason in REASONS
    return info.value.reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"q90": 252.0}, "quantile_order"),  # q90 < q50
        ({"q05": 252.2}, "quantile_order"),  # q05 > q10: the 90% interval inside the 80% one
        ({"sigma": -0.001}, "quantile_order"),
        ({"q05": -1.0}, "non_positive_price"),
        ({"q10": 0.0, "q05": 0.0}, "non_positive_price"),
        ({"q95": float("inf")}, "non_finite"),
        ({"sigma": float("nan")}, "non_finite"),
        ({"q50": 252.7}, "median_mismatch"),
        ({"interval_kind": "magic"}, "unknown_interval_kind"),
        ({"q10": "252.1"}, "wrong_type"),
        ({"q10": True}, "wrong_type"),
        ({"interval_kind": None}, "wrong_type"),
        ({"as_of": 1.5}, "wrong_type"),
        ({"q95": ...}, "missing_field"),
        ({"log_s80": ...}, "missing_field"),
        ({"v": 3}, "schema_version"),
    ],
)
def test_forecast_v2_validation_reasons(change: dict[str, object], reason: str) -> None:
    assert _v2_reason(**change) == reason


def test_forecast_equal_quantiles_are_allowed_and_non_json_is_refused() -> None:
    flat = Forecast("AAPL", GOOD.minute, 5, 100.0, 100.0, "persistence", "persistence", None, 2.0, 3.0,
                    q05=100.0, q10=100.0, q50=100.0, q90=100.0, q95=100.0, sigma=0.0, interval_kind="baseline",
                    log_s80=0.0, log_s90=0.0)  # a flat window: a zero-width baseline interval
    assert Forecast.from_json(flat.to_json()) == flat
    with pytest.raises(Rejected) as info:
        Forecast.from_json(b"{nope")
    assert info.value.reason == "not_json"


def test_dead_letter_truncates_and_keeps_reason() -> None:
    err = Rejected("payload_too_large", "x")
    dl = json.loads(DeadLetter.of(err, b"a" * 10_000, "stream", topic="t", partition=0, offset=5).to_json())
    assert dl["reason"] == "payload_too_large" and dl["truncated"] and len(dl["payload"]) == 2048
    assert dl["offset"] == 5 and not math.isnan(dl["at"])



def test_forecast_json_is_the_asdict_reference_byte_for_byte() -> None:
    """to_dict reads the fields directly (no asdict deep copy): the bytes of the asdict() it replaced."""
    def reference(f: Forecast) -> bytes:
        d = dataclasses.asdict(f)
        if f.window_checksum is None or f.version == 1:
            d.pop("window_checksum")
        if f.version == 1:
            for name in _FORECAST_V2:
                d.pop(name)
        d = {"v": f.version, **d, "as_of_time": iso_minute(f.as_of), "target_time": iso_minute(f.target_minute)}
        return json.dumps(d, separators=(",", ":")).encode()

    for f in (V1, V2, dataclasses.replace(V2, window_checksum="ab12"), dataclasses.replace(V2, sigma=-0.0)):
        assert f.to_json() == reference(f)
