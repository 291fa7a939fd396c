"""The Redis window store: each ticker's last ``window.RETAIN`` minutes of bars, written in batches.

Layout (key names from :class:`minutecast.keys.Keys`):

* ``ns:win:{T}`` hash, field = bar minute (epoch seconds, decimal), value =
  ``f"{open!r} {high!r} {low!r} {close!r} {volume!r} {published_at!r}"`` (``repr`` so floats round-trip
  exactly; ``published_at`` may be ``None``).
* ``ns:winmeta:{T}`` hash: ``max`` newest minute seen, ``ready``/``sum`` the last window announced ready.
* ``ns:stats`` hash: ``stream_*`` counters.

One Lua script (loaded once, then EVALSHA) applies a whole batch of bars, all tickers at once, in one
round trip. Rules, per ticker, with ``newest`` = max(meta ``max``, newest minute in the batch):

* a bar whose minute is ``<= newest - RETAIN*60`` is *late*: dropped and counted (``newest`` here is the
  newest minute before that bar, in delivery order, so a batch counts what one-by-one delivery would);
* a bar for a minute not stored yet is written; the same bar again is a no-op (idempotent);
* a bar for a stored minute with different OHLCV is a *conflicting duplicate*: the first one is kept and
  the newcomer is reported (the caller dead-letters it as ``conflicting_duplicate``). A bar that differs
  only in ``published_at`` (a producer re-publishing) is a plain duplicate;
* fields older than ``newest - RETAIN*60`` are trimmed; both keys get ``EXPIRE window_ttl_s``.

Because the retained set is always "minutes in (newest - RETAIN, newest]" and a minute keeps its first
value, replays, duplicates and out-of-order arrival inside the window end in the state of one in-order
delivery. The script returns, per ticker, the rows of the last ``view`` minutes and the meta, so the
caller decides readiness without another round trip.

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
from minutecast.window import MAX_FILL, REACH, RETAIN, WINDOW, checksum, ready_windows, window_at

# KEYS: [stats, win(T1), meta(T1), win(T2), meta(T2), ...]
# ARGV: [ttl_s, retain_s, view_s, roundtrips, messages, counter prefix, bars(T1), bars(T2), ...]
#   bars(T) = "minute\nvalue\nminute\nvalue..." (one string per ticker: far cheaper to encode and send
#   than two arguments per bar)
# Returns per ticker: {newest, ready, sum, late-indexes, conflict-indexes, "minute\nvalue\n..." rows}
# (indexes are 0-based positions among that ticker's bars in the call).
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
  local a = {}
  for line in string.gmatch(ARGV[6 + i], '[^\n]+') do a[#a + 1] = line end
  local n = #a / 2
  local m = redis.call('HMGET', meta, 'max', 'ready', 'sum')
  local old_max = tonumber(m[1])
  local newest = old_max or -1
  for j = 0, n - 1 do
    local t = tonumber(a[1 + 2 * j])
    if t > newest then newest = t end
  end
  local cutoff = newest - retain
  local late = {}
  local conf = {}
  -- Late is judged against the newest minute seen *before* each bar (as one-by-one delivery would);
  -- a bar superseded later in the same batch (older than the final cutoff) is not written at all.
  local running = old_max or -1
  for j = 0, n - 1 do
    local f = a[1 + 2 * j]
    local v = a[2 + 2 * j]
    local t = tonumber(f)
    if t <= running - retain then
      late[#late + 1] = j
    else
      if t > running then running = t end
      local cur = redis.call('HGET', win, f)
      if not cur then
        if t > cutoff then redis.call('HSET', win, f, v) end
        c_new = c_new + 1
      elseif cur == v or string.match(cur, '^(.*) ') == string.match(v, '^(.*) ') then
        c_dup = c_dup + 1
      else
        conf[#conf + 1] = j
      end
    end
  end
  c_in = c_in + n
  c_late = c_late + #late
  c_conf = c_conf + #conf
  if old_max == nil or newest > old_max then
    local del = {}
    for _, f in ipairs(redis.call('HKEYS', win)) do
      if tonumber(f) <= cutoff then del[#del + 1] = f end
    end
    for k = 1, #del, 1000 do
      redis.call('HDEL', win, unpack(del, k, math.min(k + 999, #del)))
    end
    redis.call('HSET', meta, 'max', newest)
  end
  redis.call('EXPIRE', win, ttl)
  redis.call('EXPIRE', meta, ttl)
  local rows = {}
  local all = redis.call('HGETALL', win)
  local from = newest - view
  for k = 1, #all, 2 do
    if tonumber(all[k]) > from then
      rows[#rows + 1] = all[k]
      rows[#rows + 1] = all[k + 1]
    end
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
    close: float
    volume: float
    published_at: float | None  # producer publish time (epoch s), None when the producer did not say


def encode_value(bar: Bar) -> str:
    """The hash value of one bar (repr: floats round-trip exactly)."""
    return f"{bar.open!r} {bar.high!r} {bar.low!r} {bar.close!r} {bar.volume!r} {bar.published_at!r}"


def decode_row(field_: bytes | str, value: bytes | str) -> WindowRow:
    """A hash field/value pair -> :class:`WindowRow`."""
    parts = (value.decode() if isinstance(value, bytes) else value).split(" ")
    pub = parts[5]
    return WindowRow(int(field_), float(parts[3]), float(parts[4]), None if pub == "None" else float(pub))


def _rows(flat: Sequence[Any]) -> list[WindowRow]:
    rows = [decode_row(flat[k], flat[k + 1]) for k in range(0, len(flat), 2)]
    rows.sort()
    return rows


def window_for(rows: Sequence[WindowRow], t: int) -> np.ndarray | None:
    """The (WINDOW, 2) [close, volume] window ending at minute ``t`` under the window policy, or None."""
    if not rows:
        return None
    return window_at(((r.minute, r.close, r.volume) for r in rows), t)


@dataclass
class TickerResult:
    """What one store call left for one ticker."""

    ticker: str
    newest: int  # newest minute stored (epoch s)
    announced: int | None  # minute of the last window announced ready (meta ``ready``)
    announced_sum: str | None  # its checksum (meta ``sum``)
    late: list[int] = field(default_factory=list)  # indexes (into the call's bars) dropped as late
    conflicts: list[int] = field(default_factory=list)  # indexes of conflicting duplicates (not written)
    rows: list[WindowRow] = field(default_factory=list)  # stored minutes > newest - view, sorted

    def ready_window(self) -> tuple[int, np.ndarray, str, float | None] | None:
        """(t, window, checksum, published_at at t) of the newest ready window, ending no more than
        ``REACH`` minutes before the newest minute (usually at the newest minute itself)."""
        if not self.rows:
            return None
        w = ready_windows(np.array([r.minute for r in self.rows]), np.array([r.close for r in self.rows]),
                          np.array([r.volume for r in self.rows]))
        ok = w.ends >= self.newest - 60 * REACH
        if not ok.any():
            return None
        i = int(np.flatnonzero(ok)[np.argmax(w.ends[ok])])
        t, win = int(w.ends[i]), w.values[i]
        pub = next((r.published_at for r in reversed(self.rows) if r.minute == t), None)
        return t, win, checksum(win), pub


class WindowStore:
    """Applies batches of bars to Redis with one EVALSHA per batch (see the module docstring)."""

    def __init__(self, client: redislib.Redis, keys: Keys, ttl_s: int, *,
                 retain: int = RETAIN, view: int = WINDOW + MAX_FILL + REACH + 1, counters: str = "stream_") -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = int(ttl_s)
        self.retain_s = 60 * retain
        self.view_s = 60 * view  # rows returned: enough for the window at newest plus its fill look-back
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
        args: list[Any] = [self.ttl_s, self.retain_s, self.view_s, self._unreported + 1, messages, self.counters]
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
    """All stored minutes of ``ticker`` as :class:`WindowRow` (minute, close, volume, published_at),
    sorted by minute; empty when the ticker has no window. Use :func:`window_for` to cut the window."""
    return _rows(_flatten(client.hgetall(keys.window(ticker))))


def read_windows(client: redislib.Redis, keys: Keys, tickers: Iterable[str]) -> dict[str, list[WindowRow]]:
    """:func:`read_window` for many tickers in one pipelined round trip: ``{ticker: rows}``.

    Stable API (the Spark job relies on it): rows are ``WindowRow(minute, close, volume, published_at)``
    sorted by minute, at most ``window.RETAIN`` of them; a ticker without a window maps to ``[]``.
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
