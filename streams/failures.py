"""The Faust worker's failure policy: which failures are retried, which cannot succeed on retry.

* **retry** (:func:`kind` ``"retry"``): Kafka or Redis unavailable (connection refused or reset, timeouts,
  Redis ``LOADING`` / ``READONLY`` / ``BUSY``, a Kafka error flagged retriable). The batch is retried with
  exponential back-off and full jitter (``retry_s`` doubling up to ``retry_max_s``, tenacity) for as long
  as it takes: nothing is skipped. While it waits the worker shows as *stalled*: the gauges
  ``minutecast_stream_stalled`` (1/0) and ``minutecast_stream_stalled_seconds``, the counter
  ``minutecast_stream_retries_total{what}``, and in Redis ``ns:stats`` the fields
  ``stream_stalled_since`` (epoch s; 0 once it moves again) and ``stream_stall_reason`` (best effort:
  written when Redis answers).
* **poison** (``"poison"``): the window store's Lua script failed on this batch (a Redis script error):
  the batch is split in halves until the one record that fails is found, which is dead-lettered with
  reason ``store_error`` (:meth:`streams.batch.BatchProcessor.process_isolating`).
* **fatal** (``"fatal"``): anything else, e.g. Redis ``OOM`` (maxmemory reached, noeviction; also when
  raised from inside our script) or
  ``MISCONF`` (cannot persist), a wrong password, a record too large for the producer, a bug. Retrying
  cannot help until an operator acts, so the worker logs a CRITICAL line saying what and how to fix it,
  writes ``stream_fatal`` to ``ns:stats`` (best effort) and exits with status :data:`EXIT_FATAL`
  *without committing*: Faust's ``take_events`` acks a batch however its body ends, so exiting the
  process is the one way not to lose it; the batch is re-read on restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import redis as redislib
from aiokafka.errors import KafkaError, KafkaTimeoutError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from minutecast import dependency
from minutecast.errors import ServiceUnavailable

log = logging.getLogger(__name__)
EXIT_FATAL = 3  # `minutecast stream` exit status after a failure that retrying cannot fix
Kind = Literal["retry", "poison", "fatal"]
# redis-py strips a reply's error code ("OOM", "ERR", ...) and names it by class; the rest by message.
_REDIS_FATAL_TEXT = ("maxmemory", "MISCONF", "unable to persist", "NOPERM", "NOAUTH", "WRONGPASS")
_REDIS_TRANSIENT_TEXT = ("LOADING", "BUSY", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN")


def kind(exc: BaseException) -> Kind:
    """Classify a failure of a batch step (see the module docstring)."""
    if isinstance(exc, redislib.AuthenticationError | redislib.exceptions.AuthorizationError):
        return "fatal"
    if isinstance(exc, redislib.ConnectionError | redislib.TimeoutError):  # BusyLoadingError included
        return "retry"
    if isinstance(exc, redislib.ResponseError):
        msg = str(exc)
        rx = redislib.exceptions
        if isinstance(exc, rx.OutOfMemoryError | rx.NoPermissionError | rx.ExecAbortError) \
                or any(t in msg for t in _REDIS_FATAL_TEXT):
            return "fatal"  # also raised from inside our script: "... maxmemory ... @user_script:93"
        if isinstance(exc, rx.ReadOnlyError | rx.TryAgainError) \
                or msg.lstrip().startswith(_REDIS_TRANSIENT_TEXT):
            return "retry"
        if "script" in msg:  # "user_script:12: ...", "Error running script": the script failed on this input
            return "poison"
        return "fatal"
    if isinstance(exc, ServiceUnavailable):  # e.g. Kafka not answering during a repair read
        return "retry"
    if isinstance(exc, KafkaTimeoutError | asyncio.TimeoutError):
        return "retry"
    if isinstance(exc, KafkaError):
        return "retry" if getattr(exc, "retriable", False) else "fatal"
    if isinstance(exc, ConnectionError | OSError):
        return "retry"
    return "fatal"


class Stall:
    """The stalled-worker signal: Prometheus gauges/counter and ``ns:stats`` fields (best effort)."""

    def __init__(self, metrics: Any, client: redislib.Redis | None, stats_key: str) -> None:
        self.metrics = metrics
        self.client = client
        self.stats_key = stats_key
        self.since: float | None = None

    def _write(self, mapping: dict[Any, Any]) -> None:  # redis-py types keys as bytes | str | int | float
        if self.client is None:
            return
        try:
            self.client.hset(self.stats_key, mapping=mapping)
        except redislib.RedisError:  # Redis may be what is down: the gauges still say it
            pass

    def retrying(self, what: str, exc: BaseException, wait_s: float) -> None:
        now = time.time()
        first = self.since is None
        if first:
            self.since = now
        self.metrics.stalled.set(1)
        self.metrics.stalled_seconds.set(now - (self.since or now))
        self.metrics.retries.labels(what).inc()
        dependency.mark_down("redis" if isinstance(exc, redislib.RedisError) else "kafka", exc)
        log.warning("%s failed (%s: %s); worker stalled %.0f s, retrying in %.1f s", what, type(exc).__name__,
                    str(exc)[:200], now - (self.since or now), wait_s)
        if first:
            self._write({"stream_stalled_since": round(now, 3),
                         "stream_stall_reason": f"{what}: {type(exc).__name__}: {str(exc)[:160]}"})

    def recovered(self) -> None:
        if self.since is None:
            return
        log.info("worker moving again after a %.1f s stall", time.time() - self.since)
        self.since = None
        for dep in dependency.DEPENDENCIES:
            dependency.mark_up(dep)
        self.metrics.stalled.set(0)
        self.metrics.stalled_seconds.set(0)
        self._write({"stream_stalled_since": 0, "stream_stall_reason": ""})


class Fatal(Exception):  # noqa: N818 - not a MinutecastError on purpose: it ends the process, never caught
    """A batch step failed in a way retrying cannot fix (carries what and the original failure)."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(f"{what}: {type(exc).__name__}: {str(exc)[:300]}")
        self.what = what
        self.exc = exc


async def retrying(what: str, fn: Callable[..., Awaitable[Any]], *args: Any, stall: Stall, first_s: float,
                   max_s: float) -> Any:
    """``await fn(*args)`` until it succeeds, backing off on retryable failures; anything else raises
    :class:`Fatal` (poison too: isolating a poison record is the caller's job, before this)."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        stall.retrying(what, exc or RuntimeError("?"), wait)

    retryer = AsyncRetrying(retry=retry_if_exception(lambda e: kind(e) == "retry"),
                            wait=wait_random_exponential(multiplier=first_s, max=max_s),
                            before_sleep=before_sleep, reraise=True)
    try:
        result: Any = await retryer(fn, *args)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified: only non-retryable failures get here
        raise Fatal(what, exc) from exc
    stall.recovered()
    return result


def die(err: Fatal, stall: Stall) -> None:
    """Log what failed and how to fix it, record it in ``ns:stats``, exit :data:`EXIT_FATAL` at once
    (no commit: the batch in hand is re-read on restart)."""
    hint = {"maxmemory": "Redis reached maxmemory: raise it or free memory (window keys expire after window_ttl_s)",
            "MISCONF": "Redis cannot persist (disk full or not writable): fix its disk, then restart"}
    text = str(err.exc)
    why = next((h for k, h in hint.items() if k in text), "fix the cause, then restart the worker")
    log.critical("FATAL in %s: %s: %s -- %s. Exiting with status %d without committing; the batch is re-read "
                 "on restart.", err.what, type(err.exc).__name__, text[:300], why, EXIT_FATAL)
    stall._write({"stream_fatal": f"{time.time():.0f} {err.what}: {type(err.exc).__name__}: {text[:160]}"})
    for h in logging.getLogger().handlers:
        try:
            h.flush()
        except Exception:  # noqa: BLE001, S110 - exiting anyway
            pass
    sys.stderr.flush()
    os._exit(EXIT_FATAL)

