"""Fan-out of the forecasts topic to Server-Sent-Events clients: one Kafka consumer per server process.

A thread reads ``<ns>.forecasts.5m`` with a confluent-kafka consumer (from :func:`minutecast.kafka.make_consumer`)
assigned to every partition at its end offset (no consumer-group join, so a new server sees new forecasts
within milliseconds of starting), and hands each batch to the event loop, which puts the raw ``Forecast``
JSON on every subscribed client's queue whose ticker filter matches (the message key is the ticker: no
parsing on the hot path). A client whose queue fills up (it reads slower than forecasts arrive) is dropped;
its browser reconnects (EventSource) and reloads the table.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition
from tenacity import retry, retry_if_exception_type, stop_never, wait_fixed

from minutecast.errors import ServiceUnavailable
from minutecast.kafka import make_consumer, watermarks

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[bytes | None]
    tickers: frozenset[str] | None  # None: all
    dropped: bool = False


@dataclass(eq=False)
class Broadcaster:
    """Reads ``topic`` from its end and fans the values out to :class:`Subscriber` queues."""

    kafka: Any  # KafkaSettings
    topic: str
    queue_size: int = 2000
    on_tickers: Callable[[set[str]], None] | None = None  # tickers seen in a batch (keeps the ticker list fresh)
    subscribers: set[Subscriber] = field(default_factory=set)
    ready: threading.Event = field(default_factory=threading.Event)
    delivered: int = 0
    dropped_clients: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="sse-kafka", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def subscribe(self, tickers: frozenset[str] | None) -> Subscriber:
        sub = Subscriber(asyncio.Queue(self.queue_size), tickers)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    # ---- the consumer thread ------------------------------------------------------------------------
    def _assign(self, consumer: Any) -> None:
        """Assign every partition of the topic at its current end (retried until the topic exists)."""

        @retry(wait=wait_fixed(1.0), stop=stop_never, retry=retry_if_exception_type(ServiceUnavailable),
               reraise=True)
        def ends() -> dict[int, tuple[int, int]]:
            if self._stop.is_set():
                return {}
            marks = watermarks(consumer, self.topic, timeout_s=5)
            if not marks:
                raise ServiceUnavailable(f"topic {self.topic} does not exist yet")
            return marks

        marks = ends()
        consumer.assign([TopicPartition(self.topic, p, high) for p, (_, high) in marks.items()])
        self.ready.set()
        log.info("SSE: reading %s from its end (%d partitions)", self.topic, len(marks))

    def _run(self) -> None:
        consumer = make_consumer(self.kafka, group=f"minutecast-web-{uuid.uuid4().hex[:8]}",
                                 **{"auto.offset.reset": "latest", "fetch.wait.max.ms": 20,
                                    "fetch.error.backoff.ms": 100})
        try:
            self._assign(consumer)
            while not self._stop.is_set():
                first = consumer.poll(0.2)  # returns at the first message (consume(n) would wait for n)
                if first is None:
                    continue
                msgs = [first, *consumer.consume(1000, timeout=0)]
                batch: list[tuple[str, bytes]] = []
                for m in msgs:
                    key, value = m.key(), m.value()
                    if m.error() is None and isinstance(key, bytes) and isinstance(value, bytes) and value:
                        batch.append((key.decode(), value))
                if batch and self._loop is not None and not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(self._dispatch, batch)
        except Exception:  # noqa: BLE001 - logged; /healthz then reports the stream as down
            log.exception("SSE consumer stopped")
            self.ready.clear()
        finally:
            consumer.close()

    # ---- the event loop -----------------------------------------------------------------------------
    def _dispatch(self, batch: list[tuple[str, bytes]]) -> None:
        if self.on_tickers is not None:
            self.on_tickers({t for t, _ in batch})
        for sub in list(self.subscribers):
            for ticker, value in batch:
                if sub.tickers is not None and ticker not in sub.tickers:
                    continue
                try:
                    sub.queue.put_nowait(value)
                    self.delivered += 1
                except asyncio.QueueFull:
                    self._drop(sub)
                    break

    def _drop(self, sub: Subscriber) -> None:
        sub.dropped = True
        self.dropped_clients += 1
        self.subscribers.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)  # ends that client's stream


async def events(sub: Subscriber, keepalive_s: float) -> Any:
    """The SSE byte stream of one subscriber: every queued forecast as ``event: forecast``, a comment line
    when idle for ``keepalive_s``; several queued forecasts go out in one write."""
    yield b"retry: 2000\n: connected\n\n"
    while True:
        try:
            first = await asyncio.wait_for(sub.queue.get(), timeout=keepalive_s)
        except TimeoutError:
            yield b": keepalive\n\n"
            continue
        values = [first]
        while not sub.queue.empty() and len(values) < 500:
            values.append(sub.queue.get_nowait())
        chunk = b"".join(b"event: forecast\ndata: " + v + b"\n\n" for v in values if v is not None)
        if chunk:
            yield chunk
        if any(v is None for v in values):
            yield b"event: dropped\ndata: {}\n\n"
            return
