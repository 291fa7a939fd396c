"""Training data: bars from Kafka (or recorded files) -> a catalogue of samples -> time split -> windows.

* :func:`read_topic` reads the bar topic from the beginning up to a recorded snapshot of end offsets;
  under Horovod rank ``r`` of ``n`` reads only ``partitions[r::n]`` (a ticker lives in one partition, so
  each rank builds whole-ticker series). Bad records are skipped and counted (dead-lettered upstream).
* :func:`load_bars` reads recorded files with the replay producer's reader (CSV, ``.gz``, Parquet; one
  loader for both) and keeps the rows :func:`producers.bars.check` accepts (the schema's validation).
* A minute's *first* bar wins, in training as in serving: both readers pass every ticker's records, in
  arrival order, through :func:`minutecast.dedupe.first_wins` (:func:`keep_first`), the rule the window
  store's Lua script applies; conflicting duplicates (dead-lettered by serving) are dropped and counted.
* :func:`catalog` lists every ready window with a target (``HORIZON`` minutes later) without building
  any window: (ticker, bar index, as-of minute, target close). It is split by New York trading date
  (:func:`split_days`: the last ~15% of dates test, the ~15% before validation, the rest training) and
  subsampled *before* :meth:`Catalog.samples` materialises raw windows (memory: ~5.8 kB per window).
* Market context: the market ticker's slots are passed to every window (:func:`minutecast.window.with_market`);
  under Horovod the rank holding the market ticker's partition shares its series with the others.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from minutecast.dedupe import first_wins
from minutecast.errors import ConfigError, MinutecastError, Rejected, ServiceUnavailable
from minutecast.kafka import make_consumer
from minutecast.schemas import parse_bar_record
from minutecast.settings import KafkaSettings
from minutecast.window import N_COLUMNS, WINDOW, C, Slots, regular_hours, session_ids, slots, with_market
from producers.bars import check
from producers.live import LOOP_SOURCE
from producers.replay import list_files, load

log = logging.getLogger(__name__)
MATERIALISE_CHUNK = 50_000  # windows built per step (bounds the float64 temporaries)
MAX_EXAMPLES = 5  # conflicting duplicates named in the log
FLUSH_BARS = 500_000  # bars read from Kafka between moves into arrays (bounds the Python objects: ~100 MB)


@dataclass(frozen=True)
class Series:
    """One ticker's bars in arrival order: minutes (n,) int64 epoch seconds, ohlcv (n, 5) float64."""

    minutes: np.ndarray
    ohlcv: np.ndarray


BarSet = dict[str, Series]


@dataclass(frozen=True)
class KafkaRange:
    """What a rank read: partitions, [0, end) offsets per partition, bars and rejects."""

    topic: str
    end_offsets: dict[int, int]
    partitions: list[int]
    bars: int  # valid bar records read, repeats of a minute included
    rejected: dict[str, int]  # rejection reason -> count (already dead-lettered upstream)
    duplicates: int = 0  # later records equal to a minute's first one: left out (no-ops in serving)
    conflicts: int = 0  # later records with other values: left out (serving dead-letters them)


@dataclass(frozen=True)
class FirstValues:
    """What :func:`keep_first` (or :func:`read_files`) left out: counts of repeated minutes."""

    duplicates: int = 0  # identical repeats of a (ticker, minute)
    conflicts: int = 0  # repeats with other OHLCV (``conflicting_duplicate``)
    examples: list[str] = field(default_factory=list)  # a few "TICKER minute" of conflicts, for the log

    def __add__(self, other: FirstValues) -> FirstValues:
        return FirstValues(self.duplicates + other.duplicates, self.conflicts + other.conflicts,
                           (self.examples + other.examples)[:MAX_EXAMPLES])


def keep_first(bars: BarSet) -> tuple[BarSet, FirstValues]:
    """Each ticker's series (records in arrival order) -> only each minute's first record, in arrival order
    (:func:`minutecast.dedupe.first_wins`, serving's rule), and what was left out."""
    out: BarSet = {}
    total = FirstValues()
    for t, s in bars.items():
        fw = first_wins(s.minutes, s.ohlcv)
        if fw.keep.size == s.minutes.size:
            out[t] = s
            continue
        out[t] = Series(s.minutes[fw.keep], s.ohlcv[fw.keep])
        total += FirstValues(int(fw.duplicates.size), int(fw.conflicts.size),
                             [f"{t} {int(s.minutes[i])}" for i in fw.conflicts[:MAX_EXAMPLES]])
    return out, total


def shard(items: Sequence[int], rank: int, size: int) -> list[int]:
    """The share of ``items`` (sorted) that rank ``rank`` of ``size`` reads."""
    return sorted(items)[rank::size]


def read_topic(ks: KafkaSettings, topic: str, end_offsets: dict[int, int], *, rank: int = 0, size: int = 1,
               timeout_s: float = 300.0, allowed: frozenset[str] | None = None) -> tuple[BarSet, KafkaRange]:
    """Bars of this rank's partitions from offset 0 (or the earliest retained) up to ``end_offsets``.

    Records are decoded as the Faust worker decodes them (:func:`minutecast.schemas.parse_bar_record`,
    ``allowed`` = the ticker allowlist, :func:`minutecast.universe.allowlist`); a bad one is skipped and
    counted under its reason in ``KafkaRange.rejected``, so no record can stop a training run.
    """
    mine = [p for p in shard(list(end_offsets), rank, size) if end_offsets[p] > 0]
    cols: dict[str, tuple[list[int], list[tuple[float, float, float, float, float]]]] = {}
    done: dict[str, list[Series]] = {}  # each ticker's bars read so far, as arrays (~48 bytes a bar)
    rejected: dict[str, int] = {}
    n_bars = 0
    looped = 0
    if mine:
        consumer = make_consumer(ks, group=f"minutecast-train-{rank}", **{"fetch.max.bytes": 52_428_800})
        try:
            todo = {}
            for p in mine:
                low, _ = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                if low < end_offsets[p]:  # else retention already deleted everything up to the snapshot
                    todo[p] = end_offsets[p]
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
            deadline = time.monotonic() + timeout_s
            while todo:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"reading {topic} partitions {sorted(todo)} took over {timeout_s:.0f} s")
                for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise ServiceUnavailable(f"Kafka error reading {topic}: {err}")
                    p, off = int(msg.partition() or 0), int(msg.offset() or 0)
                    if p not in todo or off >= todo[p]:
                        continue  # past the snapshot: the next run takes it
                    if off == todo[p] - 1:
                        del todo[p]
                    try:
                        bar = parse_bar_record(msg.key(), msg.value(), math.inf, allowed)
                    except Rejected as exc:
                        rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
                        continue
                    except Exception:  # noqa: BLE001 - decoders only reject (fuzzed); a bug must not stop training
                        rejected["unparseable"] = rejected.get("unparseable", 0) + 1
                        continue
                    if bar.source == LOOP_SOURCE:
                        looped += 1  # a looped copy of a replayed session: not new history
                        continue
                    m, x = cols.setdefault(bar.ticker, ([], []))
                    m.append(bar.minute)
                    x.append((bar.open, bar.high, bar.low, bar.close, bar.volume))
                    n_bars += 1
                    if n_bars % FLUSH_BARS == 0:
                        _flush(cols, done)
                # A partition whose last offsets were deleted by retention/compaction: stop at its end.
                for p in list(todo):
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                    pos = consumer.position([TopicPartition(topic, p)])[0].offset or -1
                    if high >= 0 and pos >= min(high, todo[p]):
                        del todo[p]
        finally:
            consumer.close()
    _flush(cols, done)
    bars, firsts = keep_first({t: Series(np.concatenate([p.minutes for p in parts]),
                                         np.concatenate([p.ohlcv for p in parts]))
                               for t, parts in done.items()})  # a ticker lives in one partition: offset order
    if firsts.conflicts:
        log.warning("left out %d conflicting duplicates in %s (a minute keeps its first value, as in serving; "
                    "e.g. %s)", firsts.conflicts, topic, ", ".join(firsts.examples))
    if looped:
        log.info("left out %d bars of looped replay copies (source %s) in %s", looped, LOOP_SOURCE, topic)
    if rejected:
        log.warning("skipped %d invalid bars in %s (dead-lettered upstream): %s", sum(rejected.values()), topic,
                    rejected)
    return bars, KafkaRange(topic, dict(end_offsets), mine, n_bars, rejected, firsts.duplicates, firsts.conflicts)


def _flush(cols: dict[str, tuple[list[int], list[tuple[float, float, float, float, float]]]],
           done: dict[str, list[Series]]) -> None:
    """Move the bars collected as Python objects (~200 bytes a bar) into arrays, in arrival order."""
    for t, (m, x) in cols.items():
        if m:
            done.setdefault(t, []).append(Series(np.asarray(m, np.int64), np.asarray(x, np.float64).reshape(-1, 5)))
            m.clear()
            x.clear()


def bar_files(root: Path | str) -> list[Path]:
    """Recorded bar files under ``root`` (the replay producer's layouts), sorted; or one file."""
    return list_files(Path(root))


def load_bars(path: Path | str, tickers: Iterable[str] | None = None) -> BarSet:
    """Recorded bars (file or directory; CSV, ``.gz`` or Parquet) -> per-ticker series of valid bars."""
    return _load_checked(path, tickers)[0]


def read_files(files: Sequence[Path | str], tickers: Iterable[str] | None = None) -> tuple[BarSet, FirstValues]:
    """Recorded files, in order, as one history: a ticker found in several files gets one series (the
    files' rows in the order the replay producer sends them), a minute's first value wins across files
    as within one (:func:`keep_first`). Returns the bars and the repeats left out."""
    wanted = None if tickers is None else list(tickers)
    parts: dict[str, list[Series]] = {}
    total = FirstValues()
    for f in files:
        bars, firsts = _load_checked(f, wanted)
        total += firsts
        for t, s in bars.items():
            parts.setdefault(t, []).append(s)
    merged = {t: Series(np.concatenate([s.minutes for s in p]), np.concatenate([s.ohlcv for s in p]))
              for t, p in sorted(parts.items())}
    out, across = keep_first(merged)
    total += across
    if total.conflicts:
        log.warning("left out %d conflicting duplicates in %d file(s) (a minute keeps its first value, as in "
                    "serving; e.g. %s)", total.conflicts, len(files), ", ".join(total.examples))
    return out, total


def _load_checked(path: Path | str, tickers: Iterable[str] | None) -> tuple[BarSet, FirstValues]:
    """One file or directory through the replay producer's checks (which already keep a minute's first row)."""
    if not Path(path).exists():
        raise ConfigError(f"--bars {path}: no such file or directory")
    checked = check(load(Path(path), tickers), "files", now=math.inf)
    if checked.rejected or checked.nan_rows:
        log.info("%s: dropped %d invalid and %d empty rows", path, len(checked.rejected), checked.nan_rows)
    conflicts = [r for r in checked.rejected if r.error.reason == "conflicting_duplicate"]
    frame = checked.valid
    out: BarSet = {}
    for ticker, g in frame.groupby("ticker", sort=True):
        out[str(ticker)] = Series(g["minute"].to_numpy(np.int64),
                                  g[["open", "high", "low", "close", "volume"]].to_numpy(np.float64))
    out, rest = keep_first(out)  # a no-op after check(): the same rule, in one place for every reader
    examples = [r.error.detail for r in conflicts[:MAX_EXAMPLES]]
    return out, FirstValues(checked.duplicates, len(conflicts), examples) + rest


@dataclass(frozen=True)
class Samples:
    """Materialised samples: window ``windows[i]`` of ``tickers[i]`` ending at ``ends[i]``."""

    tickers: np.ndarray  # (N,) str
    ends: np.ndarray  # (N,) int64 epoch seconds of the window's last minute t
    windows: np.ndarray  # (N, WINDOW, N_COLUMNS) float64 raw windows (market context included)
    targets: np.ndarray  # (N,) float64 close at t + HORIZON

    def __len__(self) -> int:
        return int(self.ends.shape[0])

    def take(self, idx: np.ndarray) -> Samples:
        return Samples(self.tickers[idx], self.ends[idx], self.windows[idx], self.targets[idx])

    @property
    def days(self) -> np.ndarray:
        return session_ids(self.ends) if len(self) else np.empty(0, np.int64)

    @property
    def last_close(self) -> np.ndarray:
        return self.windows[:, -1, C]

    @staticmethod
    def concat(parts: Sequence[Samples]) -> Samples:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Samples(np.empty(0, "<U8"), np.empty(0, np.int64), np.empty((0, WINDOW, N_COLUMNS)), np.empty(0))
        return Samples(np.concatenate([p.tickers for p in parts]), np.concatenate([p.ends for p in parts]),
                       np.concatenate([p.windows for p in parts]), np.concatenate([p.targets for p in parts]))


@dataclass(frozen=True)
class Catalog:
    """Every sample as indexes (no windows yet): ``bars[i]`` is the bar index in ``series[tickers[i]]``."""

    series: dict[str, Slots]
    market: Slots | None
    tickers: np.ndarray  # (N,) str
    bars: np.ndarray  # (N,) int64
    ends: np.ndarray  # (N,) int64 as-of minute (epoch s)
    targets: np.ndarray  # (N,) float64

    def __len__(self) -> int:
        return int(self.ends.shape[0])

    @property
    def days(self) -> np.ndarray:
        return session_ids(self.ends) if len(self) else np.empty(0, np.int64)

    def take(self, idx: np.ndarray) -> Catalog:
        return Catalog(self.series, self.market, self.tickers[idx], self.bars[idx], self.ends[idx], self.targets[idx])

    def samples(self) -> Samples:
        """Materialise the raw windows (in chunks of :data:`MATERIALISE_CHUNK`), in catalogue order."""
        windows = np.empty((len(self), WINDOW, N_COLUMNS))
        for t in np.unique(self.tickers):
            idx = np.flatnonzero(self.tickers == t)
            for lo in range(0, idx.size, MATERIALISE_CHUNK):
                part = idx[lo:lo + MATERIALISE_CHUNK]
                windows[part] = with_market(self.series[str(t)].windows(self.bars[part]), self.market)
        return Samples(self.tickers.copy(), self.ends.copy(), windows, self.targets.copy())

    def chunks(self, size: int) -> Iterator[Samples]:
        """The samples in catalogue order, ``size`` windows at a time (each row built exactly as by
        :meth:`samples`: the same windows, bit for bit, without holding them all)."""
        for lo in range(0, len(self), max(1, size)):
            yield self.take(np.arange(lo, min(lo + size, len(self)))).samples()

    def ticker_chunks(self, size: int) -> Iterator[Samples]:
        """The samples, whole tickers at a time (several per chunk up to about ``size`` windows), in order."""
        picked: list[np.ndarray] = []
        n = 0
        for lo, hi in self.ranges().values():
            if picked and n + hi - lo > size:
                yield self.take(np.concatenate(picked)).samples()
                picked, n = [], 0
            picked.append(np.arange(lo, hi))
            n += hi - lo
        if picked:
            yield self.take(np.concatenate(picked)).samples()

    def ranges(self) -> dict[str, tuple[int, int]]:
        """Each ticker's [start, stop) in the catalogue (a ticker's samples are contiguous, in time order)."""
        names, first, counts = np.unique(self.tickers, return_index=True, return_counts=True)
        return {str(t): (int(f), int(f + n)) for t, f, n in zip(names, first, counts, strict=True)}


def catalog(bars: BarSet, market_ticker: str | None, market: Series | None = None) -> Catalog:
    """Every ready window with a target, per ticker (sorted tickers, time order). ``market``: the market
    ticker's series when it is not in ``bars`` (another Horovod rank read it)."""
    series = {t: slots(s.minutes, s.ohlcv) for t, s in sorted(bars.items())}
    m = series.get(market_ticker) if market_ticker else None
    if m is None and market is not None:
        m = slots(market.minutes, market.ohlcv)
    parts: list[tuple[np.ndarray, ...]] = []
    for t, s in series.items():
        ready = s.ready()
        tg = s.targets(ready)
        keep = np.isfinite(tg)
        parts.append((np.full(int(keep.sum()), t, dtype="<U12"), ready[keep], s.minutes[ready[keep]], tg[keep]))
    if not parts:
        return Catalog(series, m, np.empty(0, "<U12"), np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    return Catalog(series, m, *(np.concatenate([p[k] for p in parts]) for k in range(4)))


def build_samples(bars: BarSet, market_ticker: str | None = "SPY") -> Samples:
    """Every ready window with a target, materialised (small inputs: tests, evaluation of a few days)."""
    return catalog(bars, market_ticker).samples()


def regular(c: Catalog) -> Catalog:
    """The samples whose as-of minute is in regular hours (what reports and the gate score)."""
    return c.take(np.flatnonzero(regular_hours(c.ends)))


def split_days(days: Iterable[int], val_frac: float, test_frac: float) -> tuple[int, int]:
    """Cut points by date: train = day < val_start, val = val_start <= day < test_start, test = the rest.
    ``val_frac`` / ``test_frac``: shares of the dates (TrainingSettings, the same in training and evaluation).

    Needs at least 3 distinct dates (one each); rounding gives val and test at least one date.
    """
    uniq = np.unique(np.fromiter(days, dtype=np.int64))
    if uniq.size < 3:
        raise MinutecastError(f"need bars from at least 3 trading dates for a train/val/test split, got {uniq.size}")
    n_test = max(1, round(uniq.size * test_frac))
    n_val = max(1, round(uniq.size * val_frac))
    n_val = min(n_val, uniq.size - n_test - 1)
    return int(uniq[uniq.size - n_test - n_val]), int(uniq[uniq.size - n_test])


def split(c: Catalog, cuts: tuple[int, int]) -> dict[str, Catalog]:
    days = c.days
    val_start, test_start = cuts
    return {"train": c.take(np.flatnonzero(days < val_start)),
            "val": c.take(np.flatnonzero((days >= val_start) & (days < test_start))),
            "test": c.take(np.flatnonzero(days >= test_start))}


def subsample(c: Catalog, max_samples: int | None, seed: int = 0) -> Catalog:
    """At most ``max_samples`` samples, drawn uniformly without replacement, kept in catalogue order."""
    if max_samples is None or len(c) <= max_samples:
        return c
    idx = np.sort(np.random.default_rng(seed).choice(len(c), size=max_samples, replace=False))
    return c.take(idx)
