"""A producer whose chosen deliveries fail, for tests of the producers' re-send and watermark logic against the
real broker (every other bar goes through the real producer)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaError


class Msg:
    """A message as a delivery report hands it over."""

    def __init__(self, topic: str, key: bytes, value: bytes) -> None:
        self._t, self._k, self._v = topic, key, value

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes:
        return self._k

    def value(self) -> bytes:
        return self._v


def minute_of(value: bytes) -> int:
    return int(datetime.fromisoformat(json.loads(value)["time"]).timestamp())


class FlakyProducer:
    """The real producer, except that the first ``fail[(ticker, minute)]`` publishes of a bar are not produced
    and reported failed (``_MSG_TIMED_OUT``) at the next poll or flush."""

    def __init__(self, real: Any, fail: dict[tuple[str, int], int]) -> None:
        self.real, self.fail, self.failed = real, dict(fail), 0
        self._reports: list[tuple[Callable[..., None], Msg]] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Callable[..., None]) -> None:
        k = (key.decode(), minute_of(value)) if topic.endswith("bars.1m") else None
        if k is not None and self.fail.get(k, 0) > 0:
            self.fail[k] -= 1
            self.failed += 1
            self._reports.append((on_delivery, Msg(topic, key, value)))
            return
        self.real.produce(topic, value, key, on_delivery=on_delivery)

    def _report(self) -> None:
        reports, self._reports = self._reports, []
        for cb, msg in reports:
            cb(KafkaError(KafkaError._MSG_TIMED_OUT), msg)

    def poll(self, timeout: float = 0) -> int:
        n = int(self.real.poll(timeout))
        self._report()
        return n

    def flush(self, timeout: float = -1) -> int:
        left = int(self.real.flush(timeout))
        self._report()
        return left
