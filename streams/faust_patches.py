"""Faust internals the worker replaces, in one place, each pinned to the faust-streaming source it was written for.

* :func:`lean_monitor`: Faust's statistics sensor minus its per-record hooks;
* :func:`lean_drain`: the consumer's drain loop with a cheaper hand-off of each fetched record
  (``MINUTECAST_LEAN_DRAIN``), with :class:`Resume`, its awaitable;
* :func:`raw_schema`: a schema handing key and value bytes through untouched (tombstones included);
* :func:`streams.faust_take.take_bursts` (a module of its own) mirrors ``Stream.take_events``.

:data:`PINNED` holds the sha256 of each Faust function a patch copies or mirrors (faust-streaming 0.15.3);
:func:`unpinned` names those whose installed source differs, i.e. a Faust upgrade whose changes the
patches must be checked against first (:func:`streams.faust_app.create_app` logs them; the worker tests
assert there are none). faust is imported inside the functions only.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
from typing import Any

# "module:qualified name" -> sha256 of its inspect.getsource, of the Faust 0.15.3 source each patch follows.
PINNED = {
    "faust.transport.consumer:Consumer._drain_messages":  # lean_drain copies it
        "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
    "faust.streams:Stream.take_events":  # streams.faust_take.take_bursts mirrors it
        "607d48aead118ba8ea868718a0df87de1c5fcecd10ec542c659b448796728e08",
}


def source_sha256(obj: Any) -> str:
    """sha256 (hex) of a function's source as :func:`inspect.getsource` gives it."""
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def pinned_object(target: str) -> Any:
    """The function a :data:`PINNED` key names (``module:Class.attr``)."""
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def unpinned() -> list[str]:
    """The :data:`PINNED` targets whose installed source is not the one the patches were written for."""
    return [t for t, digest in PINNED.items() if source_sha256(pinned_object(t)) != digest]


def lean_monitor() -> Any:
    """Faust's Monitor sensor class minus its per-record hooks (our Prometheus metrics cover them).
    (The consumer's own per-record cost is cut by :func:`lean_drain`.)"""
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


class Resume:
    """Awaitable that finishes a coroutine already run (``send(None)``) up to its first suspension,
    where it yielded ``first``: what a Task would have done with it from there on, step for step."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Any:
        coro, step = self.coro, self.first
        while True:
            try:
                sent = yield step
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - a cancel or error thrown in goes on to the coroutine
                try:
                    step = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    step = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def lean_drain(base: Any) -> Any:
    """Faust's consumer class with a cheaper hand-off of each fetched record (``lean_drain``).

    Faust's drain loop awaits ``wait_first(callback(message), suspend_flow.wait())`` per record: four
    tasks and an ``asyncio.wait``, 34 us a record on uvloop here (64 on asyncio), about a fifth of the
    worker's CPU. The callback (the conductor putting the event into the stream's queue) almost always
    finishes without suspending, so it is run inline first; only one that suspends (queue full, lock
    held) is finished under the same ``wait_first``, so a flow suspended by a rebalance still abandons
    it exactly as before. (Awaiting every callback directly, never abandoning it, stalled partitions
    after a rebalance.) The loop is Faust 0.15.3's ``Consumer._drain_messages`` otherwise unchanged.
    """
    from faust.transport.consumer import CONSUMER_FETCHING

    class LeanDrain(base):  # type: ignore[misc,valid-type]
        async def _deliver(self, callback: Any, message: Any) -> None:
            coro = callback(message)
            try:
                first = coro.send(None)
            except StopIteration:
                return
            await self.wait_first(Resume(coro, first), self.suspend_flow.wait())

        async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
            callback, getmany, deliver = self.callback, self.getmany, self._deliver
            consumer_should_stop, fetcher_should_stop = self._stopped.is_set, fetcher._stopped.is_set
            get_read_offset, set_read_offset = self._read_offset.__getitem__, self._read_offset.__setitem__
            set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
            commit_every = self._commit_every
            acks_enabled_for = self.app.topics.acks_enabled_for
            num_since_yield = 0
            try:
                while not (consumer_should_stop() or fetcher_should_stop()):
                    set_flag(CONSUMER_FETCHING)
                    ait = getmany(timeout=1.0)
                    await self.sleep(0)
                    if not self.should_stop:
                        async for tp, message in ait:
                            num_since_yield += 1
                            if num_since_yield > 100:
                                await asyncio.sleep(0)
                                num_since_yield = 0
                            offset = message.offset
                            r_offset = get_read_offset(tp)
                            if r_offset is None or offset >= r_offset:
                                gap = offset - (r_offset or 0)
                                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                    await self._add_gap(tp, r_offset + 1, offset)
                                if commit_every is not None and self._n_acked >= commit_every:  # type: ignore[has-type]
                                    self._n_acked = 0
                                    await self.commit()
                                await deliver(callback, message)
                                set_read_offset(tp, offset)
                        unset_flag(CONSUMER_FETCHING)
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    self.log.info("Broker stopped consumer, shutting down...")
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    self.log.info("Consumer shutting down for user cancel.")
                    return
                raise
            except Exception as exc:
                self.log.exception("Drain messages raised: %r", exc)
                raise
            finally:
                unset_flag(CONSUMER_FETCHING)

    return LeanDrain


def raw_schema() -> Any:
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
