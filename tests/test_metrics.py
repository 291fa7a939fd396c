"""Every service's Prometheus endpoint comes from minutecast.metrics.serve (host/port from Settings)."""

from __future__ import annotations

import urllib.request
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Counter

from minutecast.metrics import serve
from producers.metrics import registry_for
from producers.publisher import Stats
from tests.support.services import free_port
from training.cli import _TrainerMetrics


def test_serve_exposes_registry_and_zero_turns_it_off() -> None:
    r = CollectorRegistry()
    Counter("minutecast_test_things", "things", registry=r).inc(3)
    assert serve("127.0.0.1", 0, r) is False
    port = free_port()
    assert serve("127.0.0.1", port, r) is True
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()  # noqa: S310
    assert "minutecast_test_things_total 3.0" in body
    assert serve("127.0.0.1", port, r) is False  # taken port: logged, never fatal


def test_trainer_metrics_follow_results() -> None:
    m = _TrainerMetrics()
    m.observe({"promoted": True, "version": "v1", "model_rmse": 0.45, "persistence_rmse": 0.46}, 12.0)
    m.observe({"promoted": False, "version": "v2", "model_rmse": 0.47, "persistence_rmse": 0.46}, 10.0)
    get = m.registry.get_sample_value
    assert get("minutecast_train_runs_total", {"outcome": "promoted"}) == 1
    assert get("minutecast_train_runs_total", {"outcome": "refused"}) == 1
    assert get("minutecast_model_info", {"version": "v1"}) == 1
    assert get("minutecast_train_last_test_rmse", {"forecaster": "model"}) == 0.47


def test_producer_metrics_read_the_publisher_counters() -> None:
    pub = SimpleNamespace(stats=Stats(sent=10, delivered=9, failed=1, dead_letters=2))
    r = registry_for(pub)
    assert r.get_sample_value("minutecast_producer_bars_total", {"outcome": "delivered"}) == 9
    pub.stats.delivered += 1  # read live: no copy
    assert r.get_sample_value("minutecast_producer_bars_total", {"outcome": "delivered"}) == 10
    assert r.get_sample_value("minutecast_producer_bars_total", {"outcome": "dead_letters"}) == 2
