"""The Spark job's bulk row decoder (:func:`streams.window_store.rows_array`) is the window store's row
format read row by row (:func:`~streams.window_store.decode_row`): the same minutes and the same floats bit
for bit, in the same order, and the same windows cut from them. Pure logic: no services."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from minutecast.schemas import Bar
from minutecast.window import MAX_FILL, RETAIN, WINDOW
from streams.window_store import (
    TickerResult,
    array_slots,
    decode_row,
    encode_value,
    row_slots,
    rows_array,
    rows_arrays,
    windows_for,
)
from tests.support.inference import MARKET, T0, bars_for

PRICE = st.floats(min_value=1e-6, max_value=1e7, allow_nan=False, allow_infinity=False)
PUB = st.one_of(st.none(), st.floats(min_value=1e9, max_value=4e9, allow_nan=False))


@st.composite
def stored(draw: st.DrawFn) -> dict[bytes, bytes]:
    """A ticker's window hash as Redis returns it: minute -> encode_value(bar), in any order."""
    minutes = draw(st.lists(st.integers(0, 5000), unique=True, max_size=90))
    out = {}
    for m in minutes:
        bar = Bar("AAA", T0 + 60 * m, draw(PRICE), draw(PRICE), draw(PRICE), draw(PRICE),
                  draw(st.floats(min_value=0, max_value=1e12)), "replay", draw(PUB))
        out[str(bar.minute).encode()] = encode_value(bar).encode()
    return out


def same_bits(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or np.float64(a).tobytes() == np.float64(b).tobytes()


@settings(max_examples=300, deadline=None, database=None)
@given(stored())
def test_rows_array_is_decode_row_bit_for_bit(h: dict[bytes, bytes]) -> None:
    ref = sorted(decode_row(k, v) for k, v in h.items())
    got = rows_array(list(h.keys()), list(h.values()))
    assert got.shape == (len(ref), 7)
    for r, g in zip(ref, got, strict=True):
        assert int(g[0]) == r.minute
        want = [*r[1:6], math.nan if r.published_at is None else r.published_at]
        assert all(same_bits(x, y) for x, y in zip(want, g[1:], strict=True)), (r, g)
    a, b = row_slots(ref), array_slots(got)
    assert np.array_equal(a.minutes, b.minutes)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(stored(), max_size=6))
def test_rows_arrays_of_many_tickers_are_rows_array_of_each(hashes: list[dict[bytes, bytes]]) -> None:
    """One parse over all tickers' rows splits back into exactly what each ticker's own parse gives."""
    got = rows_arrays([(list(h.keys()), list(h.values())) for h in hashes])
    assert len(got) == len(hashes)
    for h, g in zip(hashes, got, strict=True):
        want = rows_array(list(h.keys()), list(h.values()))
        assert g.shape == want.shape and g.tobytes() == want.tobytes()


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from([1] * 40 + [2, 3, MAX_FILL + 1, 7, 60, 900]), min_size=WINDOW - 5,
                max_size=RETAIN + 5), st.integers(0, 2**31))
@example([1] * 70, 0).via("no fills: the window's first bar needs the one before it")
@example([1] * 9 + [2] + [1] * 60, 1).via("one fill at the window's start")
@example([1] * 30 + [60] + [1] * 40, 2).via("a collapsed gap inside the window")
def test_the_newest_window_plus_one_rows_announce_what_the_whole_store_does(steps: list[int], seed: int) -> None:
    """The worker's store call returns only the newest WINDOW + 1 rows of a ticker: the announcement (minute,
    window, checksum, publish time) is the one the ticker's whole stored history gives."""
    minutes = T0 + 60 * np.cumsum([0, *steps])
    rng = np.random.default_rng(seed)
    rows = np.column_stack([minutes, rng.uniform(1, 2, (len(minutes), 5)), rng.uniform(1e9, 2e9, len(minutes))])
    rows[rng.random(len(minutes)) < 0.2, 6] = np.nan  # some bars without a publish time
    whole = TickerResult("AAA", int(minutes[-1]), None, None, rows=rows)
    view = TickerResult("AAA", int(minutes[-1]), None, None, rows=rows[-(WINDOW + 1):])
    want, got = whole.ready_window(), view.ready_window()
    assert (want is None) == (got is None)
    if want is not None and got is not None:
        assert want[0] == got[0] == minutes[-1] and want[2] == got[2] and want[3] == got[3]
        assert want[1].tobytes() == got[1].tobytes()


def test_windows_from_arrays_equal_windows_from_rows() -> None:
    """The Spark job's path (arrays, str values as well as bytes) cuts the windows the row path cuts."""
    h = {t: {str(b.minute).encode(): encode_value(b).encode() for b in bars_for(t, range(70), seed=i)}
         for i, t in enumerate(["AAA", "BBB", MARKET])}
    rows = {t: sorted(decode_row(k, v) for k, v in x.items()) for t, x in h.items()}
    arrays = {t: rows_array([k.decode() for k in x], [v.decode() for v in x.values()]) for t, x in h.items()}
    minutes = [T0 + 60 * 65, T0 + 60 * 69]
    ref = windows_for([rows["AAA"], rows["BBB"]], minutes, rows[MARKET])
    got = windows_for([arrays["AAA"], arrays["BBB"]], minutes, arrays[MARKET])
    assert all(r is not None and g is not None and np.array_equal(r, g) for r, g in zip(ref, got, strict=True))
    assert windows_for([np.empty((0, 7))], [minutes[0]], None) == [None]
