"""The Faust app: bar topic -> per-ticker windows in Redis -> window-ready events.

Started by ``minutecast stream`` (see :mod:`streams.worker_cli`); this module is the Faust glue (the app,
its topic, the agent, stalls and lag) and imports faust only inside :func:`create_app`. The batch logic
(:class:`streams.batch.BatchProcessor`) lives apart, usable and testable without Faust.

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
from collections.abc import Sequence
from typing import Any

from minutecast.settings import KafkaSettings, StreamSettings
from minutecast.topics import Topics
from minutecast.universe import allowlist
from streams import failures
from streams.batch import BatchProcessor, Message, Metrics, Outcome, drop_switch

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
