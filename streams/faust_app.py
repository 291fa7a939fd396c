"""The Faust app: bar topic -> per-ticker windows in Redis -> window-ready events.

Started by ``minutecast stream`` (see :mod:`streams.worker_cli`); this module imports faust only inside
:func:`create_app` so the batch logic (:class:`BatchProcessor`) is usable and testable without it.

Per batch (``stream.take_events(take_max, within=take_within_s)``):

1. decode + validate every message in one tight loop (:func:`minutecast.schemas.parse_bar`); invalid
   ones become :class:`~minutecast.schemas.DeadLetter` records with their reason;
2. one EVALSHA writes the whole batch (:class:`streams.window_store.WindowStore`: each ticker's newest
   ``window.RETAIN`` bars), returning each ticker's newest rows; conflicting duplicates become dead
   letters (``conflicting_duplicate``), late bars are counted;
3. for each ticker of the batch, the newest ready window under the window policy v2
   (:mod:`minutecast.window`: slots, short gaps filled, longer ones collapsed and marked, so the window
   at a bar reaches back across the overnight gap) is found: the one at the ticker's newest bar as soon
   as the ticker has ``WINDOW`` slots (:meth:`streams.window_store.TickerResult.ready_window`). One whose
   (t, checksum) was not announced before is published as a :class:`~minutecast.schemas.WindowReady`
   (key = ticker) *after* the Redis write returned. The checksum covers the ticker's own columns only
   (market context is added by the reader), so an out-of-order bar that changes the window at an
   announced minute re-announces it with the new checksum. Redis runs with ``appendonly yes`` /
   ``appendfsync everysec``: a write is in the AOF on return and fsynced within a second;
   a Redis crash can lose at most that last second, which
   ``minutecast rebuild`` (or the start-up rebuild) restores from Kafka;
4. delivery of ready events and dead letters is awaited, the announced (t, checksum) is stored in the
   window meta, and only then does the body return, so Faust acks (and later commits) the batch's offsets.

At-least-once: a crash anywhere before the commit replays the batch, which the idempotent store turns
into a no-op (a ready event may be re-sent; consumers dedupe on (ticker, minute, checksum)).
Failures follow :mod:`streams.failures`: Redis/Kafka unavailable is retried with jittered exponential
back-off (the worker shows as stalled in metrics and ``ns:stats``); a record the store's script fails on
is isolated and dead-lettered (``store_error``); anything retrying cannot fix (Redis OOM/MISCONF, a record
too large for the producer) stops the worker with a CRITICAL log line and exit status 3 before the
batch is acked. The body never raises, because Faust's ``take`` acks a batch whose body raised; a stop
(SIGTERM) mid-batch lets the batch finish first (unless it is stalled: then the process exits without
committing). Dead letters are bounded (key and payload cut, :class:`~minutecast.schemas.DeadLetter`),
so they always fit the producer's request limit.

Test-only: ``MINUTECAST_TEST_DROP_BAR`` (with ``MINUTECAST_TEST_SWITCHES=1``) makes the worker lose one named
bar (:func:`drop_switch`); the fault tests use it to show that their checks catch a single lost bar.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis as redislib
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from minutecast.errors import ConfigError, Rejected
from minutecast.schemas import Bar, DeadLetter, WindowReady, parse_bar_record
from minutecast.settings import KafkaSettings, StreamSettings
from minutecast.topics import Topics
from minutecast.universe import allowlist
from streams import failures
from streams.window_store import TickerResult, WindowStore

log = logging.getLogger(__name__)


class Metrics:
    """Prometheus metrics of one worker, in their own registry (served on ``metrics_port``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bars_in = Counter("minutecast_stream_bars_in", "messages taken from the bar topic", registry=r)
        self.bars_written = Counter("minutecast_stream_bars_written", "valid bars applied to Redis", registry=r)
        self.windows_ready = Counter("minutecast_stream_windows_ready", "window-ready events published",
                                     registry=r)
        self.late = Counter("minutecast_stream_late_dropped", "bars older than the oldest of the retained bars",
                            registry=r)
        self.conflicts = Counter("minutecast_stream_conflicting_duplicates",
                                 "bars for a stored minute with different values (first kept)", registry=r)
        self.deadletters = Counter("minutecast_stream_deadletters", "messages sent to the dead-letter topic",
                                   ["reason"], registry=r)
        self.roundtrips = Counter("minutecast_stream_redis_roundtrips", "Redis round trips", registry=r)
        self.lag = Gauge("minutecast_stream_consumer_lag", "messages behind the high watermark",
                         ["partition"], registry=r)
        self.batch_seconds = Histogram("minutecast_stream_batch_seconds", "time to process one batch",
                                       registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.stalled = Gauge("minutecast_stream_stalled", "1 while a batch waits for Redis/Kafka to come back",
                             registry=r)
        self.stalled_seconds = Gauge("minutecast_stream_stalled_seconds", "how long the current stall has lasted",
                                     registry=r)
        self.retries = Counter("minutecast_stream_retries", "retries of a batch step while Redis/Kafka were "
                               "unavailable", ["what"], registry=r)
        self.batch_size = Histogram("minutecast_stream_batch_size", "messages per batch", registry=r,
                                    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000))


@dataclass
class Message:
    """The parts of a Kafka record the processor needs (Faust events and tests both map to it)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass
class Outcome:
    """What one batch produced: records to publish, then announcements to store."""

    ready: list[WindowReady] = field(default_factory=list)
    deadletters: list[DeadLetter] = field(default_factory=list)
    announced: dict[str, tuple[int, str]] = field(default_factory=dict)
    bars: int = 0
    late: int = 0


def decode(messages: Sequence[Message], now: float | None = None,
           allowed: frozenset[str] | None = None) -> tuple[list[Bar], list[int], list[DeadLetter]]:
    """Parse every message: (valid bars, index of each bar's message, dead letters). Never raises.
    ``allowed``: the ticker allowlist (None: any ticker)."""
    now = time.time() if now is None else now
    bars: list[Bar] = []
    origin: list[int] = []
    dead: list[DeadLetter] = []
    for i, m in enumerate(messages):
        try:
            bars.append(parse_bar_record(m.key, m.value, now, allowed))
            origin.append(i)
        except Rejected as err:
            dead.append(DeadLetter.of(err, m.value, "stream", topic=m.topic, partition=m.partition,
                                      offset=m.offset, key=m.key))
        except Exception as exc:  # noqa: BLE001 - decoders only reject (fuzzed); a bug must still not stall us
            bug = Rejected("wrong_type", f"unparseable: {exc!r}"[:200])
            dead.append(DeadLetter.of(bug, m.value, "stream", topic=m.topic, partition=m.partition,
                                      offset=m.offset, key=m.key))
    return bars, origin, dead


def readiness(results: dict[str, TickerResult],
              ready_at: float) -> tuple[list[WindowReady], dict[str, tuple[int, str]]]:
    """Window-ready events for tickers whose newest ready window (policy v2: at their newest bar once
    they have ``WINDOW`` slots, see :meth:`TickerResult.ready_window`) was not announced yet, or was
    announced at the same minute with another checksum (a bar filled in out of order changed it)."""
    events: list[WindowReady] = []
    announced: dict[str, tuple[int, str]] = {}
    for ticker, res in results.items():
        rw = res.ready_window()
        if rw is None:
            continue
        t, _, cs, pub = rw
        if res.announced is not None and (t < res.announced or (t == res.announced and res.announced_sum == cs)):
            continue
        events.append(WindowReady(ticker, t, cs, pub, ready_at))
        announced[ticker] = (t, cs)
    return events, announced


# Test-only switch (never set it in a deployment): the worker silently loses the one bar named here, every
# copy of it, as if it had never arrived. The fault tests run a variant with it on to show that their checks
# fail when a single bar is lost. It takes effect only together with DROP_SWITCH_GUARD=1.
DROP_SWITCH = "MINUTECAST_TEST_DROP_BAR"  # "TICKER:MINUTE", MINUTE = the bar's epoch seconds (Bar.minute)
DROP_SWITCH_GUARD = "MINUTECAST_TEST_SWITCHES"


def drop_switch(environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """The (ticker, minute) ``MINUTECAST_TEST_DROP_BAR`` names, or None. Test-only (see :data:`DROP_SWITCH`):
    without ``MINUTECAST_TEST_SWITCHES=1`` as well the switch is refused (an error is logged, nothing is
    dropped); a malformed value with the guard set raises ConfigError."""
    env = os.environ if environ is None else environ
    raw = env.get(DROP_SWITCH, "").strip()
    if not raw:
        return None
    if env.get(DROP_SWITCH_GUARD, "").strip() != "1":
        log.error("%s is set but %s is not 1: the test-only switch is refused, no bar is dropped",
                  DROP_SWITCH, DROP_SWITCH_GUARD)
        return None
    ticker, _, minute = raw.rpartition(":")
    if not ticker or not minute.isdigit():
        raise ConfigError(f"{DROP_SWITCH} must be TICKER:EPOCH_SECONDS, got {raw[:60]!r}")
    log.warning("TEST SWITCH %s: the bar %s at %s will be dropped (every copy)", DROP_SWITCH, ticker, minute)
    return ticker, int(minute)


class BatchProcessor:
    """Decode -> store -> readiness for one batch; publishing is the caller's (Faust or a test)."""

    def __init__(self, store: WindowStore, metrics: Metrics | None = None,
                 allowed: frozenset[str] | None = None, drop: tuple[str, int] | None = None) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.allowed = allowed  # ticker allowlist (None: any ticker); create_app sets it from the settings
        self.drop = drop  # test-only: the (ticker, minute) to lose (:func:`drop_switch`; create_app sets it)

    def process_isolating(self, messages: Sequence[Message]) -> Outcome:
        """:meth:`process`, but a batch the store's script fails on (a poison record, see
        :func:`streams.failures.kind`) is split in halves until the failing record is found; that record
        is dead-lettered as ``store_error`` and the rest applied. Other failures propagate."""
        try:
            return self.process(messages)
        except redislib.ResponseError as exc:
            if failures.kind(exc) != "poison":
                raise
            if len(messages) == 1:
                msg = messages[0]
                log.error("the window store refused offset %s:%s (%s): dead-lettered", msg.partition, msg.offset,
                          str(exc)[:200])
                err = Rejected("store_error", str(exc)[:200])
                self.metrics.bars_in.inc()
                self.metrics.deadletters.labels("store_error").inc()
                return Outcome(deadletters=[DeadLetter.of(err, msg.value, "stream", topic=msg.topic,
                                                          partition=msg.partition, offset=msg.offset, key=msg.key)])
        half = len(messages) // 2
        a, b = self.process_isolating(messages[:half]), self.process_isolating(messages[half:])
        return Outcome(a.ready + b.ready, a.deadletters + b.deadletters, a.announced | b.announced,
                       a.bars + b.bars, a.late + b.late)

    def process(self, messages: Sequence[Message]) -> Outcome:
        m = self.metrics
        bars, origin, dead = decode(messages, allowed=self.allowed)
        if self.drop is not None:  # test-only switch: lose this bar without a trace
            keep = [i for i, b in enumerate(bars) if (b.ticker, b.minute) != self.drop]
            bars, origin = [bars[i] for i in keep], [origin[i] for i in keep]
        rt0 = self.store.roundtrips
        results, late, conflicts = self.store.apply(bars, messages=len(messages))
        m.bars_in.inc(len(messages))  # after the write: a retried or split batch is counted once
        ready_at = time.time()  # the Redis write has returned (AOF everysec, see module docstring)
        for i in conflicts:
            msg = messages[origin[i]]
            b = bars[i]
            err = Rejected("conflicting_duplicate", f"{b.ticker} {b.minute} already stored with other values")
            dead.append(DeadLetter.of(err, msg.value, "stream", topic=msg.topic, partition=msg.partition,
                                      offset=msg.offset, key=msg.key))
        ready, announced = readiness(results, ready_at)
        m.bars_written.inc(len(bars) - len(late) - len(conflicts))
        m.late.inc(len(late))
        m.conflicts.inc(len(conflicts))
        m.roundtrips.inc(self.store.roundtrips - rt0)
        for d in dead:
            m.deadletters.labels(d.reason).inc()
        return Outcome(ready, dead, announced, len(bars), len(late))

    def commit_announced(self, outcome: Outcome) -> None:
        """After the ready events are delivered: remember them so they are not announced again."""
        rt0 = self.store.roundtrips
        self.store.mark_announced(outcome.announced)
        self.metrics.windows_ready.inc(len(outcome.ready))
        self.metrics.roundtrips.inc(self.store.roundtrips - rt0)


def broker_url(ks: KafkaSettings) -> str:
    """``kafka://h1:p1;h2:p2`` for Faust from the bootstrap list."""
    return ";".join(f"kafka://{hp.strip()}" for hp in ks.bootstrap.split(",") if hp.strip())


def broker_credentials(ks: KafkaSettings) -> Any:
    """Faust SASL credentials when SASL is configured, else None."""
    if not ks.security_protocol.startswith("SASL"):
        return None
    import faust

    assert ks.sasl_password is not None  # checked by KafkaSettings
    ctx = ssl.create_default_context() if ks.security_protocol == "SASL_SSL" else None
    return faust.SASLCredentials(username=ks.sasl_username, password=ks.sasl_password.get_secret_value(),
                                 mechanism=ks.sasl_mechanism, ssl_context=ctx)


def _lean_monitor() -> Any:
    """Faust's Monitor sensor class minus its per-record hooks (our Prometheus metrics cover them).

    Tried and dropped: a consumer awaiting each record's delivery directly instead of Faust's
    ``wait_first(callback(msg), suspend_flow.wait())`` (two tasks per record) cut the worker's CPU per
    bar by a third, but left partitions stalled after a rebalance in a two-worker backfill.
    """
    from faust.sensors import Monitor

    class LeanMonitor(Monitor):  # type: ignore[misc]
        """Faust's statistics sensor minus its per-record hooks (Prometheus metrics cover those)."""

        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            return None

        def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
            return None

        def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
            return None

        def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
            return None

    return LeanMonitor


def _raw_schema() -> Any:
    """A faust.Schema handing key and value bytes through untouched.

    The stock schema looks both codecs up per record (even for "raw"); we validate bytes ourselves in
    :func:`decode`. Unlike the stock one it also passes tombstones (value None) on, so they are
    dead-lettered instead of silently skipped.
    """
    import faust

    class RawSchema(faust.Schema):  # type: ignore[misc]
        def compile(self, app: Any, *, on_key_decode_error: Any = None, on_value_decode_error: Any = None,
                    default_propagate: bool = False) -> Any:
            create_event = app.create_event

            async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
                return create_event(message.key, message.value, message.headers, message)

            return decode

    return RawSchema(key_serializer="raw", value_serializer="raw")


def create_app(settings: StreamSettings, processor: BatchProcessor) -> Any:
    """The faust.App with its one agent. Consumer group = ``{app_id}-{namespace}``. Sets the
    processor's ticker allowlist from ``settings`` (:func:`minutecast.universe.allowlist`)."""
    topics = Topics(settings.namespace)
    import faust

    processor.allowed = allowlist(settings)
    processor.drop = drop_switch()

    (settings.home / "faust").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        f"{settings.app_id}-{settings.namespace}",
        broker=broker_url(settings.kafka),
        broker_credentials=broker_credentials(settings.kafka),
        autodiscover=False,
        # Faust's table directory (we keep no tables: state is in Redis) under our home, not the cwd.
        datadir=str(settings.home / "faust" / f"{settings.app_id}-{settings.namespace}"),
        key_serializer="raw",
        value_serializer="raw",
        topic_disable_leader=True,  # no on_leader timers: skip the leader-election topic
        web_enabled=settings.web_port > 0,
        web_port=max(settings.web_port, 1),
        web_bind="127.0.0.1",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 5),
        broker_max_poll_records=settings.max_poll_records,
        stream_buffer_maxsize=max(4 * settings.take_max, settings.max_poll_records),
        producer_acks=-1,
        producer_linger=0.005,  # ready events are latency-critical; small batches are fine
        logging_config=None,
        Monitor=_lean_monitor(),
    )
    bars_topic = app.topic(topics.bars, schema=_raw_schema())
    metrics = processor.metrics

    async def publish(outcome: Outcome) -> None:
        futs = [await app.producer.send(topics.ready, r.ticker.encode(), r.to_json(), None, None, None)
                for r in outcome.ready]
        futs += [await app.producer.send(topics.deadletter, d.kafka_key, d.to_json(), None, None, None)
                 for d in outcome.deadletters]
        if futs:
            await asyncio.gather(*futs)

    stall = failures.Stall(metrics, processor.store.client, processor.store.keys.stats())

    async def step(what: str, fn: Any, *args: Any) -> Any:
        return await failures.retrying(what, fn, *args, stall=stall, first_s=settings.retry_s,
                                       max_s=settings.retry_max_s)

    async def batch(messages: list[Message]) -> None:
        outcome: Outcome = await step("redis write", _call, processor.process_isolating, messages)
        await step("kafka publish", publish, outcome)
        await step("redis meta", _call, processor.commit_announced, outcome)

    @app.agent(bars_topic)
    async def windows(stream: Any) -> None:
        async for events in stream.take_events(settings.take_max, within=settings.take_within_s):
            t0 = time.perf_counter()
            messages = [Message(e.message.key, e.message.value, e.message.topic, e.message.partition,
                                e.message.offset) for e in events]
            task = asyncio.ensure_future(batch(messages))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                # Stopping: take_events acks this batch when the body ends, so finish it first; if it is
                # stalled, exit without committing instead (it is re-read on restart).
                if stall.since is not None:
                    log.warning("stopping while stalled: exiting without committing the batch in hand")
                    os._exit(0)
                await _finish(task, stall)
                raise
            except failures.Fatal as err:
                failures.die(err, stall)
            metrics.batch_seconds.observe(time.perf_counter() - t0)
            metrics.batch_size.observe(len(messages))
            _update_lag(app, events, metrics)

    return app


async def _finish(task: asyncio.Future[Any], stall: failures.Stall) -> None:
    """Wait for a batch being finished during a stop; a fatal failure still ends the process."""
    try:
        await task
    except failures.Fatal as err:
        failures.die(err, stall)


async def _call(fn: Any, *args: Any) -> Any:
    # Plain call: the Redis client is synchronous and one batch at a time is the design (ordering);
    # a thread hop would only add latency. Kept as a coroutine so retrying() can await it.
    return fn(*args)


def _update_lag(app: Any, events: Sequence[Any], metrics: Metrics) -> None:
    last: dict[Any, int] = {}
    for e in events:
        last[e.message.tp] = e.message.offset
    for tp, off in last.items():
        try:
            high = app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001, S112 - lag is best effort
            continue
        if high is not None:
            metrics.lag.labels(str(tp.partition)).set(max(0, high - off - 1))
