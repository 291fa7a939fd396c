"""Replay recorded bars: yfinance CSV layout (plain or .gz) and Parquet, merged in event-time order.

Layouts read:

* ``<dir>/<TICKER>.csv[.gz]`` or ``<TICKER>.parquet``: ``Datetime,Open,High,Low,Close,Adj Close,Volume``
  with an ISO-8601 ``Datetime`` carrying its UTC offset (the ticker is the file name);
* one file in long form with a ``ticker``/``Ticker`` column (CSV or Parquet), ``Datetime`` or
  ``minute`` (epoch s) for time.

All tickers are merged into one frame sorted by (minute, ticker); pacing at ``speed`` x real time
groups the bars of one minute together. A replay resumes after the per-ticker watermarks of
:mod:`producers.watermark` (the yfinance source's too). :func:`load` is the one reader of recorded bars
(training and the benchmarks read with it as well).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from minutecast.errors import ConfigError
from producers.bars import COLUMNS, empty_frame, sort_events

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
_RENAME = {"datetime": "time", "date": "time", "timestamp": "time", "open": "open", "high": "high", "low": "low",
           "close": "close", "volume": "volume", "ticker": "ticker", "symbol": "ticker", "minute": "minute"}


def ticker_of(path: Path) -> str:
    """``AAPL.csv.gz`` -> ``AAPL``."""
    name = path.name
    for suf in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)].upper()
    return path.stem.upper()


def list_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"replay path {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))
    if not files:
        raise ConfigError(f"no {'/'.join(SUFFIXES)} files in {path}")
    return files


def _to_minutes(col: pd.Series) -> np.ndarray:
    """ISO strings with offsets (or tz-aware datetimes) -> int64 epoch seconds. Naive times are refused."""
    if pd.api.types.is_integer_dtype(col):
        return col.to_numpy(dtype="int64")
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        ts = col.dt.tz_convert("UTC")
    else:
        if pd.api.types.is_datetime64_dtype(col):
            raise ConfigError("replay times need a UTC offset; got naive datetimes")
        return _iso_to_epoch(col.astype(str).tolist())
    return ts.to_numpy(dtype="datetime64[s]").astype("int64")


def _iso_to_epoch(values: list[str]) -> np.ndarray:
    """ISO-8601 strings with offsets -> epoch seconds (a time off the minute stays off it and is
    dead-lettered as ``not_minute_aligned`` later). datetime.fromisoformat is ~5x faster than
    pd.to_datetime on mixed -04:00/-05:00 offsets."""
    out = np.empty(len(values), dtype="int64")
    for i, v in enumerate(values):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError as exc:
            raise ConfigError(f"row {i}: unparseable time {v[:40]!r}") from exc
        if dt.tzinfo is None:
            raise ConfigError(f"row {i}: time {v[:40]!r} has no UTC offset")
        out[i] = int(dt.timestamp())
    return out


def read_file(path: Path, ticker: str | None = None) -> pd.DataFrame:
    """One file -> bar frame (unsorted). ``ticker`` defaults to the file name for per-ticker files."""
    if path.name.lower().endswith((".parquet", ".pq")):
        raw = pd.read_parquet(path)
        if isinstance(raw.index, pd.DatetimeIndex):
            raw = raw.reset_index()
    else:
        raw = pd.read_csv(path, dtype={"Volume": "float64", "volume": "float64"})
    raw.columns = [_RENAME.get(str(c).lower().replace(" ", "_"), str(c).lower()) for c in raw.columns]
    out = pd.DataFrame()
    if "ticker" in raw.columns:
        out["ticker"] = raw["ticker"].astype(str)
    else:
        out["ticker"] = np.full(len(raw), ticker or ticker_of(path), dtype=object)
    if "minute" in raw.columns:
        out["minute"] = raw["minute"].to_numpy(dtype="int64")
    elif "time" in raw.columns:
        out["minute"] = _to_minutes(raw["time"])
    else:
        raise ConfigError(f"{path}: no Datetime/minute column (columns: {list(raw.columns)[:8]})")
    for c in ("open", "high", "low", "close", "volume"):
        if c not in raw.columns:
            raise ConfigError(f"{path}: column {c!r} missing")
        out[c] = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype="float64")
    return out[COLUMNS]


def load(path: Path | str, tickers: Iterable[str] | None = None, limit: int | None = None) -> pd.DataFrame:
    """All bars under ``path`` (file or directory) for ``tickers`` (None = all), in event-time order.

    ``limit`` keeps the first ``limit`` bars in event time.
    """
    wanted = {t.upper() for t in tickers} if tickers is not None else None
    frames = []
    for f in list_files(Path(path)):
        if wanted is not None and Path(path).is_dir() and not f.name.lower().endswith((".parquet", ".pq")) \
                and ticker_of(f) not in wanted:
            continue  # per-ticker CSV we do not need: skip reading it
        frame = read_file(f)
        if wanted is not None:
            frame = frame[frame["ticker"].isin(wanted)]
        frames.append(frame)
    if not frames:
        return empty_frame()
    merged = sort_events(pd.concat(frames, ignore_index=True))
    if limit is not None:
        merged = merged.iloc[:limit]
    return merged


def shift_to_now(frame: pd.DataFrame, now: float | None = None) -> pd.DataFrame:
    """Move every bar by the same whole number of minutes so the last one is the last completed minute.

    All bars stay in the past (valid at any speed); relative spacing, and so the replay's pacing, is kept.
    """
    if frame.empty:
        return frame
    now = time.time() if now is None else now
    last_done = int(now // 60) * 60 - 60
    # A bar with a NaN time never gets here: minutes are int64.
    offset = last_done - int(frame["minute"].max())
    out = frame.copy()
    out["minute"] = out["minute"].to_numpy(dtype="int64") + offset
    return out


class StopFlag(Protocol):
    """What a paced source polls to stop early (:attr:`Publisher.stop_requested`, a ``threading.Event``)."""

    def is_set(self) -> bool: ...


def paced(frame: pd.DataFrame, speed: float, stop: StopFlag | None = None,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
          chunk: int = 100_000, origin: tuple[float, int] | None = None) -> Iterator[pd.DataFrame]:
    """Yield the frame in slices: ``chunk`` rows at a time when ``speed`` is 0, else one minute at a time, each
    released ``(minute - first_minute) / speed`` seconds after the start."""
    if frame.empty:
        return
    if speed <= 0:
        for a in range(0, len(frame), chunk):  # chunks keep memory flat and SIGINT responsive
            if stop is not None and stop.is_set():
                return
            yield frame.iloc[a:a + chunk]
        return
    minutes = frame["minute"].to_numpy(dtype="int64")
    cuts = np.flatnonzero(np.diff(minutes)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(frame)]])
    # origin = (clock at start, first minute): lets consecutive frames share one schedule.
    t0, m0 = origin if origin is not None else (clock(), int(minutes[0]))
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        due = t0 + (int(minutes[a]) - m0) / speed
        while True:
            if stop is not None and stop.is_set():
                return
            wait = due - clock()
            if wait <= 0:
                break
            sleep(min(wait, 0.5))
        yield frame.iloc[a:b]
