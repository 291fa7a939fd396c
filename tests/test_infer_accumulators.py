"""The Spark driver's per-batch counting (pure logic, no JVM): counts filed under the micro-batch id merge
batch by batch, and the listener takes one finished batch out while the next one's tasks keep adding."""

from __future__ import annotations

import threading
from typing import Any


class Acc:
    """The part of a driver-side PySpark Accumulator these use: ``_value`` merged by its param."""

    def __init__(self, param: Any) -> None:
        self.param, self._value = param, param.zero({})

    def add(self, term: object) -> None:
        self._value = self.param.addInPlace(self._value, term)  # type: ignore[arg-type]


def test_counts_are_kept_per_batch_and_taken_once() -> None:
    from streams.infer import BatchDictSum, BatchListConcat, _Tagged, take  # pyspark: imported where used

    stats, lat = Acc(BatchDictSum()), Acc(BatchListConcat())
    _Tagged(stats, 7).add({"events": 3.0, "forecasts": 2.0})
    _Tagged(stats, 7).add({"events": 1.0})  # another partition of batch 7
    _Tagged(stats, 8).add({"events": 5.0})
    _Tagged(lat, 7).add([0.5])
    _Tagged(lat, 7).add([0.7, 0.9])
    assert take(stats, 7, {}) == {"events": 4.0, "forecasts": 2.0}
    assert take(lat, 7, []) == [0.5, 0.7, 0.9]
    assert take(stats, 7, {}) == {} and take(stats, 8, {}) == {"events": 5.0}


def test_taking_a_batch_while_another_batch_adds_loses_nothing() -> None:
    from streams.infer import BatchDictSum, _Tagged, take

    stats = Acc(BatchDictSum())
    n = 20_000

    def adder() -> None:
        for _ in range(n):
            _Tagged(stats, 2).add({"events": 1.0})

    for _ in range(n // 4):
        _Tagged(stats, 1).add({"events": 1.0})
    t = threading.Thread(target=adder)
    t.start()
    got = take(stats, 1, {})
    t.join()
    assert got == {"events": float(n // 4)} and take(stats, 2, {}) == {"events": float(n)}
    assert stats._value == {}
