"""Bar frames: the columnar form every source produces, their validation and their fast JSON encoding.

A *bar frame* is a pandas DataFrame with the columns :data:`COLUMNS`: ``ticker`` (str), ``minute``
(int64 epoch seconds, the bar's start, UTC), ``open high low close volume`` (float64). Sources build
frames; :func:`check` splits one into valid bars, dead letters and dropped NaN rows (validation is
:meth:`minutecast.schemas.Bar.validate`, the one definition); :func:`encode` turns valid rows into
message bodies byte-identical to :meth:`Bar.to_json` without the closing ``published_at`` field,
which the publisher appends at send time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from minutecast.errors import Rejected
from minutecast.schemas import Bar
from minutecast.schemas.bar_wire import encoder_template, stamp_template

COLUMNS = ["ticker", "minute", "open", "high", "low", "close", "volume"]
PRICES = ["open", "high", "low", "close"]


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "minute" else ("object" if c == "ticker" else "float64"))
                         for c in COLUMNS})


@dataclass
class RejectedRow:
    """A row that failed validation: the error, its payload (JSON of the raw row) and its key."""

    error: Rejected
    payload: bytes
    key: str


@dataclass
class Checked:
    valid: pd.DataFrame  # rows that passed Bar.validate, in input order
    rejected: list[RejectedRow] = field(default_factory=list)
    nan_rows: int = 0  # rows whose prices were all NaN (yfinance's filler for minutes without trades)
    duplicates: int = 0  # exact repeats of an earlier (ticker, minute) row, dropped


def _raw_payload(row: dict[str, object]) -> bytes:
    return json.dumps(row, separators=(",", ":"), default=str).encode()


def check(frame: pd.DataFrame, source: str, now: float | None = None) -> Checked:
    """Split ``frame`` into valid rows, rejected rows (for the dead-letter topic) and NaN rows.

    A row whose four prices are all NaN is a *NaN row* (yfinance fills minutes a ticker did not trade
    with them in multi-ticker frames): counted and dropped. Any other failure of
    :meth:`Bar.validate` (a partial NaN included) is rejected with its reason code. A repeated
    (ticker, minute) is dropped when identical and rejected as ``conflicting_duplicate`` otherwise.
    """
    if frame.empty:
        return Checked(frame)
    prices = frame[PRICES].to_numpy(dtype="float64")
    nan_mask = np.isnan(prices).all(axis=1)
    nan_rows = int(nan_mask.sum())
    if nan_rows:
        frame = frame[~nan_mask]
    out = Checked(frame, nan_rows=nan_rows)
    now = time.time() if now is None else now  # once, not per bar

    bad = np.zeros(len(frame), dtype=bool)
    cols = [frame[c].tolist() for c in COLUMNS]
    for i, (t, m, o, h, lo, c, v) in enumerate(zip(*cols, strict=True)):
        try:
            Bar(t, int(m), o, h, lo, c, v, source).validate(now)
        except Rejected as err:
            bad[i] = True
            row = {"ticker": t, "minute": int(m), "open": o, "high": h, "low": lo, "close": c, "volume": v,
                   "source": source}
            out.rejected.append(RejectedRow(err, _raw_payload(row), str(t)))
        except (TypeError, ValueError) as exc:  # a non-string ticker or a non-numeric cell
            bad[i] = True
            row = {"ticker": str(t), "minute": str(m), "source": source}
            out.rejected.append(RejectedRow(Rejected("wrong_type", str(exc)[:80]), _raw_payload(row), str(t)))

    dup = frame.duplicated(["ticker", "minute"], keep="first").to_numpy() & ~bad
    if dup.any():
        exact = frame.duplicated(COLUMNS, keep="first").to_numpy()
        out.duplicates = int((dup & exact).sum())
        for i in np.flatnonzero(dup & ~exact):
            r = frame.iloc[int(i)]
            row = {c: (r[c] if c == "ticker" else float(r[c])) for c in COLUMNS} | {"source": source}
            out.rejected.append(RejectedRow(Rejected("conflicting_duplicate",
                                                         f"{r['ticker']} minute {int(r['minute'])} seen twice"),
                                         _raw_payload(row), str(r["ticker"])))
    drop = bad | dup
    out.valid = frame[~drop] if drop.any() else frame
    return out


def encode(frame: pd.DataFrame, source: str) -> tuple[list[bytes], list[bytes]]:
    """Keys and *open* bodies of valid rows: ``Bar.to_json()`` minus its closing ``}``.

    The publisher appends ``,"published_at":<epoch s>}`` (see :func:`stamp_suffix`); the result
    equals ``Bar(..., published_at=p).to_json()`` byte for byte. The format is the wire format's one
    definition (:func:`minutecast.schemas.bar_wire.encoder_template`): tickers passed validation, so they
    need no JSON escaping; floats use ``repr`` exactly as ``json.dumps`` does.
    """
    if frame.empty:
        return [], []
    template = encoder_template(source)
    iso = (frame["minute"].to_numpy(dtype="int64").astype("datetime64[s]").astype(str)).tolist()
    tick = frame["ticker"].tolist()
    o, h, lo, c, v = (frame[n].to_numpy(dtype="float64").tolist() for n in ("open", "high", "low", "close", "volume"))
    bodies = [(template % row).encode() for row in zip(tick, iso, o, h, lo, c, v, strict=True)]
    keys = [t.encode() for t in tick]
    return keys, bodies


_STAMP = stamp_template()


def stamp_suffix(published_at: float) -> bytes:
    """The tail of an encoded bar: its publish time (epoch s, ms resolution) and the closing brace."""
    return (_STAMP % round(published_at, 3)).encode()


def sort_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Event-time order: by minute, then ticker (stable, so a ticker's own rows keep their order)."""
    return frame.sort_values(["minute", "ticker"], kind="stable", ignore_index=True)
