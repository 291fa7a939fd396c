"""The producer watermark: per ticker, the minute up to which everything was delivered, kept in Redis.

One protocol for every source that resumes (the yfinance source and the replay, plain or ``--as-if-live``):

* :class:`Watermarks` reads each ticker's watermark (:meth:`minutecast.keys.Keys.producer_watermark`, a
  string of epoch seconds) once, at start;
* :meth:`Watermarks.above` keeps the bars of a frame above their ticker's watermark, so a restarted or
  overlapping producer never publishes a minute twice;
* :meth:`Watermarks.send` hands a piece to :func:`producers.delivery.deliver` (publish, wait for every ack,
  re-send exactly the bars whose delivery failed) and then moves the watermarks of the piece's tickers
  (:meth:`Watermarks.commit`): only when the whole piece was handed over (no stop mid-piece), and never
  past a minute whose delivery still failed (it stays *held*: the watermark stops just below it, so a
  restart sends it again). What still fails after the re-sends raises :class:`DeliveryFailed` (exit code 1;
  compose's ``restart: on-failure`` then resumes below the held minute).

The yfinance source also keeps :class:`Published`, the minutes of a trailing window it already published
(Yahoo delivers some bars late: a re-fetch of the window publishes them once, never a published one twice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import pandas as pd

from minutecast.keys import Keys
from producers.bars import PRICES
from producers.delivery import DeliveryFailed, Sink, deliver

log = logging.getLogger(__name__)

__all__ = ["DeliveryFailed", "Published", "Watermarks"]
PUBLISHED_TTL_S = 30 * 86400  # a ticker no longer polled loses its set of published minutes after this


class RedisPipeline(Protocol):
    def set(self, name: str, value: int) -> Any: ...

    def zadd(self, name: str, mapping: dict[str, int]) -> Any: ...

    def zremrangebyscore(self, name: str, min: float | str, max: float | str) -> Any: ...

    def zrange(self, name: str, start: int, end: int) -> Any: ...

    def expire(self, name: str, time: int) -> Any: ...

    def execute(self) -> Any: ...


class WatermarkRedis(Protocol):
    """The part of a ``redis.Redis`` client the watermarks use."""

    def mget(self, keys: list[str]) -> Any: ...

    def pipeline(self, transaction: bool = True) -> RedisPipeline: ...


def published_key(namespace: str, ticker: str) -> str:
    """``ns:producer:pub:{T}`` (``Keys.producer_published``), a sorted set of minutes: see :class:`Published`."""
    return Keys(namespace).producer_published(ticker)


class Watermarks:
    """The watermarks of ``tickers`` in ``namespace``, read from Redis at construction.

    ``label`` names the source in log lines. ``watermarks`` is the current {ticker: minute} map (tickers
    without one are absent); ``held`` the {ticker: minutes} whose delivery failed and was not made good yet.
    """

    def __init__(self, redis: WatermarkRedis, namespace: str, tickers: Iterable[str], label: str = "producer") -> None:
        self.redis = redis
        self.keys = Keys(namespace)
        self.label = label
        names = list(dict.fromkeys(tickers))
        values = self.redis.mget([self.keys.producer_watermark(t) for t in names]) if names else []
        self.watermarks: dict[str, int] = {t: int(v) for t, v in zip(names, values, strict=True) if v is not None}
        self.held: dict[str, set[int]] = {}

    def newest(self) -> int | None:
        """The newest watermark of any ticker, None when there is none."""
        return max(self.watermarks.values()) if self.watermarks else None

    def above(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The bars of ``frame`` above their ticker's watermark."""
        if frame.empty or not self.watermarks:
            return frame
        return frame[self.above_mask(frame["ticker"], frame["minute"].to_numpy(dtype="int64"))]

    def above_mask(self, tickers: pd.Series, minutes: np.ndarray) -> np.ndarray:
        """Which of the (ticker, minute) rows lie above their ticker's watermark."""
        return minutes > tickers.map(self.watermarks).fillna(-1).to_numpy(dtype="int64")

    def send(self, pub: Sink, piece: pd.DataFrame, source: str, now: float | None = None, *,
             sleep: Callable[[float], None] = time.sleep) -> int:
        """Deliver ``piece`` whole (re-sending failed bars), then move its tickers' watermarks; raises
        :class:`DeliveryFailed` when bars are still undelivered (their tickers' watermarks stay below them).
        Returns the bars sent."""
        d = deliver(pub, piece, source, now, sleep=sleep)
        if d.complete:
            self.commit(piece, d.failed)
        if not d.failed.empty:
            raise DeliveryFailed(f"{len(d.failed)} bars of {d.failed['ticker'].nunique()} tickers still undelivered "
                                 "after every re-send (the watermarks stay below them: a restart sends them again)")
        return d.sent

    def commit(self, piece: pd.DataFrame, failed: pd.DataFrame, *, through: int | None = None,
               covered_from: int | None = None, tickers: Iterable[str] = (), nan_rows_count: bool = True) -> bool:
        """Move watermarks after ``piece`` was delivered; ``failed``: its rows still undelivered.

        Without ``through`` each ticker of the piece moves to its newest minute in the piece (all-NaN rows
        too, unless ``nan_rows_count=False``). With ``through`` (the yfinance source: every minute up to it
        was fetched, from ``covered_from`` on) the piece's tickers and ``tickers`` move to ``through``. Never
        past a held minute: one whose delivery failed, here or in an earlier piece, until a later piece
        delivers it (or, with ``covered_from``, a fetch covering it no longer has it). Returns False when some
        ticker holds a minute.
        """
        bad = failed.groupby("ticker")["minute"].agg(set) if not failed.empty else pd.Series(dtype=object)
        done = piece if failed.empty else piece.drop(failed.index, errors="ignore")
        done_by = done.groupby("ticker")["minute"].agg(set) if not done.empty else pd.Series(dtype=object)
        names = set(piece["ticker"].astype(str)) | set(tickers)
        for t in names & (set(self.held) | set(bad.index)):
            held = (self.held.get(t, set()) - done_by.get(t, set())) | bad.get(t, set())
            if covered_from is not None and through is not None:
                present = set(piece["minute"][piece["ticker"] == t].astype("int64"))
                held = {m for m in held if m in present or not covered_from <= m <= through}
            if held:
                self.held[t] = held
            else:
                self.held.pop(t, None)
        if through is not None:
            targets = dict.fromkeys(names, through)
        else:
            seen = piece if nan_rows_count else piece[~piece[PRICES].isna().all(axis=1)]
            targets = {str(t): int(m) for t, m in seen.groupby("ticker")["minute"].max().items()}
        updates = {}
        for t, target in targets.items():
            if t in self.held:
                first = min(self.held[t])
                below = piece["minute"][(piece["ticker"] == t) & (piece["minute"] < first)]
                target = min(target, first - 60) if through is not None else int(below.max()) if len(below) else -1
            if target > self.watermarks.get(t, -1):
                updates[t] = target
        if updates:
            pipe = self.redis.pipeline(transaction=False)
            for t, m in updates.items():
                pipe.set(self.keys.producer_watermark(t), m)
            pipe.execute()
            self.watermarks.update(updates)
        return not any(t in self.held for t in names)


class Published:
    """Per ticker, the minutes published recently (a Redis sorted set each, :func:`published_key`).

    The yfinance source re-fetches a trailing window every poll; a minute of it is published when it is
    not in here yet (a late bar), and never again once it is. Bounded: :meth:`add` drops the minutes that
    neither the window nor the watermark needs any more, and the key expires after PUBLISHED_TTL_S.
    """

    def __init__(self, redis: WatermarkRedis, namespace: str, tickers: Iterable[str]) -> None:
        self.redis = redis
        self.namespace = namespace
        names = list(dict.fromkeys(tickers))
        pipe = redis.pipeline(transaction=False)
        for t in names:
            pipe.zrange(published_key(namespace, t), 0, -1)
        got = pipe.execute() if names else []
        self.minutes: dict[str, set[int]] = {t: {int(m) for m in ms} for t, ms in zip(names, got, strict=True) if ms}

    def seen(self, frame: pd.DataFrame) -> np.ndarray:
        """A mask of the rows of ``frame`` whose minute was published."""
        out = np.zeros(len(frame), dtype=bool)
        if frame.empty or not self.minutes:
            return out
        known = self.minutes
        minutes = frame["minute"].to_numpy(dtype="int64")
        idx = np.flatnonzero(minutes >= min(min(ms) for ms in known.values()))  # only these can be known
        tick = frame["ticker"].to_numpy()
        out[idx] = [int(minutes[i]) in known.get(str(tick[i]), ()) for i in idx]
        return out

    def add(self, rows: pd.DataFrame, keep_from: dict[str, int]) -> None:
        """Record the minutes of ``rows`` as published; per ticker of ``keep_from`` drop minutes before its value."""
        pipe = self.redis.pipeline(transaction=False)
        for t, ms in (rows.groupby("ticker")["minute"].agg(set).items() if not rows.empty else ()):
            t = str(t)
            new = {int(m) for m in ms} - self.minutes.get(t, set())
            if new:
                self.minutes.setdefault(t, set()).update(new)
                pipe.zadd(published_key(self.namespace, t), {str(m): m for m in new})
                pipe.expire(published_key(self.namespace, t), PUBLISHED_TTL_S)
        for t, cut in keep_from.items():
            have = self.minutes.get(t)
            if have and min(have) < cut:
                have.difference_update({m for m in have if m < cut})
                pipe.zremrangebyscore(published_key(self.namespace, t), "-inf", f"({cut}")
                if not have:
                    del self.minutes[t]
        pipe.execute()
