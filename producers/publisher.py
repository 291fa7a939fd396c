"""The Kafka publisher every source uses: idempotent confluent-kafka producer, counted deliveries.

* key = ticker (so a ticker's bars stay in one partition, in order), value = Bar JSON.
* Every delivery report is counted (``delivered`` / ``failed``); :meth:`Publisher.close` flushes and
  counts what is still undelivered as failed, so the caller's exit code can say so.
* Invalid bars go to the dead-letter topic as :class:`minutecast.schemas.DeadLetter` records.
* SIGINT/SIGTERM (after :meth:`Publisher.install_signal_handlers`) only set a stop flag: sources
  finish the message they are on, then the CLI flushes and prints the counts.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from confluent_kafka import KafkaError, Message

from minutecast.kafka import ensure_topics, make_producer, wait_for_kafka
from minutecast.schemas import DeadLetter
from minutecast.settings import ProducerSettings
from minutecast.topics import Topics
from producers.bars import check, encode, stamp_suffix

log = logging.getLogger(__name__)


@dataclass
class Stats:
    sent: int = 0  # bars handed to the producer
    delivered: int = 0  # bars the broker acknowledged (acks=all)
    failed: int = 0  # bars and dead letters whose delivery failed or never completed
    dead_letters: int = 0  # invalid bars sent to the dead-letter topic
    nan_dropped: int = 0  # NaN rows (no trades that minute) counted and dropped
    duplicates_dropped: int = 0  # exact repeats of a (ticker, minute), dropped

    def add(self, other: Stats | dict[str, int]) -> Stats:
        d = other if isinstance(other, dict) else asdict(other)
        for k, v in d.items():
            setattr(self, k, getattr(self, k) + int(v))
        return self

    def line(self) -> str:
        return ("sent={sent} delivered={delivered} failed={failed} dead_letters={dead_letters} "
                "nan_dropped={nan_dropped} duplicates_dropped={duplicates_dropped}").format(**asdict(self))

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.delivered == self.sent


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
        self.failed_keys: set[bytes] = set()  # tickers with a failed delivery (the yfinance watermark skips them)
        self._errors_logged = 0
        self.stop_requested = threading.Event()
        self.last_complete = True  # False when the last publish call stopped early (stop requested)

    # -- delivery reports (run inside poll/flush, on the calling thread) --
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.delivered += 1
            return
        self._failed(err, msg)

    def _on_dead_letter(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed(err, msg)

    def _failed(self, err: KafkaError, msg: Message) -> None:
        self.stats.failed += 1
        key = msg.key()
        if key is not None:
            self.failed_keys.add(key)
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
            self.dead_letter(DeadLetter.of(r.error, r.payload, "producer", topic=self.topic, key=r.key))
        keys, bodies = encode(checked.valid, source)
        return self.publish_encoded(keys, bodies)

    def dead_letter(self, dl: DeadLetter) -> None:
        value = dl.to_json()
        key = dl.key.encode() if dl.key else None
        while True:
            try:
                self.producer.produce(self.topics.deadletter, value, key, on_delivery=self._on_dead_letter)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.stats.dead_letters += 1

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
