"""The Redis window store: each ticker's newest ``window.RETAIN`` bars (a count), written in batches.

Layout (key names from :class:`minutecast.keys.Keys`):

* ``ns:win:{T}`` hash, field = bar minute (epoch seconds, decimal), value =
  ``f"{open!r} {high!r} {low!r} {close!r} {volume!r} {published_at!r}"`` (``repr`` so floats round-trip
  exactly; ``published_at`` may be ``None``).
* ``ns:winmeta:{T}`` hash: ``max`` newest minute seen, ``ready``/``sum`` the last window announced ready.
* ``ns:stats`` hash: ``stream_*`` counters.

One Lua script (loaded once, then EVALSHA) applies a whole batch of bars, all tickers at once, in one
round trip. Rules, per ticker, bar by bar in delivery order:

* a bar older than the oldest retained minute while the store already holds ``RETAIN`` bars is *late*:
  dropped and counted (it can never be among the newest ``RETAIN``);
* a bar for a minute not stored yet is written; when that makes ``RETAIN + 1`` bars, the oldest minute
  is trimmed. The same bar again is a no-op (idempotent);
* a bar for a stored minute with different OHLCV is a *conflicting duplicate*: the first one is kept and
  the newcomer is reported (the caller dead-letters it as ``conflicting_duplicate``). A bar that differs
  only in ``published_at`` (a producer re-publishing) is a plain duplicate;
* both keys get ``EXPIRE window_ttl_s``.

Retention is a count, not a time span, so the store holds the bars before an overnight gap or a weekend
and a window can reach across it (:mod:`minutecast.window`). The retained set is always "the newest
``RETAIN`` minutes of everything delivered" (by induction: a new minute either ranks among them, and the
oldest one drops out, or it is late) and a minute keeps its first value, so replays, duplicates and any
arrival order end in the state of one in-order delivery. The script returns, per ticker, the newest
``view`` stored bars and the meta, so the caller decides readiness without another round trip.

Readers (the Spark job) use :func:`read_windows` (one pipelined round trip for many tickers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import redis as redislib

from minutecast.keys import Keys
from minutecast.schemas import Bar
from minutecast.window import REACH, RETAIN, WINDOW, Slots, checksum, slots, with_market

# KEYS: [stats, win(T1), meta(T1), win(T2), meta(T2), ...]
# ARGV: [ttl_s, retain (bars), view (bars), roundtrips, messages, counter prefix, bars(T1), bars(T2), ...]
#   bars(T) = "minute\nvalue\nminute\nvalue..." (one string per ticker: far cheaper to encode and send
#   than two arguments per bar)
# Returns per ticker: {newest, ready, sum, late-indexes, conflict-indexes, "minute\nvalue\n..." rows}
# (indexes are 0-based positions among that ticker's bars in the call; rows: the newest `view` minutes).
#
# Per ticker the retained minutes live in a sorted Lua array arr[h..e] (ascending): in-order bars append
# at e, trimming the oldest moves h, so a backfill costs O(1) per bar; an out-of-order bar shifts the
# minutes above it. Only the final set is written back (one HSET, at most one HDEL).
_LUA = r"""
local ttl = tonumber(ARGV[1])
local retain = tonumber(ARGV[2])
local view = tonumber(ARGV[3])
local pfx = ARGV[6]
local out = {}
local nt = (#KEYS - 1) / 2
local c_in, c_new, c_dup, c_late, c_conf = 0, 0, 0, 0, 0
for i = 1, nt do
  local win = KEYS[2 * i]
  local meta = KEYS[2 * i + 1]
  -- split on newlines with a plain find (memchr), several times faster than a pattern match
  local a, s, pos = {}, ARGV[6 + i], 1
  while true do
    local nl = string.find(s, '\n', pos, true)
    if not nl then
      if pos <= #s then a[#a + 1] = string.sub(s, pos) end
      break
    end
    a[#a + 1] = string.sub(s, pos, nl - 1)
    pos = nl + 1
  end
  local n = #a / 2
  local m = redis.call('HMGET', meta, 'max', 'ready', 'sum')
  local old_max = tonumber(m[1])
  -- stored: minute -> value; fname: minute -> field string; arr: the retained minutes, ascending
  local val, fname, fresh, arr = {}, {}, {}, {}
  local all = redis.call('HGETALL', win)
  for k = 1, #all, 2 do
    local t = tonumber(all[k])
    val[t] = all[k + 1]
    fname[t] = all[k]
    arr[#arr + 1] = t
  end
  -- a small hash keeps insertion order, which is minute order for in-order delivery: sort only if needed
  for k = 2, #arr do
    if arr[k] < arr[k - 1] then
      table.sort(arr)
      break
    end
  end
  local stored_min = arr[1]
  local h, e = 1, #arr
  local late, conf = {}, {}
  for j = 0, n - 1 do
    local f = a[1 + 2 * j]
    local v = a[2 + 2 * j]
    local t = tonumber(f)
    if e - h + 1 >= retain and t < arr[h] then
      -- older than the oldest retained minute of a full store: never among the newest `retain`
      late[#late + 1] = j
    elseif val[t] then
      -- stored (or written earlier in this call): the first value stays; published_at may differ
      local cur = val[t]
      if cur == v or string.match(cur, '^(.*) ') == string.match(v, '^(.*) ') then
        c_dup = c_dup + 1
      else
        conf[#conf + 1] = j
      end
    else
      val[t] = v
      fname[t] = f
      fresh[t] = true
      c_new = c_new + 1
      if e < h or t > arr[e] then
        e = e + 1
        arr[e] = t
      else
        local p = e
        while p >= h and arr[p] > t do
          arr[p + 1] = arr[p]
          p = p - 1
        end
        arr[p + 1] = t
        e = e + 1
      end
      if e - h + 1 > retain then h = h + 1 end
    end
  end
  c_in = c_in + n
  c_late = c_late + #late
  c_conf = c_conf + #conf
  -- write back: new minutes that survived, and stored minutes below the final oldest are trimmed
  local put = {}
  for k = h, e do
    local t = arr[k]
    if fresh[t] then
      put[#put + 1] = fname[t]
      put[#put + 1] = val[t]
    end
  end
  for k = 1, #put, 1000 do
    redis.call('HSET', win, unpack(put, k, math.min(k + 999, #put)))
  end
  if stored_min ~= nil and e >= h and stored_min < arr[h] then
    local del = {}
    for k = 1, #all, 2 do
      if tonumber(all[k]) < arr[h] then del[#del + 1] = all[k] end
    end
    for k = 1, #del, 1000 do
      redis.call('HDEL', win, unpack(del, k, math.min(k + 999, #del)))
    end
  end
  local newest = old_max or -1
  if e >= h and arr[e] > newest then newest = arr[e] end
  if old_max == nil or newest > old_max then redis.call('HSET', meta, 'max', newest) end
  redis.call('EXPIRE', win, ttl)
  redis.call('EXPIRE', meta, ttl)
  local rows = {}
  for k = math.max(h, e - view + 1), e do
    local t = arr[k]
    rows[#rows + 1] = fname[t]
    rows[#rows + 1] = val[t]
  end
  out[i] = {newest, m[2] or '', m[3] or '', late, conf, table.concat(rows, '\n')}
end
redis.call('HINCRBY', KEYS[1], pfx .. 'bars', c_in)
redis.call('HINCRBY', KEYS[1], pfx .. 'new', c_new)
redis.call('HINCRBY', KEYS[1], pfx .. 'dup', c_dup)
redis.call('HINCRBY', KEYS[1], pfx .. 'late', c_late)
redis.call('HINCRBY', KEYS[1], pfx .. 'conflict', c_conf)
redis.call('HINCRBY', KEYS[1], pfx .. 'roundtrips', tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[1], pfx .. 'messages', tonumber(ARGV[5]))
return out
"""


class WindowRow(NamedTuple):
    """One stored minute as readers see it."""

    minute: int  # epoch seconds
    open: float
    high: float
    low: float
    close: float
    volume: float
    published_at: float | None  # producer publish time (epoch s), None when the producer did not say


def encode_value(bar: Bar) -> str:
    """The hash value of one bar (repr: floats round-trip exactly)."""
    return f"{bar.open!r} {bar.high!r} {bar.low!r} {bar.close!r} {bar.volume!r} {bar.published_at!r}"


def decode_row(field_: bytes | str, value: bytes | str) -> WindowRow:
    """A hash field/value pair -> :class:`WindowRow`."""
    o, h, lo, c, v, pub = (value.decode() if isinstance(value, bytes) else value).split(" ")
    return WindowRow(int(field_), float(o), float(h), float(lo), float(c), float(v),
                     None if pub == "None" else float(pub))


def _rows(flat: Sequence[Any]) -> list[WindowRow]:
    rows = [decode_row(flat[k], flat[k + 1]) for k in range(0, len(flat), 2)]
    rows.sort()
    return rows


def row_slots(rows: Sequence[WindowRow]) -> Slots:
    """Stored rows -> the window policy's slot timeline (:func:`minutecast.window.slots`)."""
    arr = np.array([r[:6] for r in rows], dtype=np.float64).reshape(-1, 6)
    return slots(arr[:, 0].astype(np.int64), arr[:, 1:6])


def windows_for(rows: Sequence[Sequence[WindowRow]], minutes: Sequence[int],
                market_rows: Sequence[WindowRow] | None = None) -> list[np.ndarray | None]:
    """The (WINDOW, N_COLUMNS) window ending at ``minutes[i]`` of the ticker whose stored rows are ``rows[i]``,
    under the window policy, with the market ticker's context from ``market_rows`` (its stored rows; None
    or empty: no market context); None where that minute has no ready window. The market's rows are slotted
    once and its context computed in one vectorised call for all windows (the Spark job's batch)."""
    own: list[np.ndarray | None] = []
    for r, t in zip(rows, minutes, strict=True):
        w = None
        if r:
            s = row_slots(r)
            bars = s.ready()
            bars = bars[s.minutes[bars] == t]
            if bars.size:
                w = s.windows(bars)[0]
        own.append(w)
    have = [(i, w) for i, w in enumerate(own) if w is not None]
    out: list[np.ndarray | None] = [None] * len(own)
    if have:
        market = row_slots(market_rows) if market_rows else None
        full = with_market(np.stack([w for _, w in have]), market)
        for j, (i, _) in enumerate(have):
            out[i] = full[j]
    return out


def window_for(rows: Sequence[WindowRow], t: int, market_rows: Sequence[WindowRow] | None = None) -> np.ndarray | None:
    """:func:`windows_for` of one ticker: its window ending at ``t``, or None."""
    return windows_for([rows], [t], market_rows)[0]


@dataclass
class TickerResult:
    """What one store call left for one ticker."""

    ticker: str
    newest: int  # newest minute stored (epoch s)
    announced: int | None  # minute of the last window announced ready (meta ``ready``)
    announced_sum: str | None  # its checksum (meta ``sum``)
    late: list[int] = field(default_factory=list)  # indexes (into the call's bars) dropped as late
    conflicts: list[int] = field(default_factory=list)  # indexes of conflicting duplicates (not written)
    rows: list[WindowRow] = field(default_factory=list)  # the newest ``view`` stored bars, sorted

    def ready_window(self) -> tuple[int, np.ndarray, str, float | None] | None:
        """(t, window, checksum, published_at at t) of the newest ready window, ending no more than
        ``REACH`` minutes before the newest minute (usually at the newest minute itself)."""
        if not self.rows:
            return None
        s = row_slots(self.rows)
        bars = s.ready()
        bars = bars[s.minutes[bars] >= self.newest - 60 * REACH]
        if bars.size == 0:
            return None
        i = int(bars[-1])
        t, win = int(s.minutes[i]), s.windows(np.array([i]))[0]
        pub = next((r.published_at for r in reversed(self.rows) if r.minute == t), None)
        return t, win, checksum(win), pub


class WindowStore:
    """Applies batches of bars to Redis with one EVALSHA per batch (see the module docstring)."""

    def __init__(self, client: redislib.Redis, keys: Keys, ttl_s: int, *,
                 retain: int = RETAIN, view: int = WINDOW + 1 + REACH, counters: str = "stream_") -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = int(ttl_s)
        self.retain = int(retain)  # bars kept per ticker
        # Bars returned per ticker: the window at any bar within REACH minutes of the newest needs at most
        # WINDOW bars plus the one before it, so WINDOW + 1 + REACH always suffice (0: none, for rebuild).
        self.view = int(view)
        self.counters = counters  # prefix of this store's counters in ``ns:stats`` (rebuild: "rebuild_")
        self._script = client.register_script(_LUA)
        self.roundtrips = 0  # Redis round trips made by this store (for the benchmark)
        self._unreported = 0  # round trips not yet added to the stats hash

    def apply(self, bars: Sequence[Bar], messages: int = 0) -> tuple[dict[str, TickerResult], list[int], list[int]]:
        """Write ``bars`` (any tickers, any order). Returns (per-ticker results, late indexes, conflict
        indexes) where indexes point into ``bars``. One round trip. ``messages``: how many Kafka
        records the batch had (invalid ones included), added to the ``stream_messages`` counter."""
        if not bars and not messages:
            return {}, [], []
        by_ticker: dict[str, list[int]] = {}
        for i, bar in enumerate(bars):
            by_ticker.setdefault(bar.ticker, []).append(i)
        keys: list[str] = [self.keys.stats()]
        args: list[Any] = [self.ttl_s, self.retain, self.view, self._unreported + 1, messages, self.counters]
        for ticker, idx in by_ticker.items():
            keys += (self.keys.window(ticker), self.keys.window_meta(ticker))
            args.append("\n".join([f"{bars[i].minute}\n{encode_value(bars[i])}" for i in idx]))
        raw = self._script(keys=keys, args=args)
        self.roundtrips += 1
        self._unreported = 0
        results: dict[str, TickerResult] = {}
        late: list[int] = []
        conflicts: list[int] = []
        for (ticker, idx), item in zip(by_ticker.items(), raw, strict=True):
            newest, ready, sum_, late_j, conf_j, blob = item
            res = TickerResult(
                ticker=ticker,
                newest=int(newest),
                announced=int(ready) if ready else None,
                announced_sum=(sum_.decode() if isinstance(sum_, bytes) else sum_) or None,
                late=[idx[j] for j in late_j],
                conflicts=[idx[j] for j in conf_j],
                rows=_rows(blob.split(b"\n") if blob else []),
            )
            results[ticker] = res
            late += res.late
            conflicts += res.conflicts
        return results, sorted(late), sorted(conflicts)

    def mark_announced(self, announced: dict[str, tuple[int, str]]) -> None:
        """Record the last window announced per ticker (meta ``ready``/``sum``): one pipelined round trip."""
        if not announced:
            return
        pipe = self.client.pipeline(transaction=False)
        for ticker, (t, cs) in announced.items():
            pipe.hset(self.keys.window_meta(ticker), mapping={"ready": t, "sum": cs})
        pipe.execute()
        self.roundtrips += 1
        self._unreported += 1

    def has_windows(self) -> bool:
        """True when at least one window key of this namespace exists."""
        self.roundtrips += 1
        self._unreported += 1
        for _ in self.client.scan_iter(match=self.keys.window_pattern(), count=1000):
            return True
        return False


def read_window(client: redislib.Redis, keys: Keys, ticker: str) -> list[WindowRow]:
    """All stored bars of ``ticker`` (its newest ``RETAIN``) as :class:`WindowRow`, sorted by minute;
    empty when the ticker has no window. Use :func:`window_for` to cut the window."""
    return _rows(_flatten(client.hgetall(keys.window(ticker))))


def read_windows(client: redislib.Redis, keys: Keys, tickers: Iterable[str]) -> dict[str, list[WindowRow]]:
    """:func:`read_window` for many tickers in one pipelined round trip: ``{ticker: rows}``.

    Stable API (the Spark job relies on it): rows are
    ``WindowRow(minute, open, high, low, close, volume, published_at)`` sorted by minute,
    at most ``window.RETAIN`` of them; a ticker without a window maps to ``[]``.
    """
    tickers = list(dict.fromkeys(tickers))
    pipe = client.pipeline(transaction=False)
    for t in tickers:
        pipe.hgetall(keys.window(t))
    return {t: _rows(_flatten(h)) for t, h in zip(tickers, pipe.execute(), strict=True)}


def _flatten(h: dict[Any, Any]) -> list[Any]:
    flat: list[Any] = []
    for k, v in h.items():
        flat += (k, v)
    return flat
