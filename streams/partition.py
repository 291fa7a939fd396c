"""The inference job's executor side: one ``mapInPandas`` partition of window-ready events -> forecasts.
Importable without pyspark (the Spark glue is ``streams/infer.py``; tests call :func:`infer_partition`
directly against the real Redis).

Per partition, with exactly two Redis round trips (pipelines of EVALSHA/HGETALL; scripts are loaded once
per worker and reloaded only after a ``NOSCRIPT``):

1. keep the newest event per ticker (older ones in the same batch are *superseded* by design, counted);
2. **read** (one pipelined round trip): every ticker's stored rows plus the market ticker's
   (``MINUTECAST_MARKET_TICKER``), and per ticker its online-calibration state and the history entries
   whose outcome it has not applied yet (the forecast store's read, :mod:`minutecast.forecast_store`);
3. build the windows with the shared window policy, market context included;
4. catch each ticker's :class:`~minutecast.intervals.OnlineScale` up with the outcomes it can see
   (:func:`streams.serving.catch_up`), call the model **once** on the whole partition for raw log quantiles
   (no promoted model: the calibrated window-vol baseline, labelled ``persistence`` / ``baseline``; a
   non-finite, crossing or absurd model row falls back to the baseline too, counted), and serve
   ``state.apply(raw)``;
5. **write** (one pipelined round trip, the forecast store's serving write): history one forecast per
   as-of minute, the first one unless a *correction* replaces it, the latest forward only, the calibration
   state forward only (in ``through``), bounded history; the Kafka rows are the values Redis kept (the store
   gives each one's JSON back byte for byte), so a replayed batch republishes byte-identical forecasts and
   applies no outcome twice.

Corrections: a late bar that changes an announced window makes Faust re-announce the minute with the new
checksum (and a later ``ready_at``). Each forecast carries the checksum of the window it was made from
(``window_checksum``, computed here from what Redis holds); the stored forecast of an as-of is replaced
only by one from a newer announcement (``window_ready_at``) whose checksum differs. A replayed batch
carries the same ``ready_at`` and an older, re-sent event an earlier one: both get the stored forecast
back, so a correction is never undone and a replay stays byte-identical.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis as redislib

from minutecast.forecast_store import READ_LUA, SCRIPTS, WRITE_LUA, WRITTEN, ForecastStore
from minutecast.intervals import OnlineScale
from minutecast.keys import Keys
from minutecast.redis import connect, text
from minutecast.registry import PERSISTENCE, Registry
from minutecast.schemas import Forecast
from minutecast.settings import RedisSettings
from minutecast.window import C, checksum
from streams.serving import (
    catch_up,
    closes_by_minute,
    dead_letter_row,
    make_forecast,
    model_or_baseline,
    price_quantiles,
    reject_reason,
)
from streams.window_store import decode_values
from streams.windows import windows_for

log = logging.getLogger("minutecast.infer")

NUMERIC = ("v", "minute", "published_at", "ready_at")  # event fields read as numbers (NaN: absent or bad)

# Counters infer_partition reports (names of the stats accumulator's keys), per window-ready event.
# "forecasts": new as-of minutes; "corrections": stored forecasts replaced by one from a re-announced
# window; "replayed": the stored forecast republished (a replay, a re-sent older event, or a re-announcement
# whose window the stored forecast was already made from).
COUNTS = ("events", "superseded_batch", "superseded_state", "dead_letter", "forecasts", "corrections",
          "replayed", "checksum_mismatch", "model_error", "non_finite", "crossing", "out_of_range")
# Other counters: calibration outcomes applied and Redis round trips made (2 per partition unless a
# script had to be reloaded).
SERVING_COUNTS = ("outcomes", "redis_roundtrips")
# Milliseconds summed over the batch's partitions: Redis read, window building (and calibration catch-up),
# model (re)load when the promoted version changed (incl. the first TensorFlow import of a worker), the
# model call (and the intervals), Redis writes.
PHASES = ("redis_read_ms", "build_ms", "model_load_ms", "model_ms", "write_ms")
# Spark's durationMs parts of a micro-batch before its job runs (constructNextBatch, runBatch up to addBatch).
PRE_BATCH = ("latestOffset", "getOffset", "setOffsetRange", "getEndOffset", "walCommit", "getBatch", "queryPlanning")


@dataclass(frozen=True)
class JobConf:
    """What executors need, shipped inside each task (executors do not read the driver's env)."""

    namespace: str
    models_dir: str
    history_len: int
    redis: RedisSettings = field(compare=False)
    forecasts_topic: str
    deadletter_topic: str
    ready_topic: str
    market_ticker: str  # settings.market_ticker: whose rows are every window's market context
    forecast_ttl_s: int = 5 * 24 * 3600  # settings.forecast_ttl_s: a vanished ticker's forecast keys expire

    @property
    def cache_key(self) -> tuple[str, str]:
        return (self.namespace, self.models_dir)


class _Context:
    """Redis client, Lua scripts and the cached model of one executor Python process."""

    RETRY_FAILED_S = 60.0  # a model version that failed to load is retried after this long

    def __init__(self, conf: JobConf) -> None:
        self.conf = conf
        self.keys = Keys(conf.namespace)
        self.store = ForecastStore(self.keys, conf.history_len, conf.forecast_ttl_s)
        self.redis = connect(conf.redis)
        self.scripts: dict[str, str] = {}  # Lua source -> sha
        self._load_scripts()
        self.model: Any = None  # minutecast.serving_model.ServingModel once one is promoted and loaded
        self.failed: tuple[str, float] | None = None  # (version, monotonic time) of the last failed load

    def _load_scripts(self) -> None:
        self.scripts = {src: self.redis.script_load(src) for src in SCRIPTS}

    def execute(self, build: Callable[[Any], None]) -> tuple[list[Any], int]:
        """Run the commands ``build(pipe)`` queues as one pipelined round trip; returns (results, round
        trips). EVALSHA without redis-py's per-execute SCRIPT EXISTS; after a NOSCRIPT (Redis restarted)
        the scripts are loaded again and the pipeline re-run (every command here is idempotent)."""
        trips = 0
        for _ in range(3):
            pipe = self.redis.pipeline(transaction=False)
            build(pipe)
            results = pipe.execute(raise_on_error=False)
            trips += 1
            if any(isinstance(r, redislib.exceptions.NoScriptError) for r in results):
                self._load_scripts()
                trips += 1
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return results, trips
        raise redislib.exceptions.NoScriptError("Lua scripts vanished again right after loading")

    def serving_model(self) -> Any:
        """The promoted model (reloaded when CURRENT changes), or None for persistence.

        One cheap read of the registry's CURRENT file per call; a version that fails to load keeps the
        previous model serving (and is logged), retried after :attr:`RETRY_FAILED_S`.
        """

        registry = Registry(Path(self.conf.models_dir))
        version = registry.current_version()
        if version is None:
            self.model = None
            return None
        if self.model is not None and self.model.version == version:
            return self.model
        if self.failed and self.failed[0] == version and time.monotonic() - self.failed[1] < self.RETRY_FAILED_S:
            return self.model
        try:
            t0 = time.perf_counter()
            model = registry.load(version)
            log.warning("loaded model %s (%s) in %.1f s", version, model.kind, time.perf_counter() - t0)
            self.model, self.failed = model, None
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
            log.error("model %s failed to load, keeping %s: %s", version,
                      self.model.version if self.model is not None else PERSISTENCE, exc)
            self.failed = (version, time.monotonic())
        return self.model

    def baseline_scale(self) -> tuple[float, float]:
        """(c80, c90) of the calibrated window-vol baseline (one small file read; (1, 1) before training)."""

        return Registry(Path(self.conf.models_dir)).baseline_scale()


_CONTEXTS: dict[tuple[str, str], _Context] = {}


def _context(conf: JobConf) -> _Context:
    ctx = _CONTEXTS.get(conf.cache_key)
    if ctx is None:
        ctx = _CONTEXTS[conf.cache_key] = _Context(conf)
    return ctx


def read_partition(ctx: _Context, tickers: list[str], minutes: list[int]) -> tuple[
        dict[str, np.ndarray], dict[str, OnlineScale], dict[str, dict[int, Forecast]], int]:
    """One pipelined round trip: stored rows of ``tickers`` and the market ticker, each ticker's
    calibration state and its history entries due at its as-of minute (the forecast store's read).
    Returns (rows by ticker incl. the market's, as :func:`~streams.window_store.decode_value` arrays,
    states, due history {as-of: Forecast} by ticker, round trips)."""
    market = ctx.conf.market_ticker
    window_tickers = list(dict.fromkeys([*tickers, market]))
    read_sha = ctx.scripts[READ_LUA]

    def build(pipe: Any) -> None:
        for t in window_tickers:
            pipe.get(ctx.keys.window(t))
        for t, m in zip(tickers, minutes, strict=True):
            ctx.store.queue_due(pipe, read_sha, t, m)

    results, trips = ctx.execute(build)
    # Each ticker's value is its packed rows, sorted by minute: decoded with np.frombuffer, no parse.
    rows = dict(zip(window_tickers, decode_values(results[:len(window_tickers)]), strict=True))
    states: dict[str, OnlineScale] = {}
    due: dict[str, dict[int, Forecast]] = {}
    for t, res in zip(tickers, results[len(window_tickers):], strict=True):
        states[t], due[t] = ctx.store.decode_due(t, res)
    return rows, states, due, trips


Row = tuple[str, str | None, str]  # an output row: (topic, key, value)


@dataclass
class _Tally:
    """What one partition reports: its counters (see :data:`COUNTS`) and its output rows."""

    counts: defaultdict[str, float]
    rows: list[Row] = field(default_factory=list)

    def dead_letter(self, conf: JobConf, row: Any, reason: str, detail: str) -> None:
        self.rows.append(dead_letter_row(conf.deadletter_topic, conf.ready_topic, row, reason, detail))
        self.counts["dead_letter"] += 1

    def phase(self, name: str, since: float, until: float) -> None:
        self.counts[name] += round((until - since) * 1000, 3)


@dataclass
class _Windows:
    """The events that have a window to serve, their raw windows and each window's checksum."""

    events: list[Any] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)  # (WINDOW, N_COLUMNS) each, market context included
    sums: list[str] = field(default_factory=list)  # checksum of the window each forecast is made from


def infer_partition(conf: JobConf, stats: Any, latencies: Any,
                    batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: every window-ready event of one partition -> forecast rows (see module doc).

    ``stats``/``latencies`` are accumulators (anything with ``add``): counters of :data:`COUNTS`,
    :data:`SERVING_COUNTS` and :data:`PHASES`, ``model:<version>`` counts, and ``forecast_at -
    published_at`` of new forecasts (s).
    """
    events = _events(batches)
    if events is None:
        return
    tally = _Tally(defaultdict(float, events=len(events)))
    ctx = _context(conf)
    newest = _newest_valid(conf, events, tally)
    tickers, minutes = [str(r.ticker) for r in newest], [int(r.minute) for r in newest]
    t0 = time.perf_counter()
    stored, states, due, trips = read_partition(ctx, tickers, minutes) if newest else ({}, {}, {}, 0)
    tally.counts["redis_roundtrips"] += trips
    t1 = time.perf_counter()
    found = _build_windows(conf, newest, stored, states, due, tally)
    t2 = time.perf_counter()
    if found.events:
        model = ctx.serving_model()
        t_model = time.perf_counter()
        forecasts = _run_model(ctx, model, found, states, tally)
        t3 = time.perf_counter()
        latencies.add(_write(ctx, conf, forecasts, states, tally))
        t4 = time.perf_counter()
        tally.phase("model_load_ms", t2, t_model)
        tally.phase("model_ms", t_model, t3)
        tally.phase("write_ms", t3, t4)
    tally.phase("redis_read_ms", t0, t1)
    tally.phase("build_ms", t1, t2)
    stats.add(dict(tally.counts))
    if tally.rows:
        yield pd.DataFrame(tally.rows, columns=["topic", "key", "value"])


def _events(batches: Iterator[pd.DataFrame]) -> pd.DataFrame | None:
    """The partition's events as one frame (None when it has none), numeric fields as float64."""
    frames = [b for b in batches if len(b)]
    if not frames:
        return None
    events = pd.concat(frames, ignore_index=True)
    # Spark 4.2 hands null LONG/INT cells over as pandas' NA (nullable dtypes), whose truth value raises:
    # the numeric fields become float64 with NaN for "absent", which every check below expects.
    for col in NUMERIC:
        events[col] = pd.to_numeric(events[col], errors="coerce").astype("float64")
    return events


def _newest_valid(conf: JobConf, events: pd.DataFrame, tally: _Tally) -> list[Any]:
    """Events that can be served, the newest per ticker; the others dead-lettered or counted superseded."""
    good_idx = []
    for i, row in enumerate(events.itertuples(index=False)):
        why = reject_reason(row)
        if why is None:
            good_idx.append(i)
        else:
            tally.dead_letter(conf, row, *why)
    good = events.iloc[good_idx]
    # Newest event per ticker (a re-announced minute: the later ready_at); the rest are superseded.
    good = good.sort_values(["minute", "ready_at", "offset"]).drop_duplicates("ticker", keep="last")
    tally.counts["superseded_batch"] += len(good_idx) - len(good)
    return list(good.itertuples(index=False))


def _build_windows(conf: JobConf, events: list[Any], stored: dict[str, np.ndarray], states: dict[str, OnlineScale],
                   due: dict[str, dict[int, Forecast]], tally: _Tally) -> _Windows:
    """Each event's window from the stored rows (market context included), and its ticker's calibration
    caught up with the outcomes it can see; an event without a window is superseded or dead-lettered."""
    tickers, minutes = [str(r.ticker) for r in events], [int(r.minute) for r in events]
    built = windows_for([stored[t] for t in tickers], minutes, stored.get(conf.market_ticker))
    found = _Windows()
    for row, t, minute, w in zip(events, tickers, minutes, built, strict=True):
        series = stored[t]
        if w is None:
            if len(series) and series[-1, 0] > minute:
                tally.counts["superseded_state"] += 1  # the state moved on; a newer event follows
            else:
                tally.dead_letter(conf, row, "window_missing", f"no ready window at {minute} in Redis")
            continue
        found.sums.append(checksum(w))
        if isinstance(row.checksum, str) and found.sums[-1] != row.checksum:
            tally.counts["checksum_mismatch"] += 1  # a late bar changed the window since it was announced
        tally.counts["outcomes"] += catch_up(states[t], due[t], closes_by_minute(series), minute)
        found.events.append(row)
        found.values.append(w)
    return found


def _run_model(ctx: _Context, model: Any, found: _Windows, states: dict[str, OnlineScale],
               tally: _Tally) -> list[Forecast]:
    """One model call on every window (the baseline where there is no model or its row is bad), each
    ticker's online calibration applied, and the forecasts made of them."""
    windows = np.stack(found.values)  # (N, WINDOW, N_COLUMNS) raw windows incl. market context
    last_close = windows[:, -1, C]
    raw, use_model = model_or_baseline(model, windows, ctx.baseline_scale, tally.counts)
    states_ = [states[str(row.ticker)] for row in found.events]
    served = np.stack([st.apply(q) for st, q in zip(states_, raw, strict=True)])  # per-ticker calibration
    prices = price_quantiles(last_close, served)
    forecast_at = time.time()
    return [
        make_forecast(ticker=str(row.ticker), as_of=int(row.minute), last_close=float(c), prices=q,
                      state=st, model_version=model.version if by_model else PERSISTENCE,
                      model_kind=model.kind if by_model else PERSISTENCE,
                      interval_kind="lstm" if by_model else "baseline",
                      published_at=None if row.published_at != row.published_at else float(row.published_at),
                      window_ready_at=float(row.ready_at), forecast_at=forecast_at, window_checksum=cs)
        for row, c, q, st, by_model, cs in zip(found.events, last_close, prices, states_, use_model, found.sums,
                                               strict=True)]


def _write(ctx: _Context, conf: JobConf, forecasts: list[Forecast], states: dict[str, OnlineScale],
           tally: _Tally) -> list[float]:
    """One pipelined round trip of the forecast store's serving write; the Kafka rows are the JSON Redis
    kept. Returns ``forecast_at - published_at`` (s) of the new forecasts."""
    write_sha = ctx.scripts[WRITE_LUA]
    encoded: list[Any] = []

    def build(pipe: Any) -> None:
        encoded[:] = [ctx.store.queue_write(pipe, write_sha, f, states[f.ticker]) for f in forecasts]

    results, trips = ctx.execute(build)
    tally.counts["redis_roundtrips"] += trips
    lat: list[float] = []
    for f, e, res in zip(forecasts, encoded, results, strict=True):
        new, js = ctx.store.written(f, e, res)
        tally.rows.append((conf.forecasts_topic, f.ticker, text(js)))
        tally.counts[WRITTEN[new]] += 1
        if new == 1 and f.published_at is not None:  # a correction's delay is the late bar's, not ours
            lat.append(f.forecast_at - f.published_at)
    for f in forecasts:
        tally.counts[f"model:{f.model_version}"] += 1
    return lat


def warm_partition(conf: JobConf, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body of the start-up job: open Redis and load the promoted model in this worker."""
    for _ in batches:
        pass
    ctx = _context(conf)
    model = ctx.serving_model()
    yield pd.DataFrame({"version": [model.version if model is not None else PERSISTENCE]})
