"""A tiny 2-rank Horovod run (Gloo, CPU) on real bars published into this test's bar topic on the real Kafka.

`minutecast train --np 2` snapshots the topic's end offsets, starts horovodrun -np 2, each rank reads its
share of the partitions, and rank 0 saves a registry version, writes the report and result.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from minutecast.kafka import make_producer
from minutecast.registry import Registry
from minutecast.schemas import Bar
from minutecast.settings import KafkaSettings
from minutecast.topics import Topics
from minutecast.window import session_ids
from training.gate import gate

pytestmark = [pytest.mark.integration, pytest.mark.horovod]

TICKERS = ("AAPL", "MSFT", "SPY")  # one per partition of the 3-partition test topic: both ranks get data
DAYS = 4  # trading dates: 2 train, 1 validation, 1 test


def real_bars(shared_data: Path, ticker: str, days: int) -> list[Bar]:
    """The first ``days`` New York trading dates of a ticker's recorded bars, as Bar messages."""
    df = pd.read_csv(shared_data / f"{ticker}.csv.gz").dropna()
    minutes = (pd.to_datetime(df["Datetime"], utc=True).astype("int64") // 10**9).to_numpy()
    day = session_ids(minutes)
    keep = day < np.unique(day)[days]
    return [Bar(ticker, int(m), float(o), float(h), float(lo), float(c), float(v), "test")
            for m, o, h, lo, c, v in zip(minutes[keep], df["Open"][keep], df["High"][keep], df["Low"][keep],
                                         df["Close"][keep], df["Volume"][keep], strict=True)]


def publish(kafka: KafkaSettings, topic: str, shared_data: Path) -> dict[int, int]:
    """Publish the test bars, ticker i into partition i; returns messages per partition."""
    producer = make_producer(kafka)
    counts: dict[int, int] = {}
    for part, ticker in enumerate(TICKERS):
        for bar in real_bars(shared_data, ticker, DAYS):
            producer.produce(topic, key=ticker, value=bar.to_json(), partition=part)
            counts[part] = counts.get(part, 0) + 1
        producer.poll(0)
    assert producer.flush(60) == 0
    return counts


def test_two_rank_run_produces_model_report_and_registry_entry(
        kafka: KafkaSettings, topics: Topics, shared_data: Path, tmp_path: Path) -> None:
    counts = publish(kafka, topics.bars, shared_data)
    first = real_bars(shared_data, TICKERS[0], 1)[10]  # a later conflicting duplicate: serving dead-letters it
    producer = make_producer(kafka)
    producer.produce(topics.bars, key=first.ticker, value=Bar(first.ticker, first.minute, first.open, first.high * 2,
                     first.low, first.close * 2, first.volume, "test").to_json(), partition=0)
    assert producer.flush(30) == 0
    counts[0] += 1
    home = tmp_path / "home"
    env = os.environ | {"MINUTECAST_HOME": str(home), "MINUTECAST_NAMESPACE": topics.namespace,
                        "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "minutecast.cli", "train", "--np", "2", "--preset", "tiny", "--epochs", "2",
           "--threads", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    # Both ranks ran (Horovod size 2) and rank 0 alone wrote the outputs.
    assert "2 rank(s)" in proc.stdout + proc.stderr
    registry = Registry(home / "models")
    version = result["version"]
    assert registry.versions() == [version]
    served = registry.load(version)
    meta = served.meta
    assert meta["config"]["ranks"] == 2 and meta["config"]["preset"]["name"] == "tiny"
    assert meta["data"]["topic"] == topics.bars
    assert {int(p): o for p, o in meta["data"]["end_offsets"].items()} == counts  # read up to the snapshot
    assert meta["data"]["samples"]["train"] > 1000 and meta["data"]["samples"]["test"] > 300
    assert meta["data"]["tickers"] == len(TICKERS)  # test samples gathered from both ranks
    assert (meta["data"]["conflicting_duplicates"], meta["data"]["duplicates"]) == (1, 0)  # left out, reported

    report = json.loads((home / "reports" / version / "report.json").read_text())
    assert report["tickers"] == len(TICKERS)
    assert report["model_rmse"] > 0 and report["persistence_rmse"] > 0
    assert 0 < report["coverage_80"] < report["coverage_90"] <= 1 and report["baseline_interval_score_80"] > 0
    assert (home / "reports" / "latest" / "report.md").exists()
    assert list((home / "reports" / version).glob("*.png"))
    # The calibrated baseline's scale was fitted on the training dates and saved for serving.
    assert registry.baseline_scale() == tuple(meta["baseline_scale"]) != (1.0, 1.0)
    # The gate decided, and CURRENT follows its decision.
    assert result["gate"]["passed"] == gate(report)[0]
    assert (registry.current_version() == version) == result["promoted"]
    # A checkpoint of every kept epoch holds the resolved config.
    ckpts = sorted((home / "checkpoints" / "train").glob("*/epoch-*/meta.json"))
    assert ckpts and json.loads(ckpts[-1].read_text())["config"]["ranks"] == 2
