"""A burst-shaped ``take``: the Faust worker's batches end when the feed pauses, not on a clock tick.

Faust's ``Stream.take_events(max, within)`` yields whatever is buffered every ``within`` seconds (a tick that
runs whether records arrive or not) or when ``max`` are buffered. A minute's bars arrive as one burst
(every ticker's bar at the minute boundary): a tick falling inside the burst cuts it in two batches, whose
window-ready events then reach the Spark job apart and often land in two micro-batches, the second waiting
for the first (the "wait" stage of ``benchmarks.e2e``). :func:`take_bursts` yields instead when

* ``quiet_s`` has passed without a new record (the burst is in: a few ms at the broker's pace), or
* ``within_s`` has passed since the batch's first record (a steady stream still gets cut), or
* ``max_`` records are buffered.

It is Faust 0.15.3's ``take_events`` with that wait (``tests/test_streams_worker.py`` pins its source):
records are buffered by a stream processor, acks are off while the body runs and every event of a batch is
acked after it, so a crash replays the batch as before. ``quiet_s = 0`` gives Faust's own ``take_events``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


async def take_bursts(stream: Any, max_: int, within_s: float, quiet_s: float) -> AsyncIterator[list[Any]]:
    """Batches of events of ``stream`` (see the module docstring), each acked after the body is done."""
    if quiet_s <= 0:
        async for batch in stream.take_events(max_, within=within_s):
            yield batch
        return
    buffer = _Buffer(stream, max_, within_s, quiet_s)
    add = buffer.add
    stream_enable_acks: bool = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add)
    stream._enable_passive(stream.channel.__aiter__())  # noqa: SLF001 - what take_events does
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(buffer.ready())
            if buffer.events:
                buffer.consuming = buffer.loop.create_future()
                try:
                    yield list(buffer.events)
                finally:
                    await buffer.release()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add)  # noqa: SLF001


class _Buffer:
    """The events of the batch being gathered, and when it is due; :meth:`add` is the stream's processor."""

    def __init__(self, stream: Any, max_: int, within_s: float, quiet_s: float) -> None:
        self.stream, self.max_, self.within_s, self.quiet_s = stream, max_, within_s, quiet_s
        self.loop = asyncio.get_running_loop()
        self.events: list[Any] = []
        self.arrived = asyncio.Event()  # set by every record added
        self.full = asyncio.Event()
        self.consumed = asyncio.Event()
        self.consuming: asyncio.Future[None] | None = None  # set while the body holds a batch
        self.first_at = self.last_at = 0.0

    async def add(self, value: Any) -> Any:
        """Buffer the stream's current event (after the body let go of the previous batch); when the
        batch is full, hold the stream until it was consumed."""
        stream = self.stream
        try:
            if self.consuming is not None:  # the body holds the batch: wait until it is done
                try:
                    await self.consuming
                finally:
                    self.consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take buffer found current_event is None")
            self.last_at = self.loop.time()
            if not self.events:
                self.first_at = self.last_at
            self.events.append(event)
            self.arrived.set()
            if len(self.events) >= self.max_:
                self.full.set()
                self.consumed.clear()
                await stream.wait(self.consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # noqa: BLE001 - as Faust's take: log and crash the stream
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    async def ready(self) -> None:
        """Until a batch is due: full, quiet for quiet_s, or within_s after its first record."""
        while not self.full.is_set():
            if not self.events:
                self.arrived.clear()
                await self.arrived.wait()
                continue
            now = self.loop.time()
            due = min(self.first_at + self.within_s, self.last_at + self.quiet_s)
            if now >= due:
                return
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), due - now)
            except TimeoutError:
                pass

    async def release(self) -> None:
        """After the body: ack every event of the batch, empty the buffer and let a waiting record in."""
        done = list(self.events)
        self.events.clear()
        for event in done:
            await self.stream.ack(event)
        if self.consuming is not None and not self.consuming.done():
            self.consuming.set_result(None)
        self.full.clear()
        self.consumed.set()
