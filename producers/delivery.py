"""Deliver a piece of bars whole: publish it, wait for every delivery report, re-send exactly the bars whose
delivery failed.

A failed report (the broker stayed unreachable past ``delivery.timeout.ms``, a fatal producer error) names
its bar (:attr:`producers.publisher.Publisher.failures`); :func:`deliver` re-publishes those rows of the
piece, up to :data:`RESEND_ATTEMPTS` publishes in all with exponential back-off (tenacity), before the
caller moves any watermark (:mod:`producers.watermark`). What still fails is returned, so the caller keeps
the ticker's watermark below it: a ticker's failed minutes are sent again before its watermark passes them.
A re-sent bar has the values of the first one, so a copy the broker did keep is a no-op downstream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
from tenacity import (
    Retrying,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_when_event_set,
    wait_exponential,
)

from minutecast.errors import DeliveryError
from producers.bars import PRICES

log = logging.getLogger(__name__)

RESEND_ATTEMPTS = 5  # publishes of a bar whose delivery failed, the first one included
RESEND_WAIT_S = 1.0  # back-off before the second re-send; doubles after each one...
RESEND_WAIT_MAX_S = 30.0  # ...up to this
# Flushing goes on this long while reports are outstanding: librdkafka reports every message within
# delivery.timeout.ms (300 s, minutecast.kafka.make_producer), so a report is missing only past it.
DRAIN_MAX_S = 330.0


class DeliveryFailed(DeliveryError):
    """Bars were still undelivered after :data:`RESEND_ATTEMPTS` publishes (or their reports never came)."""


class StopEvent(Protocol):
    def is_set(self) -> bool: ...


class Sink(Protocol):
    """The part of :class:`producers.publisher.Publisher` a delivery uses."""

    last_complete: bool  # False when the last publish call stopped early (stop requested)
    stop_requested: Any  # a threading.Event
    unhealed: Any  # {(ticker, minute): failure reports} not made good yet

    def publish_frame(self, frame: pd.DataFrame, source: str, now: float | None = None) -> int: ...

    def flush(self, timeout_s: float | None = None) -> int: ...

    def take_failures(self) -> list[tuple[str, int]]: ...

    def note_resent(self, n: int) -> None: ...

    def heal(self, bars: Iterable[tuple[str, int]]) -> None: ...


@dataclass
class Delivery:
    """What became of one piece."""

    sent: int  # bars handed to the producer the first time
    failed: pd.DataFrame  # rows of the piece whose delivery still failed after every re-send
    complete: bool  # the whole piece was handed over and every report came back (no stop mid-piece)


def rows_of(frame: pd.DataFrame, keys: Iterable[tuple[str, int]]) -> pd.DataFrame:
    """The rows of ``frame`` whose (ticker, minute) is one of ``keys`` (all-NaN rows excepted: never sent)."""
    wanted = set(keys)
    if frame.empty or not wanted:
        return frame.iloc[:0]
    pairs = pd.MultiIndex.from_arrays([frame["ticker"].astype(str), frame["minute"].astype("int64")])
    hit = pairs.isin(list(wanted)) & ~frame[PRICES].isna().all(axis=1).to_numpy()
    return frame[hit]


def _keys(frame: pd.DataFrame) -> set[tuple[str, int]]:
    return set(zip(frame["ticker"].astype(str).tolist(), frame["minute"].astype("int64").tolist(), strict=True))


def drain(pub: Sink) -> int:
    """Flush until no report is outstanding (or a stop is requested, or DRAIN_MAX_S passed); returns what is
    still in flight."""
    stop = stop_after_delay(DRAIN_MAX_S) | stop_when_event_set(pub.stop_requested)
    left: int = Retrying(retry=retry_if_result(lambda n: n > 0), stop=stop,
                         retry_error_callback=lambda rs: rs.outcome.result() if rs.outcome else 1)(pub.flush)
    return left


def resend(pub: Sink, frame: pd.DataFrame, failures: list[tuple[str, int]], source: str, now: float | None = None,
           *, sleep: Callable[[float], None] = time.sleep) -> pd.DataFrame:
    """Re-publish the rows of ``frame`` named by ``failures`` until acknowledged, RESEND_ATTEMPTS publishes in
    all (the failed one counts); returns the rows still failing (empty when all made it)."""
    left = rows_of(frame, failures)
    if left.empty or RESEND_ATTEMPTS <= 1:
        return left

    def once() -> pd.DataFrame:
        nonlocal left
        pub.take_failures()  # reports of earlier pieces are not this piece's business
        n = pub.publish_frame(left, source, now)
        pub.note_resent(n)
        if drain(pub) > 0 or not pub.last_complete:
            return left  # stopped or reports outstanding: nothing is known to have arrived
        again = pub.take_failures()
        pub.heal(_keys(left) - set(again))
        left = rows_of(left, again)
        return left

    stop = stop_after_attempt(RESEND_ATTEMPTS - 1) | stop_when_event_set(pub.stop_requested)
    Retrying(retry=retry_if_result(lambda df: not df.empty), stop=stop, sleep=sleep,
             wait=wait_exponential(multiplier=RESEND_WAIT_S, max=RESEND_WAIT_MAX_S),
             retry_error_callback=lambda rs: None)(once)
    if not left.empty:
        log.error("%d bars of %d tickers still undelivered after %d publishes", len(left), left["ticker"].nunique(),
                  RESEND_ATTEMPTS)
    return left


def deliver(pub: Sink, piece: pd.DataFrame, source: str, now: float | None = None, *,
            sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """Publish ``piece``, wait for all its reports and re-send what failed (see the module doc)."""
    if piece.empty:
        return Delivery(0, piece, True)
    pub.take_failures()
    sent = pub.publish_frame(piece, source, now)
    complete = pub.last_complete
    if drain(pub) > 0:
        if not pub.stop_requested.is_set():
            raise DeliveryFailed(f"delivery reports still outstanding after {DRAIN_MAX_S:.0f} s")
        return Delivery(sent, piece.iloc[:0], False)
    failures = pub.take_failures()
    if complete and pub.unhealed:  # bars that failed before (an earlier piece or poll) and arrived now
        pub.heal(_keys(rows_of(piece, pub.unhealed)) - set(failures))
    failed = resend(pub, piece, failures, source, now, sleep=sleep)
    return Delivery(sent, failed, complete)
