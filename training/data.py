"""Training data: bars from Kafka (or recorded files) -> samples -> time split -> scaler.

* :func:`read_topic` reads the bar topic from the beginning up to a recorded snapshot of end offsets;
  under Horovod rank ``r`` of ``n`` reads only ``partitions[r::n]`` (sharding at the source: a ticker
  lives in one partition, so each rank builds whole-ticker series).
* :func:`load_files` reads recorded bars (yfinance CSV layout, plain or ``.gz``) into the same arrays.
* :func:`build_samples` makes one sample per ready window with :func:`minutecast.window.ready_windows`
  (target = close exactly ``HORIZON`` minutes later; windows without one are dropped).
* :func:`split_days` / :func:`split` divide by New York trading date: the last ~15% of dates are the
  test period, the ~15% before them validation, the rest training.
* The scaler is fitted on training samples only. Under Horovod each rank computes sufficient
  statistics (:func:`scaler_stats`: counts, sums, sums of squares) that train.py allreduces (sum) and
  turns into one :class:`Scaler` with :func:`scaler_from_stats` (the same numbers ``Scaler.fit`` would
  give on all ranks' samples together, up to float rounding).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minutecast.errors import ServiceUnavailable, ValidationError
from minutecast.features import Scaler
from minutecast.settings import KafkaSettings
from minutecast.window import WINDOW, ready_windows, session_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Series:
    """One ticker's bars in arrival order: minute epoch seconds, close, volume, all (n,)."""

    minutes: np.ndarray  # int64
    close: np.ndarray  # float64
    volume: np.ndarray  # float64


BarSet = dict[str, Series]


@dataclass(frozen=True)
class KafkaRange:
    """What a rank read: partitions, [0, end) offsets per partition, bars and rejects."""

    topic: str
    end_offsets: dict[int, int]
    partitions: list[int]
    bars: int
    rejected: dict[str, int]  # validation reason -> count (already dead-lettered upstream)


def shard(items: Sequence[int], rank: int, size: int) -> list[int]:
    """The share of ``items`` (sorted) that rank ``rank`` of ``size`` reads."""
    return sorted(items)[rank::size]


def read_topic(ks: KafkaSettings, topic: str, end_offsets: dict[int, int], *, rank: int = 0, size: int = 1,
               timeout_s: float = 300.0) -> tuple[BarSet, KafkaRange]:
    """Bars of this rank's partitions from offset 0 (or the earliest retained) up to ``end_offsets``."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    from minutecast.kafka import make_consumer
    from minutecast.schemas import parse_bar

    mine = [p for p in shard(list(end_offsets), rank, size) if end_offsets[p] > 0]
    cols: dict[str, tuple[list[int], list[float], list[float]]] = {}
    rejected: dict[str, int] = {}
    n_bars = 0
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
                        bar = parse_bar(msg.value() or b"", msg.key(), now=float("inf"))
                    except ValidationError as exc:
                        rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
                        continue
                    m, c, v = cols.setdefault(bar.ticker, ([], [], []))
                    m.append(bar.minute)
                    c.append(bar.close)
                    v.append(bar.volume)
                    n_bars += 1
                # A partition whose last offsets were deleted by retention/compaction: stop at its end.
                for p in list(todo):
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                    pos = consumer.position([TopicPartition(topic, p)])[0].offset or -1
                    if high >= 0 and pos >= min(high, todo[p]):
                        del todo[p]
        finally:
            consumer.close()
    bars = {t: Series(np.asarray(m, np.int64), np.asarray(c, np.float64), np.asarray(v, np.float64))
            for t, (m, c, v) in cols.items()}
    if rejected:
        log.warning("skipped %d invalid bars in %s (dead-lettered upstream): %s", sum(rejected.values()), topic,
                    rejected)
    return bars, KafkaRange(topic, dict(end_offsets), mine, n_bars, rejected)


def bar_files(root: Path | str) -> list[Path]:
    """Recorded bar files under ``root`` (``<TICKER>.csv`` or ``<TICKER>.csv.gz``), sorted; or one file."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.name.endswith((".csv", ".csv.gz")))


def ticker_of(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".csv").upper()


def load_files(files: Iterable[Path], tickers: Iterable[str] | None = None) -> BarSet:
    """yfinance CSVs (``Datetime,Open,High,Low,Close,Adj Close,Volume``; plain or gzip) -> per-ticker arrays.

    Rows without a positive finite close or a finite non-negative volume are dropped (yfinance NaN rows).
    """
    import pandas as pd

    wanted = {t.upper() for t in tickers} if tickers else None
    out: BarSet = {}
    for path in files:
        ticker = ticker_of(path)
        if wanted is not None and ticker not in wanted:
            continue
        df = pd.read_csv(path, usecols=["Datetime", "Close", "Volume"])
        ts = pd.to_datetime(df["Datetime"], utc=True)
        minutes = (ts.astype("int64") // 10**9).to_numpy()  # int64 epoch seconds
        close = pd.to_numeric(df["Close"], errors="coerce").to_numpy(np.float64)
        volume = pd.to_numeric(df["Volume"], errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(close) & (close > 0) & np.isfinite(volume) & (volume >= 0) & (minutes % 60 == 0)
        if (~ok).any():
            log.info("%s: dropped %d unusable rows", path.name, int((~ok).sum()))
        out[ticker] = Series(minutes[ok].astype(np.int64), close[ok], volume[ok])
    return out


@dataclass(frozen=True)
class Samples:
    """Samples of many tickers: window ``windows[i]`` of ``tickers[i]`` ending at ``ends[i]``."""

    tickers: np.ndarray  # (N,) str
    ends: np.ndarray  # (N,) int64 epoch seconds of the window's last minute t
    windows: np.ndarray  # (N, WINDOW, 2) float64 raw [close, volume]
    targets: np.ndarray  # (N,) float64 close at t + HORIZON

    def __len__(self) -> int:
        return int(self.ends.shape[0])

    def take(self, idx: np.ndarray) -> Samples:
        return Samples(self.tickers[idx], self.ends[idx], self.windows[idx], self.targets[idx])

    @property
    def days(self) -> np.ndarray:
        """New York trading date number of each sample."""
        return session_ids(self.ends) if len(self) else np.empty(0, np.int64)

    @staticmethod
    def concat(parts: Sequence[Samples]) -> Samples:
        parts = [p for p in parts if len(p)]
        if not parts:
            return empty_samples()
        return Samples(np.concatenate([p.tickers for p in parts]), np.concatenate([p.ends for p in parts]),
                       np.concatenate([p.windows for p in parts]), np.concatenate([p.targets for p in parts]))


def empty_samples() -> Samples:
    return Samples(np.empty(0, dtype="<U8"), np.empty(0, np.int64), np.empty((0, WINDOW, 2)), np.empty(0))


def build_samples(bars: BarSet) -> Samples:
    """Every ready window with a target, per ticker (tickers in sorted order, windows in time order)."""
    parts = []
    for ticker in sorted(bars):
        s = bars[ticker]
        w = ready_windows(s.minutes, s.close, s.volume)
        keep = np.isfinite(w.targets)
        if keep.any():
            parts.append(Samples(np.full(int(keep.sum()), ticker), w.ends[keep], w.values[keep], w.targets[keep]))
    return Samples.concat(parts)


def split_days(days: Iterable[int], val_frac: float = 0.15, test_frac: float = 0.15) -> tuple[int, int]:
    """Cut points by date: train = day < val_start, val = val_start <= day < test_start, test = the rest.

    Needs at least 3 distinct dates (one each); rounding gives val and test at least one date.
    """
    uniq = np.unique(np.fromiter(days, dtype=np.int64))
    if uniq.size < 3:
        raise ValueError(f"need bars from at least 3 trading dates for a train/val/test split, got {uniq.size}")
    n_test = max(1, round(uniq.size * test_frac))
    n_val = max(1, round(uniq.size * val_frac))
    n_val = min(n_val, uniq.size - n_test - 1)
    return int(uniq[uniq.size - n_test - n_val]), int(uniq[uniq.size - n_test])


def split(samples: Samples, cuts: tuple[int, int]) -> dict[str, Samples]:
    days = samples.days
    val_start, test_start = cuts
    return {
        "train": samples.take(np.flatnonzero(days < val_start)),
        "val": samples.take(np.flatnonzero((days >= val_start) & (days < test_start))),
        "test": samples.take(np.flatnonzero(days >= test_start)),
    }


def scaler_stats(samples: Samples) -> np.ndarray:
    """Sufficient statistics of :meth:`Scaler.fit` (sums, so ranks can allreduce them): float64 (9,).

    [n_window_values, sum rel, sum rel^2, sum logv, sum logv^2, n_targets, sum tgt, sum tgt^2, 0]
    """
    if not len(samples):
        return np.zeros(9)
    w = samples.windows
    rel = w[:, :, 0] / w[:, -1:, 0] - 1.0  # as in Scaler.fit
    logv = np.log1p(w[:, :, 1])
    tgt = samples.targets / w[:, -1, 0] - 1.0
    return np.array([rel.size, rel.sum(), np.square(rel).sum(), logv.sum(), np.square(logv).sum(),
                     tgt.size, tgt.sum(), np.square(tgt).sum(), 0.0])


def scaler_from_stats(stats: np.ndarray) -> Scaler:
    """Summed :func:`scaler_stats` -> the Scaler (population std, floors as in ``Scaler.fit``)."""
    n, s1, s2, lv1, lv2, nt, t1, t2, _ = (float(x) for x in stats)
    if n <= 0 or nt <= 0:
        raise ValueError("no training samples to fit the scaler on")

    def std(total: float, sq: float, count: float) -> float:
        mean = total / count
        return float(np.sqrt(max(sq / count - mean * mean, 0.0)))

    return Scaler(
        ret_scale=max(std(s1, s2, n), 1e-6),
        logvol_mean=lv1 / n,
        logvol_std=max(std(lv1, lv2, n), 1e-6),
        target_scale=max(std(t1, t2, nt), 1e-6),
    )


def subsample(samples: Samples, max_samples: int | None, seed: int = 0) -> Samples:
    """At most ``max_samples`` samples, drawn uniformly without replacement, kept in time order."""
    if max_samples is None or len(samples) <= max_samples:
        return samples
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), size=max_samples, replace=False))
    return samples.take(idx)
