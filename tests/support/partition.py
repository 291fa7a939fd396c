"""Driving the inference job's partition function (:func:`streams.partition.infer_partition`) without Spark:
window-ready events as the Spark job hands them over, stand-ins for its accumulators, a job configuration
on the test's namespace, and the forecasts a run published.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from minutecast.schemas import Forecast, WindowReady
from minutecast.settings import RedisSettings
from minutecast.topics import Topics
from streams.partition import JobConf, infer_partition
from tests.support.inference import MARKET

Row = tuple[str, str, str]  # (topic, key, value) as the job's Kafka sink gets it


def events_frame(items: Sequence[WindowReady | bytes]) -> pd.DataFrame:
    """Window-ready events as the Spark job hands them to the partition function (offsets in list order)."""
    recs = []
    for off, item in enumerate(items):
        raw = item if isinstance(item, bytes) else item.to_json()
        try:
            d = json.loads(raw)
        except ValueError:
            d = {}
        recs.append({"key": d.get("ticker"), "value": raw.decode(errors="replace"), "partition": 0, "offset": off,
                     "v": d.get("v"), "minute": d.get("minute"), "checksum": d.get("checksum"),
                     "published_at": d.get("published_at"), "ready_at": d.get("ready_at"), "ticker": d.get("ticker")})
    return pd.DataFrame(recs)


class Tally:
    """Stands in for Spark accumulators (same ``add`` interface)."""

    def __init__(self, zero: Any) -> None:
        self.value = zero

    def add(self, x: Any) -> None:
        if isinstance(self.value, dict):
            for k, v in x.items():
                self.value[k] = self.value.get(k, 0) + v
        else:
            self.value.extend(x)


def job_conf(ns: str, rs: RedisSettings, models_dir: Path, history_len: int = 120) -> JobConf:
    t = Topics(ns)
    return JobConf(namespace=ns, models_dir=str(models_dir), history_len=history_len, redis=rs,
                   forecasts_topic=t.forecasts, deadletter_topic=t.deadletter, ready_topic=t.ready,
                   market_ticker=MARKET)


def run_partition(conf: JobConf, items: Sequence[WindowReady | bytes]) -> tuple[list[Row], dict[str, float]]:
    """One partition of ``items``: (the rows for the Kafka sink, the counters it reported)."""
    stats, lat = Tally({}), Tally([])
    out = list(infer_partition(conf, stats, lat, iter([events_frame(items)])))
    rows = [(str(r[0]), str(r[1]), str(r[2])) for df in out for r in df.itertuples(index=False)]
    return rows, stats.value


def forecast_rows(rows: list[Row], topics: Topics) -> list[Row]:
    return [r for r in rows if r[0] == topics.forecasts]


def forecasts_of(rows: list[Row], topics: Topics) -> dict[str, Forecast]:
    return {r[1]: Forecast.from_json(r[2]) for r in forecast_rows(rows, topics)}
