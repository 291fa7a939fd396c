"""Prometheus metrics of a producer process, read live from its publisher's counters (no hot-path cost)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class PublisherCollector(Collector):
    """``minutecast_producer_bars_total{outcome=...}`` from :class:`producers.publisher.Stats`, plus the
    age of the process."""

    def __init__(self, publisher: Any) -> None:
        self.publisher = publisher
        self.started = time.time()

    def collect(self) -> Iterator[Any]:
        bars = CounterMetricFamily("minutecast_producer_bars", "bars by outcome (sent, delivered, failed, "
                                   "dead_letters, nan_dropped, duplicates_dropped)", labels=["outcome"])
        for outcome, value in asdict(self.publisher.stats).items():
            bars.add_metric([outcome], float(value))
        yield bars
        up = GaugeMetricFamily("minutecast_producer_started_timestamp", "epoch s the producer started")
        up.add_metric([], self.started)
        yield up


def registry_for(publisher: Any) -> CollectorRegistry:
    r = CollectorRegistry()
    r.register(PublisherCollector(publisher))
    return r
