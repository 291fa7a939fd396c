"""Streamed training samples: the bar history a group of tickers at a time, windows a chunk at a time.

Memory is bounded by one group of tickers (:data:`GROUP_FILES` per-ticker files, or :data:`GROUP_TICKERS`
tickers already read from Kafka), one chunk of windows (:data:`CHUNK`) and the per-sample scalars of the
capped training and validation subsets, not by the number of tickers:

* :func:`plan` (pass 1) counts each ticker's catalogue samples per New York date and its ready minutes
  (:class:`training.scoring.ReadyCounts`), without a window. From the counts alone it finds the same split
  (:func:`training.data.split_days`) and the same subsample (:func:`training.data.subsample`'s draw over the
  rank's samples in sorted ticker order) as materialising the catalogue would: :class:`Plan` holds, per
  ticker, the positions of its chosen samples in its catalogue (train, then validation, then test).
* :func:`chunks` (every later pass) re-reads the groups and yields the chosen samples of one split as
  :class:`training.data.Samples` of at most ``size`` windows, built by :meth:`training.data.Catalog.samples`
  (the same windows, bit for bit); ``whole=True`` keeps each ticker's samples in one chunk (the online
  calibration replays a ticker in time order).
* :class:`Spill` holds model inputs (float32 rows) in a scratch file, read back a batch at a time with
  ``pread`` (no memory map: its pages would count in the resident set).

A ticker's series must lie in one group: with files, one ticker per file (the recorded layout); a directory
whose files each hold many tickers is read as a single group (memory then grows with the history).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minutecast.errors import MinutecastError
from minutecast.window import regular_hours, session_ids
from training import data as D
from training import memory
from training.scoring import ReadyCounts, ready_counts

log = logging.getLogger(__name__)
GROUP_FILES = 16  # per-ticker files read at once (~50k bars each for 64 sessions: ~40 MB of bars and slots)
GROUP_TICKERS = 16  # tickers of an in-memory history (Kafka) turned into windows at once
CHUNK = 16_384  # windows built at once (float64: ~94 MB; the bound on window memory)


class Groups:
    """The rank's bar history as groups of whole tickers, re-read on every pass. ``files``: recorded files
    (read and checked :data:`GROUP_FILES` at a time on the first pass, :func:`training.data.read_files`; later
    passes load each group's checked bars back from ``scratch``, uncompressed numpy, ~48 bytes a bar); or
    ``bars``: a history read into memory (the rank's Kafka partitions), moved into ``scratch`` at once."""

    def __init__(self, files: list[Path] | None = None, tickers: list[str] | None = None,
                 bars: D.BarSet | None = None, scratch: Path | None = None) -> None:
        self.files, self.tickers, self.bars, self.scratch = files, tickers, bars, scratch
        self.firsts = D.FirstValues()  # repeats left out, counted on the first pass
        self.passes = 0
        self.single = False  # a ticker spans several file groups: one group of every file
        self.cached: list[Path] = []
        self.ready = False  # every group is in ``cached``
        if bars is not None and scratch is not None:  # out of memory into scratch files, a group each
            names, step = sorted(bars), GROUP_TICKERS
            self.cached = [_save_group(scratch / f"bars-{k:05d}.npz", {t: bars[t] for t in names[lo:lo + step]})
                           for k, lo in enumerate(range(0, len(names), step))]
            self.bars, self.ready = None, True

    def __iter__(self) -> Iterator[D.BarSet]:
        # what each group's work freed goes back before the next is read (see training.memory)
        return memory.released(self._groups(), "a group")

    def _groups(self) -> Iterator[D.BarSet]:
        self.passes += 1
        if self.ready:
            for path in self.cached:
                yield _load_group(path)
            return
        if self.bars is not None:
            names = sorted(self.bars)
            for lo in range(0, len(names), GROUP_TICKERS):
                yield {t: self.bars[t] for t in names[lo:lo + GROUP_TICKERS]}
            return
        files = self.files or []
        step = len(files) if self.single else GROUP_FILES
        self.cached = []
        for k, lo in enumerate(range(0, len(files), max(step, 1))):
            bars, firsts = D.read_files(files[lo:lo + step], self.tickers)
            self.firsts += firsts
            if self.scratch is not None:
                self.cached.append(_save_group(self.scratch / f"bars-{k:05d}.npz", bars))
            yield bars
        self.ready = self.scratch is not None

    def restart(self) -> None:
        """Back to before the first pass, as one group of every file."""
        self.single, self.passes, self.firsts, self.cached, self.ready = True, 0, D.FirstValues(), [], False


def _save_group(path: Path, bars: D.BarSet) -> Path:
    names = sorted(bars)
    np.savez(path, names=np.asarray(names, dtype=str),
             sizes=np.asarray([bars[t].minutes.size for t in names], np.int64),
             minutes=np.concatenate([bars[t].minutes for t in names] or [np.empty(0, np.int64)]),
             ohlcv=np.concatenate([bars[t].ohlcv for t in names] or [np.empty((0, 5))]))
    return path


def _load_group(path: Path) -> D.BarSet:
    with np.load(path) as z:
        names, sizes, minutes, ohlcv = z["names"], z["sizes"], z["minutes"], z["ohlcv"]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return {str(t): D.Series(minutes[bounds[k]:bounds[k + 1]], ohlcv[bounds[k]:bounds[k + 1]])
            for k, t in enumerate(names)}


@dataclass
class Plan:
    """Which samples of each ticker (positions in its catalogue, time order) each split takes."""

    # ticker -> (New York dates, catalogue samples per date, of which with an as-of minute in regular hours)
    days: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    ready: dict[str, ReadyCounts]  # ticker -> ready minutes per date (the report's ready share)
    market: D.Series | None  # the market ticker's bars, when this rank read them
    bars: int = 0  # bars read (after keep_first)
    cuts: tuple[int, int] = (0, 0)
    # split -> ticker -> positions: a range until subsampled (an arange of every sample of every ticker would
    # cost 8 bytes a sample at once, ~350 MB at 2,000 tickers x 45 days, left resident in the heap once freed)
    take: dict[str, dict[str, np.ndarray | range]] = field(default_factory=dict)

    def split(self, cuts: tuple[int, int]) -> dict[str, int]:
        """Per ticker: its first ``n_train`` samples are training, the next ``n_val`` validation, the rest test
        (dates only grow along a ticker's catalogue). Returns the samples per split."""
        self.cuts = cuts
        self.take = {"train": {}, "val": {}, "test_all": {}}
        for t, (days, counts, _) in sorted(self.days.items()):
            n_train = int(counts[days < cuts[0]].sum())
            n_val = int(counts[(days >= cuts[0]) & (days < cuts[1])].sum())
            n = int(counts.sum())
            self.take["train"][t] = range(n_train)
            self.take["val"][t] = range(n_train, n_train + n_val)
            self.take["test_all"][t] = range(n_train + n_val, n)
        return {k: sum(len(p) for p in v.values()) for k, v in self.take.items()}

    def positions(self, which: str, t: str) -> np.ndarray | None:
        """Ticker ``t``'s chosen positions in split ``which`` (None: none taken)."""
        pos = self.take[which].get(t)
        return np.arange(pos.start, pos.stop) if isinstance(pos, range) else pos

    def test_regular(self) -> int:
        """Regular-hours samples of the test dates (what the report scores) on this rank."""
        return sum(int(r[d >= self.cuts[1]].sum()) for d, _, r in self.days.values())

    def subsample(self, which: str, max_samples: int | None, seed: int) -> int:
        """:func:`training.data.subsample` of split ``which`` over the rank's tickers in sorted order: the same
        draw, so the same samples. Returns how many are kept."""
        parts = self.take[which]
        names = sorted(parts)
        sizes = np.array([len(parts[t]) for t in names], np.int64)
        total = int(sizes.sum())
        if max_samples is None or total <= max_samples:
            return total
        idx = np.sort(np.random.default_rng(seed).choice(total, size=max_samples, replace=False))
        starts = np.concatenate([[0], np.cumsum(sizes)])
        for k, t in enumerate(names):
            lo, hi = np.searchsorted(idx, [starts[k], starts[k + 1]])
            part = parts[t]
            chosen = idx[lo:hi] - starts[k]
            parts[t] = part.start + chosen if isinstance(part, range) else part[chosen]
        return max_samples


def plan(groups: Groups, market_ticker: str | None) -> Plan:
    """Pass 1: per ticker, its catalogue samples per date and its ready minutes, no windows. Falls back to one
    group when a ticker turns up in two file groups (a day-per-file layout)."""
    out = Plan({}, {}, None)
    seen: set[str] = set()
    for bars in groups:
        if seen & bars.keys() and not groups.single:
            log.warning("ticker(s) %s span several files: reading every file at once (memory grows with the "
                        "history; one file per ticker keeps it bounded)", sorted(seen & bars.keys())[:5])
            groups.restart()
            return plan(groups, market_ticker)
        seen |= bars.keys()
        cat = D.catalog(bars, None)
        for t, (lo, hi) in cat.ranges().items():
            days, inv, counts = np.unique(session_ids(cat.ends[lo:hi]), return_inverse=True, return_counts=True)
            reg = np.bincount(inv.ravel(), weights=regular_hours(cat.ends[lo:hi]), minlength=days.size)
            out.days[t] = (days, counts, reg.astype(np.int64))
        for t, s in bars.items():
            out.ready[t] = ready_counts(s)
            out.bars += int(s.minutes.size)
            out.days.setdefault(t, (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)))
        if market_ticker in bars:
            out.market = bars[market_ticker]
    return out


def chunks(groups: Groups, p: Plan, which: str, market_ticker: str | None, market: D.Series | None,
           size: int = CHUNK, whole: bool = False,
           keep: Callable[[D.Catalog], np.ndarray] | None = None) -> Iterator[D.Samples]:
    """The samples of split ``which`` (``p.take[which]``), in catalogue order (tickers sorted within a group),
    ``size`` windows at a time; ``whole``: each ticker's samples in one chunk (several tickers per chunk up
    to ``size``). ``keep``: a further filter of the chosen samples (True = kept), e.g. regular hours."""
    pending: list[D.Catalog] = []
    n = 0
    for bars in groups:
        cat = D.catalog(bars, market_ticker, None if market_ticker in bars else market)
        for t, (lo, _) in cat.ranges().items():
            pos = p.positions(which, t)
            if pos is None or not pos.size:
                continue
            part = cat.take(lo + pos)
            if keep is not None:
                part = part.take(np.flatnonzero(keep(part)))
            if not whole:
                pending.append(part)
                n += len(part)
                while n >= size:
                    merged = _merge(pending)
                    yield merged.take(np.arange(size)).samples()
                    rest = merged.take(np.arange(size, len(merged)))
                    pending, n = [rest], len(rest)
                continue
            if pending and n + len(part) > size:
                yield _merge(pending).samples()
                pending, n = [], 0
            pending.append(part)
            n += len(part)
    if n:
        yield _merge(pending).samples()


def regular(c: D.Catalog) -> np.ndarray:
    """The ``keep`` filter of the test split: as-of minutes in regular hours (what the report scores)."""
    return regular_hours(c.ends)


def _merge(parts: list[D.Catalog]) -> D.Catalog:
    """Catalogues one after the other, holding only the series of their own tickers (a part taken from a
    group's catalogue refers to every series of the group: carried on, they would pile up pass long)."""
    series = {str(t): c.series[str(t)] for c in parts for t in np.unique(c.tickers)}
    cat = np.concatenate
    return D.Catalog(series, parts[0].market, cat([c.tickers for c in parts]), cat([c.bars for c in parts]),
                     cat([c.ends for c in parts]), cat([c.targets for c in parts]))


class Spill:
    """Rows of one shape and dtype appended to a scratch file, read back by index (``pread``)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: type = np.float32) -> None:
        self.path, self.shape = path, shape
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        self.row_bytes = int(np.prod(shape)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.rows = 0

    def __len__(self) -> int:
        return self.rows

    def append(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.shape[1:] != self.shape:
            raise MinutecastError(f"spill rows of shape {x.shape[1:]}, expected {self.shape}")
        if x.size and os.pwrite(self.fd, x.data.cast("B"), self.rows * self.row_bytes) != x.nbytes:
            raise MinutecastError(f"short write to {self.path} (disk full?)")
        self.rows += x.shape[0]

    def read(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (any order, repeats allowed) as one array (len(idx), *shape)."""
        out = np.empty((len(idx), *self.shape), self.dtype)
        view = out.data.cast("B")
        rb = self.row_bytes
        for k, i in enumerate(np.asarray(idx, np.int64).tolist()):
            if os.preadv(self.fd, [view[k * rb:(k + 1) * rb]], i * rb) != rb:
                raise MinutecastError(f"row {i} is not in {self.path} ({self.rows} rows)")
        return out

    def range(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) in one read."""
        hi = min(hi, self.rows)
        out = np.empty((max(hi - lo, 0), *self.shape), self.dtype)
        if out.size and os.preadv(self.fd, [out.data.cast("B")], lo * self.row_bytes) != out.nbytes:
            raise MinutecastError(f"short read from {self.path}")
        return out

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)
