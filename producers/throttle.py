"""One throttle for every yfinance call, shared by all producer processes, with exponential backoff.

State lives in two ``multiprocessing`` shared doubles (created before the worker processes fork), so
``--processes 4`` still sends Yahoo at most one request per ``min_interval_s`` and a rate limit seen
by one process slows down all of them. The state is ours; waiting for the next slot and retrying a failed
call are tenacity's (:class:`tenacity.Retrying` with the injected ``sleep``).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, retry_if_result, stop_after_attempt, stop_never

from minutecast.errors import ServiceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 1.0  # longest single sleep while waiting for the next slot (another process may move it)


class RateLimited(ServiceUnavailable):
    """Yahoo answered "Too Many Requests" (yfinance swallows YFRateLimitError inside yf.download)."""


class NetworkError(ServiceUnavailable):
    """A request failed on the network (timeout, connection refused, DNS...)."""


def retryable_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "back off and try again": rate limits and network failures.

    yfinance's transport errors (curl_cffi's ``RequestException``) are ``OSError`` subclasses."""
    errs: list[type[BaseException]] = [RateLimited, NetworkError, ConnectionError, TimeoutError, OSError]
    try:
        from yfinance.exceptions import YFRateLimitError

        errs.append(YFRateLimitError)
    except ImportError:  # pragma: no cover - yfinance is a dependency
        pass
    return tuple(errs)


class Throttle:
    """At most one call per ``min_interval_s`` across processes; after a retryable error the gap
    doubles (up to ``max_backoff_s``) and shrinks back after successes."""

    def __init__(self, min_interval_s: float = 2.0, max_backoff_s: float = 300.0, max_retries: int = 8,
                 *, clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 shared: tuple[Any, Any] | None = None) -> None:
        self.min_interval_s = min_interval_s
        self.max_backoff_s = max_backoff_s
        self.max_retries = max_retries
        self.clock = clock
        self.sleep = sleep
        # (next allowed start, current gap), shared across processes when created before fork.
        state: tuple[Any, Any] = shared or (mp.Value("d", 0.0), mp.Value("d", min_interval_s))
        self.next_at, self.gap = state

    def shared(self) -> tuple[Any, Any]:
        return self.next_at, self.gap

    def _claim(self) -> float:
        """Take the next slot when it is due (0.0); else the seconds until it is."""
        with self.next_at.get_lock():
            now = self.clock()
            if now >= self.next_at.value:
                self.next_at.value = now + self.gap.value
                return 0.0
            return float(self.next_at.value - now)

    def _acquire(self) -> None:
        """Wait until this process holds the next slot (polling: another process may move it)."""

        def poll_wait(rs: RetryCallState) -> float:
            return min(_result(rs), POLL_S)

        Retrying(retry=retry_if_result(lambda wait: wait > 0), wait=poll_wait, stop=stop_never,
                 sleep=self.sleep)(self._claim)

    def _backoff(self) -> float:
        with self.gap.get_lock():
            self.gap.value = min(self.max_backoff_s, max(self.min_interval_s, self.gap.value) * 2)
            gap = self.gap.value
        with self.next_at.get_lock():
            self.next_at.value = max(self.next_at.value, self.clock() + gap * (0.8 + 0.4 * random.random()))
        return gap

    def _relax(self) -> None:
        with self.gap.get_lock():
            self.gap.value = max(self.min_interval_s, self.gap.value / 2)

    def call(self, fn: Callable[[], T], what: str = "request") -> T:
        """Run ``fn`` under the throttle, retrying retryable errors with backoff (at most ``max_retries`` calls)."""

        def attempt() -> T:
            self._acquire()
            return fn()

        def backed_off(rs: RetryCallState) -> None:  # after every failed attempt, the last one too
            gap = self._backoff()
            exc = rs.outcome.exception() if rs.outcome is not None else None
            log.warning("%s failed (%s: %s); attempt %d/%d, backing off %.0f s", what, type(exc).__name__,
                        str(exc)[:120], rs.attempt_number, self.max_retries, gap)

        def gave_up(rs: RetryCallState) -> NoReturn:
            exc = rs.outcome.exception() if rs.outcome is not None else None
            raise ServiceUnavailable(f"{what}: still failing after {self.max_retries} attempts (Yahoo rate limit "
                                     "or network); the watermark makes the next run fetch these minutes "
                                     "again") from exc

        # No wait of tenacity's own between attempts: the backoff moved the shared next slot, which
        # _acquire waits for (in every process).
        result = Retrying(retry=retry_if_exception_type(retryable_errors()), stop=stop_after_attempt(self.max_retries),
                          after=backed_off, retry_error_callback=gave_up, sleep=self.sleep)(attempt)
        self._relax()
        return result


def _result(rs: RetryCallState) -> float:
    if rs.outcome is None:  # pragma: no cover - tenacity sets it before asking for the wait
        return 0.0
    return float(rs.outcome.result())
