"""yfinance source: backfill the last N days in 7-day chunks, then a live loop, publishing each
(ticker, minute) once.

* ``yf.download`` in batches of ``yf_batch_size`` tickers (yfinance fetches a batch with its own
  threads); every call goes through one :class:`producers.throttle.Throttle` shared by all processes.
* Only completed bars are published (``minute + 60 <= now``; Yahoo also returns the minute in progress).
* A per-ticker watermark in Redis (:meth:`minutecast.keys.Keys.producer_watermark`: the newest minute
  published) filters every frame, so restarts and overlapping polls never publish a minute twice. It
  moves only after the broker acknowledged the ticker's bars (a failed delivery leaves it, so those
  minutes are fetched and sent again: at-least-once rather than lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from minutecast.errors import ConfigError, ServiceUnavailable
from minutecast.keys import Keys
from minutecast.window import SESSION_TZ
from producers.bars import COLUMNS, PRICES, empty_frame, sort_events
from producers.publisher import Publisher
from producers.throttle import NetworkError, RateLimited, Throttle

log = logging.getLogger(__name__)

YAHOO_1M_DAYS = 30  # Yahoo serves 1-minute bars for the last 30 days only...
CHUNK_DAYS = 7  # ...and at most 7-8 days of them per request
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
    """Backfill and live loop for ``tickers``, publishing through ``publisher``."""

    def __init__(self, publisher: Publisher, redis: object, tickers: Sequence[str], *, throttle: Throttle,
                 fetch: Fetch | None = None, batch_size: int = 100, prepost: bool = False,
                 clock: Callable[[], float] = time.time, source: str = "yfinance") -> None:
        self.pub = publisher
        self.redis = redis
        self.tickers = list(tickers)
        self.throttle = throttle
        self.fetch: Fetch = fetch or (lambda t, a, b: yf_download(t, a, b, prepost))
        self.batch_size = max(1, batch_size)
        self.clock = clock
        self.source = source
        self.keys = Keys(publisher.s.namespace)
        self.watermarks = self._load_watermarks()

    @property
    def stop(self) -> threading.Event:
        return self.pub.stop_requested

    def _load_watermarks(self) -> dict[str, int]:
        values = self.redis.mget([self.keys.producer_watermark(t) for t in self.tickers])  # type: ignore[attr-defined]
        return {t: int(v) for t, v in zip(self.tickers, values, strict=True) if v is not None}

    def batches(self) -> list[list[str]]:
        return [self.tickers[i:i + self.batch_size] for i in range(0, len(self.tickers), self.batch_size)]

    def publish(self, df: pd.DataFrame | None, ticker: str | None = None) -> int:
        """Publish the completed, not-yet-published bars of one downloaded frame. Returns bars sent."""
        bars = frame_to_bars(df, ticker)
        now = self.clock()
        bars = bars[(bars["minute"] + 60 <= now) & bars["ticker"].isin(self.tickers)]
        if bars.empty:
            return 0
        wm = bars["ticker"].map(self.watermarks).fillna(-1).to_numpy(dtype="int64")
        bars = bars[bars["minute"].to_numpy() > wm]
        if bars.empty:
            return 0
        failed_before = set(self.pub.failed_keys)
        sent = self.pub.publish_frame(bars, self.source, now)
        if self.pub.flush() > 0:
            log.error("deliveries outstanding after flush; watermarks not moved")
            return sent
        if not self.pub.last_complete:
            return sent  # interrupted mid-frame: do not claim minutes that were not sent
        failed = {k.decode() for k in self.pub.failed_keys - failed_before}
        # NaN rows (no trade that minute) do not move the watermark; sent and dead-lettered bars do.
        seen = bars[~bars[PRICES].isna().all(axis=1)]
        newest = seen.groupby("ticker")["minute"].max()
        updates = {t: int(m) for t, m in newest.items() if t not in failed}
        if updates:
            pipe = self.redis.pipeline()  # type: ignore[attr-defined]
            for t, m in updates.items():
                pipe.set(self.keys.producer_watermark(t), m)
            pipe.execute()
            self.watermarks.update(updates)
        return sent

    def _fetch(self, batch: list[str], start: float, end: float) -> pd.DataFrame:
        return self.throttle.call(lambda: self.fetch(batch, start, end),
                                  what=f"yf.download {len(batch)} tickers {_iso(start)}..{_iso(end)}")

    def backfill(self, days: float, progress: bool = True) -> int:
        """The last ``days`` days (at most 29: Yahoo keeps 30) in 7-day chunks, oldest first."""
        from tqdm import tqdm

        if days > YAHOO_1M_DAYS - 1:
            log.warning("Yahoo keeps %d days of 1-minute bars: backfilling %d days, not %s",
                        YAHOO_1M_DAYS, YAHOO_1M_DAYS - 1, days)
            days = YAHOO_1M_DAYS - 1
        end = self.clock()
        start = end - days * 86400
        chunks = []
        a = start
        while a < end:
            chunks.append((a, min(a + CHUNK_DAYS * 86400, end)))
            a += CHUNK_DAYS * 86400
        batches = self.batches()
        sent = 0
        with tqdm(total=len(chunks) * len(batches), unit="batch", desc="backfill", disable=not progress) as bar:
            for a, b in chunks:
                for batch in batches:
                    if self.stop.is_set():
                        return sent
                    sent += self.publish(self._fetch(batch, a, b))
                    bar.update(1)
                    bar.set_postfix(bars=sent, refresh=False)
        return sent

    def poll_once(self, lookback_min: int, skip_failed: bool = False) -> int:
        """Fetch the last ``lookback_min`` minutes of every batch and publish what is new.

        ``skip_failed``: a batch that keeps failing is logged and skipped (the live loop: the next
        poll asks for the same minutes again, and its tickers' watermarks did not move).
        """
        now = self.clock()
        sent = 0
        for batch in self.batches():
            if self.stop.is_set():
                break
            try:
                sent += self.publish(self._fetch(batch, now - 60 * lookback_min, now + 60))
            except ServiceUnavailable as exc:
                if not skip_failed:
                    raise
                log.error("skipping %d tickers this minute: %s", len(batch), exc)
        return sent

    def live(self, delay_s: float = 5.0, lookback_min: int = 30, iterations: int | None = None,
             sleep: Callable[[float], None] = time.sleep) -> int:
        """A few seconds after each minute closes, fetch recent minutes for all tickers and publish the new ones."""
        sent = 0
        done = 0
        while not self.stop.is_set() and (iterations is None or done < iterations):
            now = self.clock()
            due = (now // 60 + 1) * 60 + delay_s
            while not self.stop.is_set() and self.clock() < due:
                sleep(min(0.5, max(0.0, due - self.clock())))
            if self.stop.is_set():
                break
            n = self.poll_once(lookback_min, skip_failed=True)
            sent += n
            done += 1
            log.info("live poll at %s: %d new bars (%d in all)", _iso(self.clock()), n, sent)
        return sent


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")
