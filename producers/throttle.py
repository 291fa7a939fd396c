"""One throttle for every yfinance call, shared by all producer processes, with exponential backoff.

State lives in two ``multiprocessing`` shared doubles (created before the worker processes fork), so
``--processes 4`` still sends Yahoo at most one request per ``min_interval_s`` and a rate limit seen
by one process slows down all of them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from minutecast.errors import ServiceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class RateLimited(ServiceUnavailable):
    """Yahoo answered "Too Many Requests" (yfinance swallows YFRateLimitError inside yf.download)."""


class NetworkError(ServiceUnavailable):
    """A request failed on the network (timeout, connection refused, DNS...)."""


def retryable_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "back off and try again": rate limits and network failures."""
    errs: list[type[BaseException]] = [RateLimited, NetworkError, ConnectionError, TimeoutError, OSError]
    try:
        from yfinance.exceptions import YFRateLimitError

        errs.append(YFRateLimitError)
    except ImportError:  # pragma: no cover - yfinance is a dependency
        pass
    try:
        from curl_cffi.requests.exceptions import RequestException

        errs.append(RequestException)
    except ImportError:  # pragma: no cover
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

    def _acquire(self) -> None:
        while True:
            with self.next_at.get_lock():
                now = self.clock()
                if now >= self.next_at.value:
                    self.next_at.value = now + self.gap.value
                    return
                wait = self.next_at.value - now
            self.sleep(min(wait, 1.0))

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
        """Run ``fn`` under the throttle, retrying retryable errors with backoff."""
        errors = retryable_errors()
        for attempt in range(1, self.max_retries + 1):
            self._acquire()
            try:
                result = fn()
            except errors as exc:
                gap = self._backoff()
                log.warning("%s failed (%s: %s); attempt %d/%d, backing off %.0f s", what, type(exc).__name__,
                            str(exc)[:120], attempt, self.max_retries, gap)
                continue
            self._relax()
            return result
        raise ServiceUnavailable(f"{what}: still failing after {self.max_retries} attempts (Yahoo rate limit "
                                 "or network); the watermark makes the next run fetch these minutes again")
