"""The Redis window store: each ticker's newest ``window.RETAIN`` bars (a count), written in batches.

Layout v4 (key names from :class:`minutecast.keys.Keys`; this module is the only code that knows the bytes):

* ``ns:w4:{T}`` string, every number a little-endian float64 unless said otherwise:

  ======  ==========  ==============================================================================
  offset  size        content
  ======  ==========  ==============================================================================
  0       4           ``b"MCW4"`` (layout version 4; any other value is refused, never guessed at)
  4       4           n, the number of stored bars (uint32)
  8       8           minute of the last window announced ready (-1: none)
  16      16          its checksum (16 hex digits; zero bytes: none)
  32      8           ``published_at`` of the newest row (NaN: the producer did not say)
  40      48 n        rows ``minute open high low close volume``, ascending by minute
  40+48n  8 n         slot counter of each row (:mod:`streams.window_lua` says what it counts)
  ======  ==========  ==============================================================================

  5,080 bytes at ``RETAIN`` bars (v3 kept every row's ``published_at``, 5,792: only the newest one was ever
  read); TTL ``window_ttl_s``.
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
* the key gets ``EX window_ttl_s``.

Retention is a count, not a time span, so the store holds the bars before an overnight gap or a weekend
and a window can reach across it (:mod:`minutecast.window`). The retained set is always "the newest
``RETAIN`` minutes of everything delivered" (by induction: a new minute either ranks among them, and the
oldest one drops out, or it is late) and a minute keeps its first value, so replays, duplicates and any
arrival order end in the state of one in-order delivery. The script keeps each row's slot counter, so it
returns per ticker a few scalars: the newest minute, whether the window at it is ready, that window's
:func:`minutecast.window.checksum` (computed from one substring of the rows), the newest bar's
``published_at`` and the window announced last. No rows travel back to the worker.

Readers fetch values with GET (one pipelined round trip for many tickers) and decode them with
:func:`decode_value` (``np.frombuffer``; no per-row Python); :mod:`streams.windows` cuts windows from them.
A store written in an older layout (v3's ``ns:w3:{T}`` values, v2's ``ns:win:{T}`` text hashes) is never
read: :meth:`WindowStore.legacy_keys` finds it and ``minutecast rebuild`` (or the worker's start-up) replaces it
from the bar topic (:mod:`streams.rebuild`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import redis as redislib

from minutecast.errors import MinutecastError
from minutecast.keys import Keys
from minutecast.schemas import Bar
from minutecast.window import RETAIN
from streams.window_lua import ANNOUNCE_LUA, MARK_LUA, STORE_LUA

MAGIC = b"MCW4"
HEADER = struct.Struct("<4sId16sd")  # magic, n, announced minute (-1: none), its checksum, newest pub
ROW_COLUMNS = 6  # minute open high low close volume
BAR = struct.Struct("<7d")  # one bar as the script takes it: a row, then published_at (NaN: unknown)
NO_PUB = float("nan")


class LayoutError(MinutecastError):
    """A window value that is not in this module's layout (an older store, or damage): never read."""


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
    published_at: float | None  # producer publish time (epoch s) of the newest row; None for the others or unknown


def encode_bars(bars: Sequence[Bar]) -> bytes:
    """Bars as the store script takes them: :data:`BAR` records (56 bytes each) in the given order."""
    return b"".join(BAR.pack(b.minute, b.open, b.high, b.low, b.close, b.volume,
                             NO_PUB if b.published_at is None else b.published_at) for b in bars)


def decode_value(value: bytes | None) -> np.ndarray:
    """One stored value -> (n, 7) float64 rows sorted by minute: minute (epoch s), open, high, low, close,
    volume, published_at (the newest row's; NaN for the others, and when unknown); (0, 7) for None (no such
    key). Raises :class:`LayoutError` for a value of another layout or length: nothing is guessed."""
    if value is None:
        return np.empty((0, 7), dtype=np.float64)
    if len(value) < HEADER.size or value[:4] != MAGIC:
        raise LayoutError(f"window value is not in layout {MAGIC.decode()} (starts {value[:4]!r}): "
                          "run `minutecast rebuild`")
    _, n, _, _, pub = HEADER.unpack_from(value)
    if len(value) != HEADER.size + 56 * n:
        raise LayoutError(f"window value of {len(value)} bytes for {n} bars (want {HEADER.size + 56 * n})")
    out = np.full((n, 7), np.nan, dtype=np.float64)
    out[:, :6] = np.frombuffer(value, "<f8", ROW_COLUMNS * n, HEADER.size).reshape(n, ROW_COLUMNS)
    if n:
        out[-1, 6] = pub
    return out


def decode_values(values: Sequence[bytes | None]) -> list[np.ndarray]:
    """:func:`decode_value` of many tickers' values (the Spark job's pipelined read)."""
    return [decode_value(v) for v in values]


def to_rows(rows: np.ndarray) -> list[WindowRow]:
    """:func:`decode_value` rows -> :class:`WindowRow` (readers outside the hot path)."""
    return [WindowRow(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]),
                      None if np.isnan(r[6]) else float(r[6])) for r in rows]


class Ready(NamedTuple):
    """The window at a ticker's newest bar, as the store script reports it."""

    minute: int  # epoch s of the newest bar (the window's last slot)
    checksum: str  # :func:`minutecast.window.checksum` of the window
    published_at: float | None  # the newest bar's publish time at the producer


@dataclass
class TickerResult:
    """What one store call left for one ticker."""

    ticker: str
    newest: int  # newest minute stored (epoch s; -1: nothing stored)
    announced: int | None  # minute of the last window announced ready
    announced_sum: str | None  # its checksum
    ready: Ready | None = None  # the window at the newest bar, when the policy has one
    late: list[int] = field(default_factory=list)  # indexes (into the call's bars) dropped as late
    conflicts: list[int] = field(default_factory=list)  # indexes of conflicting duplicates (not written)


class WindowStore:
    """Applies batches of bars to Redis with one EVALSHA per batch (see the module docstring)."""

    def __init__(self, client: redislib.Redis, keys: Keys, ttl_s: int, *,
                 retain: int = RETAIN, counters: str = "stream_") -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = int(ttl_s)
        self.retain = int(retain)  # bars kept per ticker
        self.counters = counters  # prefix of this store's counters in ``ns:stats`` (rebuild: "rebuild_")
        self._script = client.register_script(STORE_LUA)
        self._announce = client.register_script(ANNOUNCE_LUA)
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
        args: list[Any] = [self.ttl_s, self.retain, self._unreported + 1, messages, self.counters, spec]
        for ticker, idx in by_ticker.items():
            keys.append(self.keys.window(ticker))
            args.append(encode_bars([bars[i] for i in idx]))
        raw = self._script(keys=keys, args=args)
        self.roundtrips += 1
        if raw and raw[0] == b"gap":
            self._unreported += 1
            raise StateBehind([Gap(int(p), int(cur) if cur else None, int(first)) for p, cur, first in raw[1]])
        self._unreported = 0
        results: dict[str, TickerResult] = {}
        late: list[int] = []
        conflicts: list[int] = []
        for (ticker, idx), item in zip(by_ticker.items(), raw, strict=True):
            newest, ready, sum_, pub, ann_t, ann_sum, late_j, conf_j = item
            rd = None
            if ready:
                p = struct.unpack("<d", pub)[0]
                rd = Ready(int(newest), sum_.decode(), None if p != p else p)
            res = TickerResult(ticker=ticker, newest=int(newest),
                               announced=None if int(ann_t) < 0 else int(ann_t),
                               announced_sum=ann_sum.decode() or None, ready=rd,
                               late=[idx[j] for j in late_j], conflicts=[idx[j] for j in conf_j])
            results[ticker] = res
            late += res.late
            conflicts += res.conflicts
        return results, sorted(late), sorted(conflicts)

    def mark_announced(self, announced: dict[str, tuple[int, str]]) -> None:
        """Record the last window announced per ticker (in each value's header): one round trip."""
        if not announced:
            return
        self._announce(keys=[self.keys.window(t) for t in announced],
                       args=[x for t, cs in announced.values() for x in (t, cs)])
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

    def legacy_keys(self) -> list[str]:
        """Keys of an older window layout in this namespace (v3: ``ns:w3:{T}``; v2: ``ns:win:{T}`` text
        hashes and their ``ns:winmeta:{T}``): a store this version never reads; :meth:`drop_legacy` clears them."""
        return [k.decode() if isinstance(k, bytes) else k for pattern in self.keys.legacy_window_patterns()
                for k in self.client.scan_iter(match=pattern, count=1000)]

    def drop_legacy(self) -> int:
        """Delete the older layout's keys and the applied record that described them (a rebuild writes both
        anew from the bar topic). Returns how many window keys of the old layout there were."""
        old = self.legacy_keys()
        for k in range(0, len(old), 1000):
            self.client.delete(*old[k:k + 1000])
        if old:
            self.client.delete(self.keys.stream_applied())
        return sum(":winmeta:" not in k for k in old)


def read_window(client: redislib.Redis, keys: Keys, ticker: str) -> list[WindowRow]:
    """All stored bars of ``ticker`` (its newest ``RETAIN``) as :class:`WindowRow`, sorted by minute;
    empty when the ticker has no window. Use :func:`window_for` to cut the window."""
    value: Any = client.get(keys.window(ticker))
    return to_rows(decode_value(value))


def read_windows(client: redislib.Redis, keys: Keys, tickers: Iterable[str]) -> dict[str, list[WindowRow]]:
    """:func:`read_window` for many tickers in one pipelined round trip: ``{ticker: rows}``.

    Stable API (tests and readers outside the pipeline; the Spark job decodes arrays, :func:`decode_value`):
    rows are ``WindowRow(minute, open, high, low, close, volume, published_at)`` sorted by minute (only the
    newest row has a ``published_at``), at most
    ``window.RETAIN`` of them; a ticker without a window maps to ``[]``.
    """
    tickers = list(dict.fromkeys(tickers))
    pipe = client.pipeline(transaction=False)
    for t in tickers:
        pipe.get(keys.window(t))
    return {t: to_rows(decode_value(v)) for t, v in zip(tickers, pipe.execute(), strict=True)}
