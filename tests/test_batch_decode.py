"""The worker's fast bar decoder (:func:`streams.batch.fast_bar`) is the reference parser
(:func:`minutecast.schemas.parse_bar_record`) on every record it accepts, and accepts the records our
producers write. Pure logic: no services.

"The same" means the same Bar bit for bit: equal fields of the same types and the same ``repr`` of every
float (so the window store writes byte-identical values, :func:`streams.window_store.encode_bars`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minutecast.errors import Rejected
from minutecast.schemas import Bar, parse_bar_record
from producers.bars import encode, stamp_suffix
from streams.batch import Message, decode, fast_bar
from streams.window_store import encode_bars

NOW = 1_764_000_000.0  # 2025-11-24
BASE = Bar("AAPL", 1_759_325_400, 253.38, 253.5, 252.16, 252.52, 3395.0, "replay", 1_759_325_461.5)
FUZZ = settings(max_examples=3000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def reference(key: bytes | None, value: bytes | None, allowed: frozenset[str] | None = None) -> Bar | str:
    try:
        return parse_bar_record(key, value, NOW, allowed)
    except Rejected as err:
        return err.reason


def same(a: Bar, b: Bar) -> bool:
    """Equal field by field with equal types and float reprs (-0.0 vs 0.0, 1 vs 1.0 count as different)."""
    fa, fb = [getattr(a, f) for f in Bar.__slots__], [getattr(b, f) for f in Bar.__slots__]
    return all(type(x) is type(y) and repr(x) == repr(y) for x, y in zip(fa, fb, strict=True)) \
        and encode_bars([a]) == encode_bars([b])


def check(key: bytes | None, value: bytes | None, allowed: frozenset[str] | None = None) -> Bar | None:
    """The property: whenever fast_bar gives a Bar, the reference gives the same one."""
    fast = fast_bar(key, value, NOW, allowed)
    if fast is not None:
        ref = reference(key, value, allowed)
        assert isinstance(ref, Bar) and same(fast, ref), (value, fast, ref)
    return fast


prices = st.floats(min_value=1e-6, max_value=2e6, allow_nan=False) | st.sampled_from(
    [0.0, -0.0, -1.0, 1e300, math.inf, math.nan, 5e-324, 1.0, 100.0, 253.38])
tickers = st.sampled_from(["AAPL", "BRK.B", "BF-B", "A", "GOOGL", "aapl", "AAPL1234", "TOOLONGX", "X.YZWV"])
minutes = st.integers(min_value=900_000_000, max_value=4_200_000_000)
published = st.none() | st.floats(min_value=9e8, max_value=2e9) | st.sampled_from([0.0, 1e10, math.nan])


@FUZZ
@given(t=tickers, m=minutes, o=prices, h=prices, lo=prices, c=prices, v=prices,
       src=st.sampled_from(["replay", "synthetic", "yfinance", "a" * 33, "x y", ""]), pub=published)
def test_fast_bar_equals_the_reference_on_any_bar_values(t: str, m: int, o: float, h: float, lo: float, c: float,
                                                        v: float, src: str, pub: float | None) -> None:
    bar = Bar(t, m, o, h, lo, c, v, src, pub)
    try:
        raw = bar.to_json()
    except ValueError:  # NaN/inf: json.dumps writes NaN/Infinity literals the decoders refuse
        raw = json.dumps(bar.to_dict()).encode()
    for key in (t.encode(), b"MSFT"):
        fast = check(key, raw)
        ref = reference(key, raw)
        # Never a miss on a bar the reference accepts in our producers' canonical form (Bar.to_json).
        assert (fast is None) == (not isinstance(ref, Bar)), (raw, ref)
    assert check(t.encode(), raw, frozenset({"MSFT"})) is None  # the allowlist applies on the fast path too


def _mutations() -> st.SearchStrategy[bytes]:
    """The canonical JSON of a valid bar, damaged: one field's value replaced by a hostile literal, a field
    dropped or added, whitespace, escapes, reordering, or a byte changed."""
    canon = BASE.to_json().decode()
    fields = list(BASE.to_dict())
    literals = st.sampled_from(["-0", "0", "1", "1E2", "1e999", "-1e999", "NaN", "Infinity", "true", "null",
                                '"1"', "9007199254740993", "123456789012345", "1234567890123456", "01", "1.",
                                ".5", "2.5e-3", '"2025-10-01T13:30:30Z"', '"2025-02-30T13:30:00Z"',
                                '"2025-10-01T24:00:00Z"', '"2025-10-01T13:30:00+00:00"', '"AAPL"', '"A\\u0041PL"',
                                '"AAPL\\n"', "2", "[1]", "{}", " 1"])

    def replace(field: str, lit: str) -> bytes:
        d: dict[str, Any] = BASE.to_dict()
        parts = [f'"{k}":{lit if k == field else json.dumps(d[k])}' for k in d]
        return ("{" + ",".join(parts) + "}").encode()

    def byte_flip(i: int, b: int) -> bytes:
        raw = bytearray(canon.encode())
        raw[i % len(raw)] = b
        return bytes(raw)

    return st.one_of(
        st.builds(replace, st.sampled_from(fields), literals),
        st.builds(byte_flip, st.integers(0, 10_000), st.integers(0, 255)),
        st.sampled_from(fields).map(lambda f: json.dumps({k: v for k, v in BASE.to_dict().items() if k != f},
                                                         separators=(",", ":")).encode()),
        st.just(json.dumps(BASE.to_dict()).encode()),  # with spaces: not canonical, the reference decides
        st.just(json.dumps(dict(reversed(BASE.to_dict().items())), separators=(",", ":")).encode()),
        st.just((canon[:-1] + ',"extra":1}').encode()),
        st.just((canon[:-1] + ',"published_at":1759325461.5}').encode()),  # a duplicate key
        st.binary(max_size=300),
    )


@FUZZ
@given(raw=_mutations(), key=st.sampled_from([b"AAPL", b"MSFT", None, b"AAPL\n", b"A" * 20]))
def test_fast_bar_equals_the_reference_on_damaged_records(raw: bytes, key: bytes | None) -> None:
    fast = check(key, raw)
    if fast is None:  # a miss is allowed (the reference runs); say what the reference made of it
        ref = reference(key, raw)
        assert isinstance(ref, Bar | str)


def test_fast_bar_accepts_what_the_producers_write() -> None:
    frame = pd.DataFrame({"ticker": ["AAPL", "BRK.B", "BF-B"], "minute": [1_759_325_400, 1_759_325_460, 1_759_325_520],
                          "open": [253.38, 480.0, 41.125], "high": [253.5, 481.0, 41.5], "low": [252.16, 479.5, 41.0],
                          "close": [252.52, 480.25, 41.25], "volume": [3395.0, 0.0, 1e7]})
    keys, bodies = encode(frame, "replay")
    for key, body in zip(keys, bodies, strict=True):
        raw = body + stamp_suffix(1_764_000_000.1234)
        fast = check(key, raw)
        assert fast is not None and fast.published_at == 1_764_000_000.123
    assert check(b"AAPL", BASE.to_json()) is not None
    assert check(b"AAPL", Bar("AAPL", BASE.minute, 1.0, 2.0, 1.0, 2.0, 0.0, "synthetic").to_json()) is not None
    # a source longer than the 32 characters a Bar keeps (the reference cuts it): the fast path too, not a miss
    long = check(b"AAPL", Bar("AAPL", BASE.minute, 1.0, 1.0, 1.0, 1.0, 1.0, "a" * 33).to_json())
    assert long is not None and long.source == "a" * 32


def test_decode_of_a_mixed_batch_equals_the_reference_record_by_record() -> None:
    good = [Bar("AAPL", BASE.minute + 60 * i, 253.0 + i, 254.0 + i, 252.0 + i, 253.5 + i, 100.0 * i, "replay",
                1_764_000_000.5) for i in range(5)]
    values: list[tuple[bytes | None, bytes | None]] = [(b.ticker.encode(), b.to_json()) for b in good]
    values += [(b"AAPL", b"{oops"), (b"MSFT", good[0].to_json()), (None, good[1].to_json()), (b"AAPL", None),
               (b"AAPL", json.dumps(good[2].to_dict()).encode())]  # the last: valid, but not canonical
    msgs = [Message(k, v, "bars", 0, i) for i, (k, v) in enumerate(values)]
    bars, origin, dead = decode(msgs, NOW)
    ref = [reference(k, v) for k, v in values]
    assert origin == [i for i, r in enumerate(ref) if isinstance(r, Bar)] == [0, 1, 2, 3, 4, 9]
    assert all(same(b, ref[i]) for b, i in zip(bars, origin, strict=True))  # type: ignore[arg-type]
    assert [d.reason for d in dead] == [r for r in ref if isinstance(r, str)] == [
        "not_json", "key_mismatch", "bad_key", "not_json"]
    assert [d.offset for d in dead] == [5, 6, 7, 8]
