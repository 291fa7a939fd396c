"""`minutecast evaluate --bars DIR --json` on real recorded bars (shared data, two tickers) without a model:
the report of what serving publishes then (persistence + the calibrated baseline with online calibration),
every top-level figure the issue names, and the files. A fresh MINUTECAST_HOME per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FILES = ("AAPL.csv.gz", "SPY.csv.gz")
TOP_LEVEL = ("coverage_80", "coverage_90", "interval_score_80", "baseline_interval_score_80", "interval_score_90",
             "baseline_interval_score_90", "persistence_rmse", "up_fraction", "ready_share_regular_hours",
             "ready_share_first_hour", "interval_score_gain_80", "har_interval_score_80",
             "interval_score_gain_vs_har_80")


@pytest.mark.integration
def test_evaluate_json_without_a_model(tmp_path: Path, shared_data: Path) -> None:
    bars = tmp_path / "bars"
    bars.mkdir()
    for f in FILES:
        (bars / f).symlink_to(shared_data / f)
    env = os.environ | {"MINUTECAST_HOME": str(tmp_path / "home"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "minutecast.cli", "evaluate", "--bars", str(bars), "--json"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["version"] == "persistence" and out["served"] == "baseline_online" and out["tickers"] == 2
    for key in TOP_LEVEL:
        assert isinstance(out[key], float), key
    assert out["model_rmse"] is None and out["dm_pvalue"] is None  # no model: nothing to test
    assert out["baseline_scale_source"].startswith("fitted here on the training dates")
    assert out["har"]["spec"].startswith("har-v1") and "har_online" in out["intervals"]  # fitted there too
    assert out["test_dates"]["count"] >= 1 and not out["test_dates"]["all_dates"]
    # the online calibration keeps the served 80% interval near its level on real data
    assert abs(out["coverage_80"] - 0.8) < 0.05 and out["interval_score_80"] > 0
    assert 0.9 < out["ready_share_regular_hours"] <= 1.0  # real bars of two liquid tickers
    d = Path(out["report_dir"])
    assert (d / "report.md").exists() and (d / "reliability.png").exists()
    assert {f"fan_{t}.png" for t in ("AAPL", "SPY")} <= {p.name for p in d.glob("fan_*.png")}
