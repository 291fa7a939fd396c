"""The Faust app: bar topic -> per-ticker windows in Redis -> window-ready events.

Started by ``minutecast stream`` (see :mod:`streams.worker_cli`); this module is the Faust glue (the app,
its topic, the agent, stalls and lag) and imports faust only inside functions. :func:`create_app` wires named
steps; the Faust internals it replaces are :mod:`streams.faust_patches`. The batch logic
(:class:`streams.batch.BatchProcessor`) lives apart, usable and testable without Faust.

Per batch (:func:`streams.faust_take.take_bursts`: a batch ends ``take_quiet_s`` after the last bar, or
``take_within_s`` after its first, or at ``take_max`` bars, so a minute's burst is one batch):

1. decode + validate every message in one tight loop (:func:`minutecast.schemas.parse_bar`); invalid
   ones become :class:`~minutecast.schemas.DeadLetter` records with their reason;
2. one EVALSHA writes the whole batch (:class:`streams.window_store.WindowStore`: each ticker's newest
   ``window.RETAIN`` bars, one binary value a ticker), returning a few scalars a ticker; conflicting
   duplicates become dead letters (``conflicting_duplicate``), late bars are counted;
3. for each ticker of the batch, the store script has said whether the window at its newest bar is ready
   under the window policy v2 (:mod:`minutecast.window`: slots, short gaps filled, longer ones collapsed
   and marked, so the window at a bar reaches back across the overnight gap), i.e. whether the ticker has
   ``WINDOW`` slots, and that window's checksum (:class:`streams.window_store.Ready`). One whose
   (t, checksum) was not announced before is published as a :class:`~minutecast.schemas.WindowReady`
   (key = ticker) *after* the Redis write returned. The checksum covers the ticker's own columns only
   (market context is added by the reader), so an out-of-order bar that changes the window at an
   announced minute re-announces it with the new checksum. Redis runs with ``appendonly yes`` /
   ``appendfsync everysec``: a write is in the AOF on return and fsynced within a second;
   a Redis crash can lose at most that last second, which
   ``minutecast rebuild`` (or the start-up rebuild) restores from Kafka;
4. delivery of ready events and dead letters is awaited, the announced (t, checksum) is stored in the
   window meta, and only then does the body return, so Faust acks (and later commits) the batch's offsets.

Steps 1-3 and the meta write of 4 run on the worker's one Redis thread (:func:`_call`), off the event
loop, which meanwhile keeps fetching and heartbeating; the agent awaits each step, so batches stay in order.

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
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvloop

from minutecast.settings import KafkaSettings, StreamSettings
from minutecast.topics import Topics
from minutecast.universe import allowlist
from streams import failures
from streams.batch import BatchProcessor, Metrics, Outcome, Record, drop_switch
from streams.faust_patches import lean_drain, lean_monitor, raw_schema, unpinned
from streams.faust_take import take_bursts

log = logging.getLogger(__name__)


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


def create_app(settings: StreamSettings, processor: BatchProcessor) -> Any:
    """The faust.App with its one agent. Consumer group = ``{app_id}-{namespace}``. Sets the
    processor's ticker allowlist from ``settings`` (:func:`minutecast.universe.allowlist`)."""
    topics = Topics(settings.namespace)
    _prepare(settings, processor)
    app = _faust_app(settings)
    stall = failures.Stall(processor.metrics, processor.store.client, processor.store.keys.stats())
    batch = _batch_steps(settings, processor, _publisher(app, topics), stall)
    _add_agent(app, app.topic(topics.bars, schema=raw_schema()), settings, processor.metrics, batch, stall)
    return app


def _prepare(settings: StreamSettings, processor: BatchProcessor) -> None:
    """What must hold before Faust starts: the processor's allowlist and test drop switch, Faust's data
    directory, and uvloop's policy (before the Worker asks for its loop)."""
    processor.allowed = allowlist(settings)
    processor.drop = drop_switch()
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    if settings.event_loop == "uvloop":
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if settings.lean_drain and (changed := unpinned()):
        log.warning("faust's source differs from the one streams.faust_patches was written for: %s",
                    ", ".join(changed))


def _faust_app(settings: StreamSettings) -> Any:
    """The faust.App: raw bytes in and out, no tables, no leader topic, our lean sensor (and drain)."""
    import faust

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
        stream_buffer_maxsize=max(settings.stream_buffer_maxsize, 4 * settings.take_max, settings.max_poll_records),
        cython_optimizations=settings.cython_optimizations,
        producer_acks=-1,
        producer_linger=0.005,  # ready events are latency-critical; small batches are fine
        logging_config=None,
        Monitor=lean_monitor(),
    )
    if settings.lean_drain:  # set before the worker creates the consumer from it
        app.transport.Consumer = lean_drain(app.transport.Consumer)  # type: ignore[misc]
    return app


def _publisher(app: Any, topics: Topics) -> Callable[[Outcome], Awaitable[None]]:
    """Step 2 of a batch: send its ready events and dead letters, and await every delivery."""

    async def publish(outcome: Outcome) -> None:
        futs = [await app.producer.send(topics.ready, r.ticker.encode(), r.to_json(), None, None, None)
                for r in outcome.ready]
        futs += [await app.producer.send(topics.deadletter, d.kafka_key, d.to_json(), None, None, None)
                 for d in outcome.deadletters]
        if futs:
            await asyncio.gather(*futs)

    return publish


def _batch_steps(settings: StreamSettings, processor: BatchProcessor,
                 publish: Callable[[Outcome], Awaitable[None]],
                 stall: failures.Stall) -> Callable[[list[Record]], Awaitable[None]]:
    """One batch, step by step (module docstring): Redis write, Kafka publish, Redis meta; each retried
    while its service is unavailable (the worker shows as stalled meanwhile)."""

    async def step(what: str, fn: Any, *args: Any) -> Any:
        return await failures.retrying(what, fn, *args, stall=stall, first_s=settings.retry_s,
                                       max_s=settings.retry_max_s)

    async def batch(messages: list[Record]) -> None:
        outcome: Outcome = await step("redis write", _call, processor.process_isolating, messages)
        await step("kafka publish", publish, outcome)
        await step("redis meta", _call, processor.commit_announced, outcome)

    return batch


def _add_agent(app: Any, bars_topic: Any, settings: StreamSettings, metrics: Metrics,
               batch: Callable[[list[Record]], Awaitable[None]], stall: failures.Stall) -> None:
    """The agent: burst-shaped batches of the bar topic, each run to its end (also during a stop), then
    its metrics and the consumer lag."""

    @app.agent(bars_topic)
    async def windows(stream: Any) -> None:
        async for events in take_bursts(stream, settings.take_max, settings.take_within_s, settings.take_quiet_s):
            t0 = time.perf_counter()
            messages = [e.message for e in events]  # Faust's records as they are (batch.Record)
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


async def _finish(task: asyncio.Future[Any], stall: failures.Stall) -> None:
    """Wait for a batch being finished during a stop; a fatal failure still ends the process."""
    try:
        await task
    except failures.Fatal as err:
        failures.die(err, stall)


# The batch's Redis work (decode + store call + readiness, then the announced meta) runs on this one
# thread, off the event loop: a slow or stalled Redis call (10 s socket timeout) no longer freezes
# the loop, so consumer heartbeats, fetches and commits go on meanwhile. One thread keeps the calls
# in submission order, and the agent still awaits each step, so one batch's writes precede the next's.
_REDIS_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minutecast-redis")


async def _call(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_REDIS_THREAD, fn, *args)


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
