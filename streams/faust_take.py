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
    loop = asyncio.get_running_loop()
    events: list[Any] = []
    arrived = asyncio.Event()  # set by every record added
    full = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    first_at = last_at = 0.0
    stream_enable_acks: bool = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming, first_at, last_at
        try:
            if consuming is not None:  # the body holds the batch: wait until it is done
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take buffer found current_event is None")
            last_at = loop.time()
            if not events:
                first_at = last_at
            events.append(event)
            arrived.set()
            if len(events) >= max_:
                full.set()
                consumed.clear()
                await stream.wait(consumed)
        except asyncio.CancelledError:  # pragma: no cover
            raise
        except Exception as exc:  # noqa: BLE001 - as Faust's take: log and crash the stream
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    async def ready() -> None:
        """Until a batch is due: full, quiet for quiet_s, or within_s after its first record."""
        while not full.is_set():
            if not events:
                arrived.clear()
                await arrived.wait()
                continue
            now = loop.time()
            due = min(first_at + within_s, last_at + quiet_s)
            if now >= due:
                return
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), due - now)
            except TimeoutError:
                pass

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(stream.channel.__aiter__())  # noqa: SLF001 - what take_events does
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(ready())
            if events:
                consuming = loop.create_future()
                try:
                    yield list(events)
                finally:
                    done = list(events)
                    events.clear()
                    for event in done:
                        await stream.ack(event)
                    if not consuming.done():
                        consuming.set_result(None)
                    full.clear()
                    consumed.set()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)  # noqa: SLF001

