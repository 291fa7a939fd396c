"""The Kafka publisher every source uses: idempotent confluent-kafka producer, counted deliveries.

* key = ticker (so a ticker's bars stay in one partition, in order), value = Bar JSON.
* Every delivery report is counted (``delivered`` / ``failed``); :meth:`Publisher.close` flushes and
  counts what is still undelivered as failed, so the caller's exit code can say so. A failed report also
  records its (ticker, minute) in :attr:`Publisher.failures`, so :mod:`producers.delivery` can re-send
  exactly those bars (``resent``; ``recovered`` counts the failures a re-send made good).
* Invalid bars go to the dead-letter topic as :class:`minutecast.schemas.DeadLetter` records.
* SIGINT/SIGTERM (after :meth:`Publisher.install_signal_handlers`) only set a stop flag: sources
  finish the message they are on, then the CLI flushes and prints the counts.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from typing import Any

import pandas as pd
from confluent_kafka import KafkaError, Message

from minutecast import dependency
from minutecast.kafka import ensure_topics, make_producer, wait_for_kafka
from minutecast.schemas import DeadLetter
from minutecast.settings import ProducerSettings
from minutecast.topics import Topics
from producers.bars import check, encode, stamp_suffix

log = logging.getLogger(__name__)
MAX_FAILURES = 1_000_000  # failure records kept until taken (bounded memory for sources that never take them)


@dataclass
class Stats:
    sent: int = 0  # bars handed to the producer
    delivered: int = 0  # bars the broker acknowledged (acks=all)
    failed: int = 0  # bars and dead letters whose delivery failed or never completed
    dead_letters: int = 0  # invalid bars sent to the dead-letter topic
    nan_dropped: int = 0  # NaN rows (no trades that minute) counted and dropped
    duplicates_dropped: int = 0  # exact repeats of a (ticker, minute), dropped
    resent: int = 0  # bars published again after a failed delivery (counted in ``sent`` too)
    recovered: int = 0  # failed deliveries whose re-send the broker acknowledged

    def add(self, other: Stats | dict[str, int]) -> Stats:
        d = other if isinstance(other, dict) else asdict(other)
        for k, v in d.items():
            setattr(self, k, getattr(self, k) + int(v))
        return self

    def line(self) -> str:
        return ("sent={sent} delivered={delivered} failed={failed} dead_letters={dead_letters} "
                "nan_dropped={nan_dropped} duplicates_dropped={duplicates_dropped} resent={resent} "
                "recovered={recovered}").format(**asdict(self))

    @property
    def ok(self) -> bool:
        """Every bar reached the broker: each failed delivery was made good by a re-send, and every bar sent has
        its report (``failed`` also counts dead letters, which ``sent`` does not)."""
        return self.failed == self.recovered and self.delivered + self.failed >= self.sent


class Publisher:
    """Publishes bar frames (or pre-encoded bars) to ``Topics(namespace).bars``."""

    def __init__(self, settings: ProducerSettings | None = None, *, topic: str | None = None,
                 create_topics: bool = True, **overrides: Any) -> None:
        self.s = settings or ProducerSettings()
        self.topics = Topics(self.s.namespace)
        self.topic = topic or self.topics.bars
        ks = self.s.kafka
        # Fail fast and clearly when no broker answers (ServiceUnavailable -> CLI exit code 1).
        wait_for_kafka(ks, self.s.connect_timeout_s)
        if create_topics:
            wanted = {self.topic, self.topics.deadletter}
            ensure_topics(ks, [t for t in self.s.topic_specs() if t.name in wanted])
        conf = {"linger.ms": self.s.linger_ms, "batch.size": self.s.batch_bytes,
                "compression.type": self.s.compression} | overrides
        self.producer = make_producer(ks, **conf)
        self.stats = Stats()
        # (ticker, minute) of each failed delivery report not yet taken (:meth:`take_failures`), at most
        # MAX_FAILURES of them (a source that never takes them keeps only the counts).
        self.failures: list[tuple[str, int]] = []
        # Failure reports per (ticker, minute) until a later delivery of that bar is acknowledged (:meth:`heal`).
        self.unhealed: Counter[tuple[str, int]] = Counter()
        self._errors_logged = 0
        self.stop_requested = threading.Event()
        self.last_complete = True  # False when the last publish call stopped early (stop requested)

    # -- delivery reports (run inside poll/flush, on the calling thread) --
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.delivered += 1
            if not dependency.is_up("kafka"):  # acknowledged again after the broker was away
                dependency.mark_up("kafka")
            return
        self._failed(err, msg, _bar_minute(msg.value()))

    def _on_dead_letter(self, minute: int | None, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed(err, msg, minute)

    def _failed(self, err: KafkaError, msg: Message, minute: int | None) -> None:
        self.stats.failed += 1
        key = msg.key()
        if key is not None and minute is not None:
            bar = (key.decode(errors="replace"), minute)
            if len(self.failures) < MAX_FAILURES:
                self.failures.append(bar)
            if len(self.unhealed) < MAX_FAILURES or bar in self.unhealed:
                self.unhealed[bar] += 1
        if self._errors_logged < 10:
            self._errors_logged += 1
            log.error("delivery failed (%s): %s", msg.topic(), err)

    # -- publishing --
    def publish_encoded(self, keys: Sequence[bytes], bodies: Sequence[bytes]) -> int:
        """Produce pre-encoded bars (see :func:`producers.bars.encode`). Returns how many were sent;
        fewer than given only when a stop was requested."""
        produce = self.producer.produce
        poll = self.producer.poll
        cb = self._on_delivery
        topic = self.topic
        every = max(1, self.s.poll_every)
        suffix = stamp_suffix(time.time())
        n = 0
        for key, body in zip(keys, bodies, strict=True):
            value = body + suffix
            while True:
                try:
                    produce(topic, value, key, on_delivery=cb)
                    break
                except BufferError:  # local queue full: serve delivery reports, which frees it
                    poll(0.05)
            n += 1
            if n % every == 0:
                poll(0)
                suffix = stamp_suffix(time.time())
                if self.stop_requested.is_set():
                    break
        poll(0)
        self.stats.sent += n
        self.last_complete = n == len(keys)
        return n

    def publish_frame(self, frame: pd.DataFrame, source: str, now: float | None = None) -> int:
        """Validate, dead-letter and publish one bar frame (rows already in the order to send)."""
        checked = check(frame, source, now)
        self.stats.nan_dropped += checked.nan_rows
        self.stats.duplicates_dropped += checked.duplicates
        for r in checked.rejected:
            self.dead_letter(DeadLetter.of(r.error, r.payload, "producer", topic=self.topic, key=r.key),
                             minute=_row_minute(r.payload))
        keys, bodies = encode(checked.valid, source)
        return self.publish_encoded(keys, bodies)

    def dead_letter(self, dl: DeadLetter, minute: int | None = None) -> None:
        """Send one dead letter; ``minute`` (of the rejected row) lets a failed delivery be re-sent."""
        value = dl.to_json()
        key = dl.key.encode() if dl.key else None
        cb = partial(self._on_dead_letter, minute)
        while True:
            try:
                self.producer.produce(self.topics.deadletter, value, key, on_delivery=cb)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.stats.dead_letters += 1

    def take_failures(self) -> list[tuple[str, int]]:
        """The (ticker, minute) of the failed deliveries reported since the last call (served reports only)."""
        taken, self.failures = self.failures, []
        return taken

    def note_resent(self, n: int) -> None:
        """``n`` bars were published again after a failed delivery (already counted in ``sent``)."""
        self.stats.resent += n

    def heal(self, bars: Iterable[tuple[str, int]]) -> None:
        """These bars were delivered after all: their earlier failure reports count as ``recovered``."""
        for bar in bars:
            self.stats.recovered += self.unhealed.pop(bar, 0)

    def flush(self, timeout_s: float | None = None) -> int:
        """Wait for outstanding deliveries; returns how many are still in flight."""
        return int(self.producer.flush(self.s.flush_timeout_s if timeout_s is None else timeout_s))

    def close(self) -> Stats:
        """Flush; anything still undelivered after ``flush_timeout_s`` counts as failed."""
        left = self.flush()
        if left:
            log.error("%d messages still undelivered after %.0f s", left, self.s.flush_timeout_s)
            self.stats.failed += left
        return self.stats

    def request_stop(self, *_: object) -> None:
        self.stop_requested.set()

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM -> stop producing, then the caller flushes and reports."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.request_stop)


def _bar_minute(value: bytes | None) -> int | None:
    """The minute of an encoded bar (its ``time``), None when it cannot be read."""
    try:
        return int(datetime.fromisoformat(json.loads(value or b"")["time"]).timestamp())
    except (ValueError, KeyError, TypeError):
        return None


def _row_minute(payload: bytes) -> int | None:
    """The minute of a rejected row's payload (see :func:`producers.bars.check`), None when not a number."""
    try:
        return int(json.loads(payload)["minute"])
    except (ValueError, KeyError, TypeError):
        return None
