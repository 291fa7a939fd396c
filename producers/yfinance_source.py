"""yfinance source: backfill the last N days in 7-day chunks, then a live loop, publishing each
(ticker, minute) once and none of them missing.

* ``yf.download`` in batches of ``yf_batch_size`` tickers (yfinance fetches a batch with its own
  threads); every call goes through one :class:`producers.throttle.Throttle` shared by all processes.
* Only completed bars are published: a minute whose end was at least ``settle_s`` (``live_delay_s``)
  before the request (Yahoo also returns the minute in progress, and a just-closed one may still change;
  the window store keeps the first value of a minute, so a partial bar must never go out).
* Per ticker, the watermark in Redis (:class:`producers.watermark.Watermarks`) is the minute up to which
  every fetched bar was delivered: after a fetch it moves to the newest complete minute fetched, but never
  past a minute whose delivery failed (re-sent at once, :mod:`producers.delivery`; still failing, it is
  *held* and sent by the next poll). :class:`producers.watermark.Published` keeps the minutes published
  inside the trailing window.
* Each poll fetches the trailing ``lookback_min`` window and publishes the minutes in it not published
  yet: a bar Yahoo delivers late (missing from the poll that first covered it) goes out when it appears,
  and a re-fetched one never twice.
* Each fetch starts at the oldest watermark of its batch when that is older than the window: after an
  outage (process down, Yahoo unreachable, Kafka failing) the loop backfills the gap itself, in 7-day
  chunks, up to the 29 days Yahoo keeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from tqdm import tqdm

from minutecast.errors import ConfigError, DeliveryError, ServiceUnavailable
from minutecast.window import SESSION_TZ
from producers.bars import COLUMNS, PRICES, empty_frame, sort_events
from producers.delivery import deliver
from producers.publisher import Publisher
from producers.throttle import NetworkError, RateLimited, Throttle
from producers.watermark import Published, WatermarkRedis, Watermarks

log = logging.getLogger(__name__)

YAHOO_1M_DAYS = 30  # Yahoo serves 1-minute bars for the last 30 days only...
CHUNK_DAYS = 7  # ...and at most 7-8 days of them per request
DAY = 86400
Fetch = Callable[[Sequence[str], float, float], pd.DataFrame]  # (tickers, start epoch s, end epoch s)


def frame_to_bars(df: pd.DataFrame | None, ticker: str | None = None) -> pd.DataFrame:
    """A ``yf.download`` frame -> bar frame (event-time order, NaN rows kept for counting).

    Handles multi-ticker frames with MultiIndex columns in either layout (``group_by='column'``:
    (Price, Ticker); ``group_by='ticker'``: (Ticker, Price)), single-ticker flat columns (``ticker``
    names it), tz-aware indexes in any zone (converted to UTC) and naive ones (yfinance's
    ``ignore_tz=True``: exchange-local New York time).
    """
    if df is None or df.empty:
        return empty_frame()
    idx = pd.DatetimeIndex(df.index)
    if idx.tz is None:
        idx = idx.tz_localize(SESSION_TZ, ambiguous="NaT", nonexistent="NaT")
    minutes = idx.tz_convert(UTC).to_numpy(dtype="datetime64[s]").astype("int64")
    valid_time = ~pd.isna(idx)
    frame = df.copy()
    frame.index = pd.Index(minutes, name="minute")
    frame = frame[valid_time]
    if isinstance(frame.columns, pd.MultiIndex):
        levels = [{str(v).lower() for v in frame.columns.get_level_values(i)} for i in range(2)]
        price_level = 0 if "close" in levels[0] else 1
        long = frame.stack(level=1 - price_level, future_stack=True)
        long.index = long.index.set_names(["minute", "ticker"])
        long = long.reset_index()
    else:
        if ticker is None:
            raise ConfigError("a single-ticker frame needs its ticker")
        long = frame.reset_index()
        long["ticker"] = ticker
    long.columns = [str(c).lower() for c in long.columns]
    for c in PRICES + ["volume"]:
        if c not in long.columns:
            long[c] = np.nan
    out = long[COLUMNS].copy()
    out["ticker"] = out["ticker"].astype(str)
    out["minute"] = out["minute"].astype("int64")
    for c in PRICES + ["volume"]:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    return sort_events(out)


class _Collect(logging.Handler):
    """Collects yfinance's error log lines: yf.download reports per-ticker failures only there."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def yf_download(tickers: Sequence[str], start: float, end: float, prepost: bool = False,
                timeout: float = 20.0) -> pd.DataFrame:
    """The real fetch: ``yf.download`` of 1-minute bars, yfinance's threads across the batch.

    Rate limits and network errors that yf.download only logs are raised (RateLimited/NetworkError)
    so the throttle backs off and retries the batch.
    """
    import yfinance as yf

    handler = _Collect()
    logger = logging.getLogger("yfinance")
    logger.addHandler(handler)
    try:
        df = yf.download(list(tickers), start=datetime.fromtimestamp(start, UTC), end=datetime.fromtimestamp(end, UTC),
                         interval="1m", group_by="column", auto_adjust=False, prepost=prepost, threads=True,
                         progress=False, multi_level_index=True, timeout=timeout)
    finally:
        logger.removeHandler(handler)
    text = "\n".join(handler.lines)
    if "RateLimit" in text or "Too Many Requests" in text:
        raise RateLimited(text[:300])
    network = ("Timeout", "timed out", "ConnectionError", "Connection refused", "Could not resolve", "curl:")
    if any(n in text for n in network):
        raise NetworkError(text[:300])
    if handler.lines:
        log.warning("yfinance: %s", text[:500])  # e.g. delisted symbols: their columns are all NaN
    return df if df is not None else pd.DataFrame()


class YFinanceSource:
    """Backfill and live loop for ``tickers``, publishing through ``publisher`` (see the module doc)."""

    def __init__(self, publisher: Publisher, redis: WatermarkRedis, tickers: Sequence[str], *, throttle: Throttle,
                 fetch: Fetch | None = None, batch_size: int = 100, prepost: bool = False,
                 clock: Callable[[], float] = time.time, source: str = "yfinance", settle_s: float = 5.0,
                 lookback_min: int = 30, sleep: Callable[[float], None] = time.sleep) -> None:
        self.pub = publisher
        self.redis = redis
        self.tickers = list(tickers)
        self.throttle = throttle
        self.fetch: Fetch = fetch or (lambda t, a, b: yf_download(t, a, b, prepost))
        self.batch_size = max(1, batch_size)
        self.clock = clock
        self.sleep = sleep  # back-off between re-sends of failed deliveries
        self.source = source
        self.settle_s = settle_s
        self.lookback_min = lookback_min
        self.marks = Watermarks(redis, publisher.s.namespace, self.tickers, label=source)
        self.recent = Published(redis, publisher.s.namespace, self.tickers)

    @property
    def stop(self) -> threading.Event:
        return self.pub.stop_requested

    @property
    def watermarks(self) -> dict[str, int]:
        """{ticker: minute up to which every fetched bar was delivered}, as read at start and moved since."""
        return self.marks.watermarks

    def batches(self) -> list[list[str]]:
        return [self.tickers[i:i + self.batch_size] for i in range(0, len(self.tickers), self.batch_size)]

    def complete_through(self, fetched_at: float) -> int:
        """The newest minute complete at ``fetched_at``: it ended at least ``settle_s`` before."""
        return int((fetched_at - self.settle_s) // 60) * 60 - 60

    def start_for(self, batch: Sequence[str], default: float) -> float:
        """Where a fetch for ``batch`` starts: ``default``, or earlier, just after the oldest watermark of the
        batch (a gap to backfill), but not before the oldest minute Yahoo keeps."""
        oldest = self.clock() - (YAHOO_1M_DAYS - 1) * DAY
        start = min([default, *(self.watermarks[t] + 60 for t in batch if t in self.watermarks)])
        if start < oldest:
            log.warning("%s: minutes before %s are older than Yahoo keeps: left out", self.source, _iso(oldest))
            start = oldest
        return float(int(start // 60) * 60)

    def wanted(self, bars: pd.DataFrame, floor: int) -> pd.DataFrame:
        """The rows of ``bars`` not published yet: above the watermark, or (a late bar) inside the window from
        ``floor`` on; all-NaN rows only above the watermark (counted once)."""
        if bars.empty:
            return bars
        wm = bars["ticker"].map(self.watermarks).fillna(-1).to_numpy(dtype="int64")
        minute = bars["minute"].to_numpy(dtype="int64")
        nan = bars[PRICES].isna().all(axis=1).to_numpy()
        keep = ((minute > wm) | ((minute >= floor) & ~nan)) & ~self.recent.seen(bars)
        return bars[keep]

    def publish(self, df: pd.DataFrame | None, fetched_at: float, batch: Sequence[str], start: float, end: float,
                lookback_min: int | None = None) -> int:
        """Publish the completed, not-yet-published bars of one frame downloaded at ``fetched_at`` for
        ``batch`` over ``[start, end)``, then move the batch's watermarks. Returns bars sent."""
        lookback = self.lookback_min if lookback_min is None else lookback_min
        through = min(self.complete_through(fetched_at), int(end // 60) * 60 - 60)
        floor = int((fetched_at - 60 * lookback) // 60) * 60
        bars = frame_to_bars(df, batch[0] if len(batch) == 1 else None)
        bars = bars[bars["ticker"].isin(batch) & (bars["minute"] <= through) & (bars["minute"] >= start)]
        bars = self.wanted(bars, floor)
        d = deliver(self.pub, bars, self.source, self.clock(), sleep=self.sleep)
        if not d.complete:
            return d.sent  # stopped mid-piece: claim nothing
        self.marks.commit(bars, d.failed, through=through, covered_from=int(start), tickers=batch)
        done = bars.drop(d.failed.index)
        self.recent.add(done[~done[PRICES].isna().all(axis=1)],
                        {t: min(floor, self.watermarks.get(t, floor) + 60) for t in batch})
        if not d.failed.empty:
            log.error("%s: %d bars undelivered; their tickers' watermarks wait, the next poll sends them",
                      self.source, len(d.failed))
        return d.sent

    def _fetch(self, batch: list[str], start: float, end: float) -> tuple[float, pd.DataFrame]:
        """(the time the request went out, the frame)."""

        def call() -> tuple[float, pd.DataFrame]:
            at = self.clock()
            return at, self.fetch(batch, start, end)

        return self.throttle.call(call, what=f"yf.download {len(batch)} tickers {_iso(start)}..{_iso(end)}")

    def cover(self, batch: list[str], start: float, lookback_min: int | None = None) -> int:
        """Fetch ``batch`` from ``start`` to now in chunks of CHUNK_DAYS, oldest first, publishing each."""
        sent = 0
        for a, b in chunks(start, self.clock() + 60):
            if self.stop.is_set():
                break
            at, df = self._fetch(batch, a, b)
            sent += self.publish(df, at, batch, a, b, lookback_min)
        return sent

    def backfill(self, days: float, progress: bool = True) -> int:
        """The last ``days`` days (at most 29: Yahoo keeps 30), from an older watermark when there is one,
        in 7-day chunks, oldest first."""
        if days > YAHOO_1M_DAYS - 1:
            log.warning("Yahoo keeps %d days of 1-minute bars: backfilling %d days, not %s",
                        YAHOO_1M_DAYS, YAHOO_1M_DAYS - 1, days)
            days = YAHOO_1M_DAYS - 1
        now = self.clock()
        plans = [(batch, chunks(self.start_for(batch, now - days * DAY), now + 60)) for batch in self.batches()]
        sent = 0
        with tqdm(total=sum(len(c) for _, c in plans), unit="batch", desc="backfill", disable=not progress) as bar:
            for i in range(max((len(c) for _, c in plans), default=0)):
                for batch, cs in plans:
                    if i >= len(cs):
                        continue
                    if self.stop.is_set():
                        return sent
                    at, df = self._fetch(batch, *cs[i])
                    sent += self.publish(df, at, batch, *cs[i])
                    bar.update(1)
                    bar.set_postfix(bars=sent, refresh=False)
        return sent

    def poll_once(self, lookback_min: int | None = None, skip_failed: bool = False) -> int:
        """Fetch the trailing ``lookback_min`` minutes of every batch (from its oldest watermark when that is
        older: the gap) and publish what was not published yet.

        ``skip_failed``: a batch that keeps failing (Yahoo or Kafka) is logged and skipped (the live loop:
        its watermarks did not move, so the next poll fetches and sends those minutes).
        """
        lookback = self.lookback_min if lookback_min is None else lookback_min
        now = self.clock()
        sent = 0
        for batch in self.batches():
            if self.stop.is_set():
                break
            try:
                sent += self.cover(batch, self.start_for(batch, now - 60 * lookback), lookback)
            except (ServiceUnavailable, DeliveryError) as exc:
                if not skip_failed:
                    raise
                log.error("skipping %d tickers this minute: %s", len(batch), exc)
        return sent

    def behind(self, lookback_min: int) -> int | None:
        """The oldest watermark when it is older than the trailing window (a gap to backfill), else None."""
        old = min(self.watermarks.values(), default=None)
        return old if old is not None and old < self.clock() - 60 * (lookback_min + 1) else None

    def live(self, delay_s: float = 5.0, lookback_min: int | None = None, iterations: int | None = None,
             sleep: Callable[[float], None] = time.sleep) -> int:
        """A few seconds after each minute closes, fetch the trailing window for all tickers and publish the
        minutes not published yet; first, when a watermark is older than the window, backfill the gap."""
        lookback = self.lookback_min if lookback_min is None else lookback_min
        sent = 0
        gap = self.behind(lookback)
        if gap is not None:
            log.info("live: backfilling the gap since %s before polling", _iso(gap))
            sent += self.poll_once(lookback, skip_failed=True)
        done = 0
        while not self.stop.is_set() and (iterations is None or done < iterations):
            now = self.clock()
            due = (now // 60 + 1) * 60 + delay_s
            while not self.stop.is_set() and self.clock() < due:
                sleep(min(0.5, max(0.0, due - self.clock())))
            if self.stop.is_set():
                break
            n = self.poll_once(lookback, skip_failed=True)
            sent += n
            done += 1
            log.info("live poll at %s: %d new bars (%d in all)", _iso(self.clock()), n, sent)
        return sent


def chunks(start: float, end: float) -> list[tuple[float, float]]:
    """``[start, end)`` in pieces of at most CHUNK_DAYS, oldest first."""
    out = []
    a = start
    while a < end:
        out.append((a, min(a + CHUNK_DAYS * DAY, end)))
        a += CHUNK_DAYS * DAY
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")
