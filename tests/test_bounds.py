"""Memory bounds (#18): Redis runs with a maxmemory and noeviction (a write past it fails loudly instead of
dropping state), `status` shows the memory share and alerts from 80%, and every forecast key carries a TTL
renewed by each write (a delisted ticker's keys vanish)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from infra.services import LocalRedis
from minutecast.forecast_store import ForecastStore
from minutecast.intervals import OnlineScale
from minutecast.keys import Keys
from minutecast.schemas import Forecast
from minutecast.settings import InfraSettings
from ops.status import MEMORY_ALERT, healthy, redis_memory, render

pytestmark = pytest.mark.integration


def test_local_redis_config_has_maxmemory_and_noeviction(tmp_path: Any) -> None:
    s = InfraSettings(home=tmp_path, redis_maxmemory="256mb")
    r = LocalRedis(s)
    r._write_config()
    lines = r.config.read_text().splitlines()
    assert "maxmemory 256mb" in lines and "maxmemory-policy noeviction" in lines


def test_status_reports_memory_and_alerts_past_the_share(redis_client: Any) -> None:
    mem = redis_memory(redis_client)  # the real server: its own numbers
    assert mem["used_bytes"] > 0 and mem["policy"] == "noeviction"

    class Info:  # pure logic of the verdict on given numbers
        def __init__(self, used: int, limit: int) -> None:
            self.d = {"used_memory": used, "maxmemory": limit, "maxmemory_policy": "noeviction"}

        def info(self, section: str) -> dict[str, Any]:
            return self.d

    base = {"namespace": "ns", "services": {"redis": {"up": True}}, "model_version": "x"}
    low, high = redis_memory(Info(10, 100)), redis_memory(Info(int(MEMORY_ALERT * 100), 100))
    unlimited = redis_memory(Info(10, 0))
    assert not low["alert"] and high["alert"] and not unlimited["alert"] and unlimited["share"] is None
    assert healthy(base | {"redis_memory": low}) and not healthy(base | {"redis_memory": high})
    assert "MEMORY" in render(base | {"redis_memory": high})
    assert "no limit" in render(base | {"redis_memory": unlimited})


def test_forecast_keys_expire_and_each_write_renews_them(redis_client: Any, namespace: str) -> None:
    keys = Keys(namespace)
    store = ForecastStore(keys, history_len=120, ttl_s=600)
    fc, meta = keys.forecast("AAPL"), keys.forecast_meta("AAPL")
    f = Forecast("AAPL", 1_800_000_000, 5, 101.5, 101.0, "persistence", "persistence", None, 1_800_000_000.5,
                 1_800_000_001.25)
    store.write_now(redis_client, [(f, None)], {"AAPL": OnlineScale(0.1, 0.2, 1_800_000_000)})
    assert all(0 < redis_client.ttl(k) <= 600 for k in (fc, meta))
    redis_client.expire(fc, 5)
    g = dataclasses.replace(f, as_of=1_800_000_060)
    store.write_now(redis_client, [(g, None)], {"AAPL": OnlineScale(0.1, 0.2, 1_800_000_060)})
    assert redis_client.ttl(fc) > 5 and store.latest_now(redis_client, "AAPL") == g.to_json()
