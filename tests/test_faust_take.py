"""The worker's burst-shaped take (:func:`streams.faust_take.take_bursts`) on a real Faust agent's stream (Faust's
own test context: events go through the stream, its processors and its acks, no broker): a batch ends when the
feed pauses, so a burst is one batch however it falls against the clock, a steady feed is still cut
``within_s`` after a batch's first record, and ``max_`` still bounds a batch. Faust's own ``take_events``
(what the function mirrors) is pinned by its source."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import time
from typing import Any

from streams.faust_patches import PINNED
from streams.faust_take import take_bursts


def run(puts: list[tuple[int, float]], max_: int, within_s: float, quiet_s: float) -> list[int]:
    """Feed ``puts`` (count, pause after, s) to an agent taking with take_bursts: the batches' sizes. Only
    compositions are asserted, never wall-clock times (a loaded machine stalls the event loop)."""
    import faust
    app = faust.App(f"take-{time.monotonic_ns()}", broker="kafka://127.0.0.1:1", autodiscover=False,
                    web_enabled=False)
    got: list[int] = []
    acked: list[int] = []

    @app.agent()
    async def agent(stream: Any) -> None:
        async for batch in take_bursts(stream, max_, within_s, quiet_s):
            got.append(len(batch))
            acked.append(sum(1 for e in batch if e.message.acked))  # acked only after the body

    async def main() -> None:
        async with agent.test_context() as ag:
            for n, pause in puts:
                for i in range(n):
                    await ag.put(i)
                await asyncio.sleep(pause)

    asyncio.run(main())
    assert sum(acked) == 0
    return got


def test_a_burst_is_one_batch_when_the_feed_pauses() -> None:
    got = run([(5, 0.15), (3, 0.15), (7, 0.15)], max_=100, within_s=1.0, quiet_s=0.03)
    # three batches: each ended quiet_s (0.03 s) after its burst; within_s (1 s) would have made them one
    assert got == [5, 3, 7]


def test_a_steady_feed_is_cut_within_s_after_a_batch_first_record_and_max_bounds_a_batch() -> None:
    got = run([(1, 0.01)] * 40 + [(0, 0.3)], max_=100, within_s=0.1, quiet_s=0.05)
    assert sum(got) == 40 and len(got) >= 3 and max(got) < 40
    got = run([(25, 0.2)], max_=10, within_s=1.0, quiet_s=0.05)
    assert got == [10, 10, 5]


def test_quiet_zero_is_faust_take_events_and_its_source_is_pinned() -> None:
    from faust.streams import Stream

    # take_bursts mirrors Faust 0.15.3's take_events: re-check it on an upgrade
    src = inspect.getsource(Stream.take_events).encode()
    assert hashlib.sha256(src).hexdigest() == "607d48aead118ba8ea868718a0df87de1c5fcecd10ec542c659b448796728e08"
    assert PINNED["faust.streams:Stream.take_events"] == hashlib.sha256(src).hexdigest()  # streams.faust_patches
    # Faust's own take yields on its clock tick: the two bursts 50 ms apart come as one batch at ~0.3 s
    got = run([(5, 0.05), (3, 0.4)], max_=100, within_s=0.3, quiet_s=0.0)
    assert got == [8]
