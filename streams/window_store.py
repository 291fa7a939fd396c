"""The Redis window store: each ticker's newest ``window.RETAIN`` bars (a count), written in batches.

Layout (key names from :class:`minutecast.keys.Keys`):

* ``ns:win:{T}`` hash, field = bar minute (epoch seconds, decimal), value =
  ``f"{open!r} {high!r} {low!r} {close!r} {volume!r} {published_at!r}"`` (``repr`` so floats round-trip
  exactly; ``published_at`` may be ``None``).
* ``ns:winmeta:{T}`` hash: ``max`` newest minute seen, ``ready``/``sum`` the last window announced ready.
* ``ns:stats`` hash: ``stream_*`` counters.
* ``ns:stream:applied`` hash: per bar-topic partition the newest offset applied, moved in the same call
  (the worker passes its batch's offsets; :mod:`streams.repair` says what a gap behind it means).

One Lua script (:mod:`streams.window_lua`, loaded once, then EVALSHA) applies a whole batch of bars, all
tickers at once, in one round trip. Rules, per ticker, bar by bar in delivery order:

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

Readers use :func:`read_windows` (one pipelined round trip for many tickers); the Spark job reads the hashes
itself and decodes them in bulk (:func:`rows_array`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

import numpy as np
import redis as redislib

from minutecast.errors import MinutecastError
from minutecast.keys import Keys
from minutecast.schemas import Bar
from minutecast.window import REACH, RETAIN, WINDOW, Slots, checksum, slots_many, with_market
from streams.window_lua import MARK_LUA, STORE_LUA


class Gap(NamedTuple):
    """Records of a bar-topic partition that Redis should hold but does not."""

    partition: int
    applied: int | None  # the newest offset Redis records as applied (None: no record at all)
    first: int  # the first offset of the batch that found the gap


class StateBehind(MinutecastError):
    """Redis holds less than the records before a batch (it lost acknowledged writes): repair, then retry."""

    def __init__(self, gaps: list[Gap]) -> None:
        super().__init__("window state behind the bar topic: " + ", ".join(
            f"partition {g.partition} applied {g.applied} < {g.first - 1}" for g in gaps))
        self.gaps = gaps


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


def rows_array(fields: Sequence[bytes | str], values: Sequence[bytes | str]) -> np.ndarray:
    """Stored hash fields/values -> (n, 7) float64 sorted by minute: minute (epoch s), open, high, low,
    close, volume, published_at (NaN where :func:`decode_row` gives None). The same floats as
    :func:`decode_row` (Python's own parser, in bulk), without a WindowRow per minute: the Spark job
    reads ~66 rows for each of thousands of tickers per batch. Proven equal by tests/test_window_rows.py."""
    return rows_arrays([(fields, values)])[0]


def rows_arrays(hashes: Sequence[tuple[Sequence[bytes | str], Sequence[bytes | str]]]) -> list[np.ndarray]:
    """:func:`rows_array` of many tickers' (fields, values) at once: one join and one float parse for all of
    them (per ticker the calls cost as much as the parsing at ~66 rows)."""
    sizes = [len(values) for _, values in hashes]
    total = sum(sizes)
    if total == 0:
        return [np.empty((0, 7), dtype=np.float64) for _ in hashes]
    joined = b" ".join(v if isinstance(v, bytes) else v.encode() for _, values in hashes for v in values)
    flat = np.empty((total, 7), dtype=np.float64)
    flat[:, 1:] = np.fromiter(map(float, joined.replace(b"None", b"nan").split()), np.float64,
                              6 * total).reshape(total, 6)
    flat[:, 0] = np.fromiter(map(int, chain.from_iterable(f for f, _ in hashes)), np.int64, total)
    out: list[np.ndarray] = []
    a = 0
    for n in sizes:
        block = flat[a:a + n]
        out.append(block[np.argsort(block[:, 0], kind="stable")])
        a += n
    return out


def array_slots(rows: np.ndarray) -> Slots:
    """:func:`rows_array` rows -> the window policy's slot timeline (what :func:`row_slots` gives)."""
    return array_slots_many([rows])[0]


def array_slots_many(rows: Sequence[np.ndarray]) -> list[Slots]:
    """:func:`array_slots` of many tickers' rows in one :func:`~minutecast.window.slots_many` call."""
    return slots_many([r[:, 0].astype(np.int64) for r in rows], [r[:, 1:6] for r in rows])


def _rows(flat: Sequence[Any]) -> list[WindowRow]:
    rows = [decode_row(flat[k], flat[k + 1]) for k in range(0, len(flat), 2)]
    rows.sort()
    return rows


def _matrix(rows: Sequence[WindowRow]) -> np.ndarray:
    """WindowRows -> (n, 6) float64 minute, open, high, low, close, volume (what :func:`array_slots` reads)."""
    return np.array([r[:6] for r in rows], dtype=np.float64).reshape(-1, 6)


def row_slots(rows: Sequence[WindowRow]) -> Slots:
    """Stored rows -> the window policy's slot timeline (:func:`minutecast.window.slots`)."""
    return array_slots(_matrix(rows))


def _as_array(rows: Sequence[WindowRow] | np.ndarray | None) -> np.ndarray | None:
    return rows if rows is None or isinstance(rows, np.ndarray) else _matrix(rows)


def windows_for(rows: Sequence[Sequence[WindowRow] | np.ndarray], minutes: Sequence[int],
                market_rows: Sequence[WindowRow] | np.ndarray | None = None) -> list[np.ndarray | None]:
    """The (WINDOW, N_COLUMNS) window ending at ``minutes[i]`` of the ticker whose stored rows are ``rows[i]``
    (WindowRows, or :func:`rows_array` rows), under the window policy, with the market ticker's context from
    ``market_rows`` (its stored rows; None or empty: no market context); None where that minute has no ready
    window. The market's rows are slotted once and its context computed in one vectorised call for all
    windows (the Spark job's batch)."""
    arrays = [_as_array(r) for r in rows]
    stored = {i: a for i, a in enumerate(arrays) if a is not None and len(a)}
    own: list[np.ndarray | None] = [None] * len(arrays)
    for i, s in zip(stored, array_slots_many(list(stored.values())), strict=True):
        bars = s.ready()
        bars = bars[s.minutes[bars] == minutes[i]]
        if bars.size:
            own[i] = s.windows(bars)[0]
    have = [(i, w) for i, w in enumerate(own) if w is not None]
    out: list[np.ndarray | None] = [None] * len(own)
    if have:
        m = _as_array(market_rows)
        market = array_slots(m) if m is not None and len(m) else None
        full = with_market(np.stack([w for _, w in have]), market)
        for j, (i, _) in enumerate(have):
            out[i] = full[j]
    return out


def window_for(rows: Sequence[WindowRow] | np.ndarray, t: int,
               market_rows: Sequence[WindowRow] | np.ndarray | None = None) -> np.ndarray | None:
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
    # The newest ``view`` stored bars as rows_array rows (n, 7), sorted by minute.
    rows: np.ndarray = field(default_factory=lambda: np.empty((0, 7), dtype=np.float64))

    def ready_window(self, s: Slots | None = None) -> tuple[int, np.ndarray, str, float | None] | None:
        """(t, window, checksum, published_at at t) of the newest ready window, ending no more than
        ``REACH`` minutes before the newest minute (usually at the newest minute itself). ``s``: the rows'
        slot timeline when the caller has it already (:func:`ready_windows` slots all tickers at once)."""
        if not len(self.rows):
            return None
        s = array_slots(self.rows) if s is None else s
        bars = s.ready()
        bars = bars[s.minutes[bars] >= self.newest - 60 * REACH]
        if bars.size == 0:
            return None
        i = int(bars[-1])
        t, win = int(s.minutes[i]), s.windows(np.array([i]))[0]
        at_t = self.rows[self.rows[:, 0] == t, 6]
        pub = float(at_t[-1]) if at_t.size and not np.isnan(at_t[-1]) else None
        return t, win, checksum(win), pub


def ready_windows(results: Sequence[TickerResult]) -> list[tuple[int, np.ndarray, str, float | None] | None]:
    """:meth:`TickerResult.ready_window` of many tickers, their slot timelines computed in one call."""
    timelines = iter(array_slots_many([r.rows for r in results if len(r.rows)]))
    return [r.ready_window(next(timelines)) if len(r.rows) else None for r in results]


class WindowStore:
    """Applies batches of bars to Redis with one EVALSHA per batch (see the module docstring)."""

    def __init__(self, client: redislib.Redis, keys: Keys, ttl_s: int, *,
                 retain: int = RETAIN, view: int = WINDOW + 1, counters: str = "stream_") -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = int(ttl_s)
        self.retain = int(retain)  # bars kept per ticker
        # Bars returned per ticker (0: none, for rebuild). The newest ready window always ends at the newest
        # bar (slots only grow with bars), and that window needs at most WINDOW bars plus the one before it:
        # WINDOW + 1 announce exactly what the whole store would (tests/test_window_rows.py proves it).
        self.view = int(view)
        self.counters = counters  # prefix of this store's counters in ``ns:stats`` (rebuild: "rebuild_")
        self._script = client.register_script(STORE_LUA)
        self._mark = client.register_script(MARK_LUA)
        self.roundtrips = 0  # Redis round trips made by this store (for the benchmark)
        self._unreported = 0  # round trips not yet added to the stats hash

    def apply(self, bars: Sequence[Bar], messages: int = 0, offsets: Mapping[int, tuple[int, int]] | None = None,
              ) -> tuple[dict[str, TickerResult], list[int], list[int]]:
        """Write ``bars`` (any tickers, any order). Returns (per-ticker results, late indexes, conflict
        indexes) where indexes point into ``bars``. One round trip. ``messages``: how many Kafka
        records the batch had (invalid ones included), added to the ``stream_messages`` counter.
        ``offsets``: {partition: (first, last)} of those records; given, the applied record
        (``ns:stream:applied``) is checked and moved in the same call, and :class:`StateBehind` is raised
        (nothing written) when Redis holds less than the records before ``first``."""
        if not bars and not messages:
            return {}, [], []
        by_ticker: dict[str, list[int]] = {}
        for i, bar in enumerate(bars):
            by_ticker.setdefault(bar.ticker, []).append(i)
        keys: list[str] = [self.keys.stats(), self.keys.stream_applied()]
        spec = "\n".join(f"{p} {a} {b}" for p, (a, b) in sorted((offsets or {}).items()))
        args: list[Any] = [self.ttl_s, self.retain, self.view, self._unreported + 1, messages, self.counters, spec]
        for ticker, idx in by_ticker.items():
            keys += (self.keys.window(ticker), self.keys.window_meta(ticker))
            args.append("\n".join([f"{bars[i].minute}\n{encode_value(bars[i])}" for i in idx]))
        raw = self._script(keys=keys, args=args)
        self.roundtrips += 1
        if raw and raw[0] == b"gap":
            self._unreported += 1
            raise StateBehind([Gap(int(p), int(cur) if cur else None, int(first)) for p, cur, first in raw[1]])
        self._unreported = 0
        results: dict[str, TickerResult] = {}
        late: list[int] = []
        conflicts: list[int] = []
        flats = [item[5].split(b"\n") if item[5] else [] for item in raw]
        arrays = rows_arrays([(f[0::2], f[1::2]) for f in flats])
        for (ticker, idx), item, rows in zip(by_ticker.items(), raw, arrays, strict=True):
            newest, ready, sum_, late_j, conf_j, _ = item
            res = TickerResult(
                ticker=ticker,
                newest=int(newest),
                announced=int(ready) if ready else None,
                announced_sum=(sum_.decode() if isinstance(sum_, bytes) else sum_) or None,
                late=[idx[j] for j in late_j],
                conflicts=[idx[j] for j in conf_j],
                rows=rows,
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

    def mark_applied(self, upto: Mapping[int, int]) -> None:
        """Move the applied record of each partition up to ``upto[partition]`` (never down): after a repair
        or a rebuild has applied every record up to that offset, or for records that never reach the
        script (a dead-lettered poison record)."""
        if not upto:
            return
        flat = [x for p, off in sorted(upto.items()) for x in (p, off)]
        self._mark(keys=[self.keys.stream_applied()], args=flat)
        self.roundtrips += 1
        self._unreported += 1

    def applied(self) -> dict[int, int]:
        """The applied record: {partition: newest offset applied}."""
        return {int(p): int(o) for p, o in self.client.hgetall(self.keys.stream_applied()).items()}

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

    Stable API (tests and readers outside the pipeline; the Spark job decodes in bulk, :func:`rows_array`): rows are
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
