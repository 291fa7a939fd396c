"""The window policy: which 60-slot windows exist, written down once for streams, serving and training.

Policy (v2)
-----------
* **Slots.** A ticker's bars, in minute order (a minute's *first* bar wins), become a timeline of
  one-minute *slots*. A run of up to :data:`MAX_FILL` missing minutes between two bars becomes that many
  *filled* slots (open = high = low = close = the last close, volume 0): sparse pre/post-market minutes
  and brief halts. A longer run (the overnight gap, a weekend, a halt, very sparse extended hours) is
  *collapsed*: it gets no slots, and the next bar's slot is marked ``gap`` (its return crosses the gap).
  A ticker's first bar (in a history or in the store) is marked ``gap`` too: nothing is known before it.
* **Windows.** The window ending at a bar at minute ``t`` is the last :data:`WINDOW` slots up to and
  including ``t``'s slot. It is *ready* as soon as that many slots exist. So a window at 09:35 reaches
  back across the overnight gap into the previous session, with the gap marked as an input: every bar
  after a ticker's first 60 slots has a forecast, in the opening hour as at midday.
* **Market context.** Beside a ticker's window, the market ticker's (``MINUTECAST_MARKET_TICKER``, SPY by
  default) same-minute window: for each slot minute ``m`` in ``(t - WINDOW minutes, t]`` the market's
  1-minute log return at ``m`` (closes as of ``m`` and ``m - 1``, each at most ``MAX_FILL`` minutes old),
  its log high/low range at ``m`` and whether it had a bar at ``m``; zeros elsewhere (older slots of a
  window that reaches back across a gap, or no market data).
* **Target.** The close of a bar at exactly ``t + HORIZON`` minutes; nothing else counts.
* **Retention.** The window store keeps each ticker's newest :data:`RETAIN` bars (a count, not a time
  span, so a window can reach across the overnight gap). A window needs at most ``WINDOW`` bars plus
  the one before it; the rest lets a reader run behind the newest bar and be announced within
  :data:`REACH` minutes.

Raw windows are float64 arrays ``(N, WINDOW, N_COLUMNS)`` with the columns of :data:`COLUMNS`.
Everything here is pure numpy so the Faust app, the Spark job and the trainer run the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

POLICY_VERSION = 2  # bump when the policy above changes meaning (feature specs record it)
WINDOW = 60  # slots in one model input
HORIZON = 5  # minutes ahead we forecast
MAX_FILL = 5  # longest run of missing minutes that is forward-filled; longer runs are collapsed gaps
# A window-ready event names the newest ready window of a ticker no more than REACH minutes before its
# newest bar (only a ticker's first minutes have no ready window at their newest bar).
REACH = 20
# Bars kept per ticker: a window, the bar before it, REACH, and slack for a Spark job that reads behind.
RETAIN = WINDOW + 1 + REACH + 9
SESSION_TZ = ZoneInfo("America/New_York")
OPEN_MIN, CLOSE_MIN, EARLY_CLOSE_MIN = 570, 960, 780  # 09:30, 16:00, 13:00 in New York minutes of day

COLUMNS = ("open", "high", "low", "close", "volume", "minute", "filled", "gap", "prev_close",
           "mkt_ret", "mkt_range", "mkt_bar")
O, H, L, C, V, MINUTE, FILLED, GAP, PREV, MKT_RET, MKT_RANGE, MKT_BAR = range(len(COLUMNS))  # noqa: E741
N_COLUMNS = len(COLUMNS)
N_TICKER_COLUMNS = MKT_RET  # columns that come from the ticker's own bars


@lru_cache(maxsize=65536)
def _utc_offset_s(hour: int) -> int:
    """New York's UTC offset (seconds) during the UTC hour starting at ``hour * 3600``."""
    off = datetime.fromtimestamp(hour * 3600, UTC).astimezone(SESSION_TZ).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def local_minutes(minutes: np.ndarray) -> np.ndarray:
    """Epoch seconds -> New York local time as seconds since 1970-01-01 local (int64)."""
    minutes = np.asarray(minutes, dtype=np.int64)
    hours = minutes // 3600
    uniq, inv = np.unique(hours, return_inverse=True)
    offsets = np.fromiter((_utc_offset_s(int(h)) for h in uniq), dtype=np.int64, count=len(uniq))
    return minutes + offsets[inv.reshape(minutes.shape)]


def from_local(local: np.ndarray) -> np.ndarray:
    """New York local time (seconds since 1970-01-01 local, as :func:`local_minutes` gives) -> epoch seconds.
    A wall time that occurs twice (the hour the clocks fall back) maps to its first occurrence (EDT); one that
    does not occur (the hour they spring forward: no market has bars then) to the EST reading."""
    local = np.asarray(local, dtype=np.int64)
    edt = local + 4 * 3600
    return np.where(local_minutes(edt) == local, edt, local + 5 * 3600)


def shift_days(minutes: np.ndarray, days: int) -> np.ndarray:
    """Epoch seconds moved ``days`` New York calendar days, each keeping its New York wall-clock time: a bar at
    09:30 stays at 09:30 when the shift crosses a DST change (a shift by ``days * 86400`` UTC seconds would
    land it at 08:30 or 10:30). The as-if-live replay shifts recorded sessions with it."""
    return from_local(local_minutes(minutes) + int(days) * 86400)


def session_ids(minutes: np.ndarray) -> np.ndarray:
    """Epoch seconds -> New York calendar day number (days since 1970-01-01, local)."""
    return local_minutes(minutes) // 86400


def minute_of_day(minutes: np.ndarray) -> np.ndarray:
    """Epoch seconds -> New York minute of the day (0..1439)."""
    return (local_minutes(minutes) % 86400) // 60


@lru_cache(maxsize=4096)
def _early_close(day: int) -> bool:
    """NYSE's 13:00 closes: the day after Thanksgiving, Christmas Eve and July 3 (on weekdays)."""
    d = date(1970, 1, 1) + timedelta(days=day)
    if d.weekday() >= 5:
        return False
    thanksgiving = 22 + (3 - date(d.year, 11, 1).weekday()) % 7
    return ((d.month, d.day) in ((12, 24), (7, 3))) or (d.month == 11 and d.day == thanksgiving + 1)


def close_minute(minutes: np.ndarray) -> np.ndarray:
    """New York minute of the day at which the regular session of each minute's date closes."""
    days = session_ids(minutes)
    uniq, inv = np.unique(days, return_inverse=True)
    closes = np.array([EARLY_CLOSE_MIN if _early_close(int(d)) else CLOSE_MIN for d in uniq], dtype=np.int64)
    return closes[inv.reshape(np.shape(minutes))]


def regular_hours(minutes: np.ndarray) -> np.ndarray:
    """True for minutes inside the regular session (09:30 up to the close) of their New York date. Any date
    counts (exchanges have no weekend bars to begin with, and a replay shifted to now may land a recorded
    session on a weekend)."""
    mod = minute_of_day(minutes)
    return (mod >= OPEN_MIN) & (mod < close_minute(minutes))


BUCKETS = ("first_hour", "midday", "last_30")  # time of day of an as-of minute in regular hours
FIRST_HOUR_MIN, LAST_MIN = 60, 30  # the first bucket's and the last bucket's length (minutes)


def time_buckets(minutes: np.ndarray) -> np.ndarray:
    """Epoch seconds (N,) -> index into :data:`BUCKETS` (the first 60 regular minutes, midday, the last 30
    minutes before that date's close; early closes use their own close); -1 outside regular hours."""
    mod = minute_of_day(minutes)
    close = close_minute(minutes)
    out = np.where(mod < OPEN_MIN + FIRST_HOUR_MIN, 0, np.where(mod >= close - LAST_MIN, 2, 1))
    return np.where(regular_hours(minutes), out, -1)


@dataclass(frozen=True)
class Slots:
    """One ticker's slot timeline. ``table`` (L, N_TICKER_COLUMNS) float64; bar ``i`` (of the sorted,
    de-duplicated ``minutes`` (n,) int64) sits in slot ``bar_slot[i]``; ``close`` (n,) its close."""

    minutes: np.ndarray
    close: np.ndarray
    bar_slot: np.ndarray
    table: np.ndarray

    def ready(self) -> np.ndarray:
        """Indexes of the bars whose window is ready (enough slots before them)."""
        return np.flatnonzero(self.bar_slot >= WINDOW - 1)

    def targets(self, bars: np.ndarray) -> np.ndarray:
        """Close of the bar exactly HORIZON minutes after each of ``bars`` (indexes), NaN when absent."""
        want = self.minutes[bars] + 60 * HORIZON
        j = np.minimum(np.searchsorted(self.minutes, want), len(self.minutes) - 1)
        return np.where(self.minutes[j] == want, self.close[j], np.nan)

    def windows(self, bars: np.ndarray) -> np.ndarray:
        """Raw windows (len(bars), WINDOW, N_TICKER_COLUMNS) ending at ready ``bars`` (indexes)."""
        ends = self.bar_slot[np.asarray(bars, dtype=np.int64)]
        return self.table[ends[:, None] + np.arange(1 - WINDOW, 1)]


def slots(minutes: np.ndarray, ohlcv: np.ndarray) -> Slots:
    """Bars (any order; a minute's first bar wins) -> the slot timeline. ``minutes`` (n,) epoch seconds on
    minute boundaries; ``ohlcv`` (n, 5) open, high, low, close, volume."""
    return slots_many([minutes], [ohlcv])[0]


def slots_many(minutes: Sequence[np.ndarray], ohlcv: Sequence[np.ndarray]) -> list[Slots]:
    """:func:`slots` of many tickers at once: ``minutes[k]`` (n_k,) and ``ohlcv[k]`` (n_k, 5) are ticker k's
    bars. One set of numpy calls over all bars (the Faust worker and the Spark job slot hundreds of tickers a
    batch; per ticker the calls cost more than the arithmetic). Tickers are segments of one timeline: each
    segment's first bar is a gap, so no slot is filled across tickers; ticker k's table is a view into it."""
    ms = [np.asarray(m, dtype=np.int64).reshape(-1) for m in minutes]
    xs = [np.asarray(x, dtype=np.float64).reshape(-1, 5) for x in ohlcv]
    sizes = [m.size for m in ms]
    if sum(sizes) == 0:
        return [_no_slots() for _ in ms]
    m, x = np.concatenate(ms), np.concatenate(xs)
    seg = np.repeat(np.arange(len(ms)), sizes)
    # stable: a minute's first bar (in the caller's order) stays first
    order = np.argsort(m, kind="stable") if len(ms) == 1 else np.lexsort((m, seg))
    m, x, seg = m[order], x[order], seg[order]
    new_seg = np.r_[True, seg[1:] != seg[:-1]]
    first = new_seg | np.r_[True, np.diff(m) > 0]
    m, x, seg, new_seg = m[first], x[first], seg[first], new_seg[first]
    counts = np.bincount(seg, minlength=len(ms))
    missing = np.r_[0, np.diff(m) // 60 - 1]  # minutes without a bar since the previous bar
    gap = new_seg | (missing > MAX_FILL)
    fills = np.where(gap, 0, missing)  # filled slots just before each bar
    bar_slot = np.cumsum(fills + 1) - 1  # slots of all tickers, one after the other
    length = int(bar_slot[-1]) + 1
    slot_idx = np.arange(length)
    owner = np.searchsorted(bar_slot, slot_idx, side="right") - 1  # the bar at or before each slot
    real = bar_slot[owner] == slot_idx
    close = x[owner, 3]
    table = np.empty((length, N_TICKER_COLUMNS))
    for col in (O, H, L):
        table[:, col] = np.where(real, x[owner, col], close)
    table[:, C] = close
    table[:, V] = np.where(real, x[owner, 4], 0.0)
    table[:, MINUTE] = m[owner] + 60 * (slot_idx - bar_slot[owner])
    table[:, FILLED] = ~real
    table[:, GAP] = real & gap[owner]
    prev = np.empty(length)
    prev[1:] = close[:-1]  # a filled or gap slot's previous slot is the previous bar or fill
    starts = bar_slot[new_seg]
    prev[starts] = close[starts]  # a ticker's first slot has nothing before it: its own close
    table[:, PREV] = prev
    out: list[Slots] = []
    a = 0
    for n in counts.tolist():
        if n == 0:
            out.append(_no_slots())
            continue
        lo, hi = int(bar_slot[a]), int(bar_slot[a + n - 1]) + 1
        out.append(Slots(m[a:a + n], x[a:a + n, 3].copy(), bar_slot[a:a + n] - lo, table[lo:hi]))
        a += n
    return out


def _no_slots() -> Slots:
    """The slot timeline of a ticker without bars."""
    return Slots(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), np.empty((0, N_TICKER_COLUMNS)))


def market_columns(slot_minutes: np.ndarray, t: np.ndarray | int, market: Slots | None) -> np.ndarray:
    """Market context (..., WINDOW, 3) [mkt_ret, mkt_range, mkt_bar] for windows whose slot minutes are
    ``slot_minutes`` (..., WINDOW) and which end at ``t`` (broadcast over the leading axes). Only market bars
    at or before ``t`` are used; see the policy in the module docstring."""
    sm = np.asarray(slot_minutes, dtype=np.int64)
    out = np.zeros(sm.shape + (3,))
    if market is None or market.minutes.size == 0:
        return out
    tt = np.broadcast_to(np.asarray(t, dtype=np.int64).reshape(np.shape(t) + (1,) * (sm.ndim - np.ndim(t))),
                         sm.shape)
    mm, mc = market.minutes, market.close
    bar_rows = market.table[market.bar_slot]

    def asof(when: np.ndarray) -> np.ndarray:
        j = np.searchsorted(mm, when, side="right") - 1
        ok = (j >= 0) & (when - mm[np.maximum(j, 0)] <= 60 * MAX_FILL) & (mm[np.maximum(j, 0)] <= tt)
        return np.where(ok, mc[np.maximum(j, 0)], np.nan)

    inside = sm > tt - 60 * WINDOW
    now, before = asof(sm), asof(sm - 60)
    ret = np.log(now / before)
    out[..., 0] = np.where(inside & np.isfinite(ret), ret, 0.0)
    j = np.minimum(np.searchsorted(mm, sm), mm.size - 1)
    exact = inside & (mm[j] == sm) & (sm <= tt)
    out[..., 1] = np.where(exact, np.log(bar_rows[j, H] / bar_rows[j, L]), 0.0)
    out[..., 2] = exact
    return out


@dataclass(frozen=True)
class Windows:
    """Ready windows of one ticker: ``values[i]`` (WINDOW, N_COLUMNS) ends at ``ends[i]``; ``targets[i]`` is
    the close at ``ends[i] + HORIZON`` minutes (NaN when that bar is missing)."""

    ends: np.ndarray  # (N,) int64 epoch seconds
    values: np.ndarray  # (N, WINDOW, N_COLUMNS) float64
    targets: np.ndarray  # (N,) float64


def with_market(ticker_windows: np.ndarray, market: Slots | None) -> np.ndarray:
    """(N, WINDOW, N_TICKER_COLUMNS) -> (N, WINDOW, N_COLUMNS): the market context appended."""
    tw = np.asarray(ticker_windows, dtype=np.float64)
    sm = tw[..., MINUTE].astype(np.int64)
    return np.concatenate([tw, market_columns(sm, sm[:, -1], market)], axis=-1)


def ready_windows(minutes: np.ndarray, ohlcv: np.ndarray, market: Slots | None = None,
                  *, only_end: int | None = None) -> Windows:
    """All ready windows of one ticker's bars (``only_end``: just the one ending at that minute)."""
    s = slots(minutes, ohlcv)
    bars = s.ready()
    if only_end is not None:
        bars = bars[s.minutes[bars] == only_end]
    if bars.size == 0:
        return Windows(np.empty(0, np.int64), np.empty((0, WINDOW, N_COLUMNS)), np.empty(0))
    return Windows(s.minutes[bars], with_market(s.windows(bars), market), s.targets(bars))


def window_at(minutes: np.ndarray, ohlcv: np.ndarray, t: int, market: Slots | None = None) -> np.ndarray | None:
    """The (WINDOW, N_COLUMNS) window ending at minute ``t``, or None when ``t`` has no ready window."""
    w = ready_windows(minutes, ohlcv, market, only_end=t)
    return w.values[0] if len(w.ends) else None


def checksum(window: np.ndarray) -> str:
    """A short digest of a window's own bars (market context excluded): the window's version in events.

    SHA-1 (first 16 hex digits) of the window's *defining bytes*: its first slot's ``minute, filled, gap,
    prev_close``, then ``minute, open, high, low, close, volume`` of every real (not filled) slot, all as
    little-endian float64. These determine the window under the policy above (fills and gap flags follow
    from the minutes, a fill's values from the slot before it), and they are what the window store's Lua
    script keeps contiguous: it computes the same digest with ``redis.sha1hex`` over one substring of its
    stored rows when a bar arrives (:mod:`streams.window_lua`), so no window is built to announce one."""
    w = np.asarray(window, dtype=np.float64)[..., :N_TICKER_COLUMNS]
    first = w[0, [MINUTE, FILLED, GAP, PREV]]
    real = w[w[:, FILLED] == 0][:, [MINUTE, O, H, L, C, V]]
    raw = first.astype("<f8").tobytes() + np.ascontiguousarray(real, dtype="<f8").tobytes()
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:16]
