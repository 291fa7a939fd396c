"""`minutecast run` end to end, driven as a user would: subprocesses against the real Kafka, Redis and
local Spark, on a slice of the real recorded bars; then `forecast`, `watch` and `status` read the result."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from minutecast.settings import InfraSettings
from minutecast.window import regular_hours
from tests.support.cli import run_cli
from tests.support.recorded import regular_hours_dir

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

TICKERS = ("AAPL", "MSFT", "NVDA")
DAY = "2025-12-01"


cli = partial(run_cli, timeout=120, check=True)


@pytest.fixture
def replay_dir(shared_data: Path, tmp_path: Path) -> Path:
    """Regular hours of one trading day of three tickers, in the recorded files' own layout (the sparse
    post-market minutes at the end of a day leave no window ready; see the window policy)."""
    return regular_hours_dir(shared_data, tmp_path / "bars", TICKERS, [DAY])


def test_run_then_lookup_watch_and_status(services: InfraSettings, namespace: str, replay_dir: Path,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          redis_client: object) -> None:
    monkeypatch.setenv("MINUTECAST_CHECKPOINT_DIR", str(tmp_path / "checkpoint"))
    monkeypatch.setenv("MINUTECAST_METRICS_PORT", "0")  # no clash with a pipeline running beside the tests
    monkeypatch.setenv("MINUTECAST_WEB_PORT", "0")
    # --live-sessions 0: the files once, unshifted (the as-if-live default is tests/test_web_browser.py's).
    run = cli("run", "--source", "replay", "--replay-data", str(replay_dir), "--no-train", "--live-sessions", "0",
              "--no-serve",
              "--until-forecasts", str(len(TICKERS)), "--for", "420", "--summary-every", "3", timeout=600)
    assert "replay" in run.stdout
    assert f"{len(TICKERS)} tickers have forecasts; stopping as asked" in run.stdout, run.stdout[-3000:]
    assert "stopped;" in run.stdout

    shown = cli("forecast", *TICKERS, "--json")
    forecasts = [json.loads(line) for line in shown.stdout.splitlines()]
    assert {f["ticker"] for f in forecasts} == set(TICKERS)
    for f in forecasts:
        # The replay shifts the recorded day by whole days towards now (producers/live.py): the New York
        # clock time stays, so the forecast's as-of minute is inside the replayed regular hours.
        assert regular_hours(np.array([f["as_of"]]))[0] and f["horizon_min"] == 5
        assert f["predicted_close"] > 0 and f["model_version"]
        # v2: the median and its 80% / 90% intervals (the calibrated baseline until a model is promoted)
        assert f["v"] == 2 and f["q05"] <= f["q10"] <= f["q50"] == f["predicted_close"] <= f["q90"] <= f["q95"]
        assert f["interval_kind"] in ("lstm", "baseline") and f["sigma"] >= 0
    table = cli("forecast", "AAPL")
    assert table.stdout.startswith("AAPL ") and "no forecast" not in table.stdout
    assert " ET: " in table.stdout and ", 80% " in table.stdout and ", 90% " in table.stdout

    watched = cli("watch", "--from-beginning", "--plain", "--max-seconds", "15")
    assert {line.split()[0] for line in watched.stdout.splitlines()} >= set(TICKERS)

    status = cli("status", "--json", "--sample-s", "0.2", check=False)
    info = json.loads(status.stdout.splitlines()[-1])
    assert info["services"]["kafka"]["up"] and info["services"]["redis"]["up"]
    assert info["bars_total"] > 0 and info["tickers_with_forecast"] == len(TICKERS)
    assert info["windows"] == len(TICKERS)

    missing = cli("forecast", "ZZZZ", check=False)
    assert missing.returncode == 1 and "no forecast" in missing.stdout
