"""Leave-tickers-out validation (training/holdout.py): folds by a stable hash, the pooled figures, and one real
run on recorded bars: every fold's model trained without its tickers and scored on them on the validation
dates, with baselines fitted on the training tickers only. A fresh MINUTECAST_HOME per test.

    ~/.cache/minutecast/venv/bin/python -m pytest tests/test_training_holdout.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training import holdout as H

TICKERS = ("AAPL", "AMD", "INTC", "MSFT", "SPY")


def test_folds_hold_every_ticker_but_the_market_once_in_folds_of_even_size() -> None:
    tickers = ["AAPL", "AMD", "INTC", "MSFT", "NVDA", "SPY", "TSLA", "UBER"]
    fs = H.folds(tickers, 3, "SPY")
    assert sorted(t for f in fs for t in f) == sorted(set(tickers) - {"SPY"})
    assert sorted(len(f) for f in fs) == [2, 2, 3]
    assert H.folds(list(reversed(tickers)), 3, "SPY") == fs  # the same on every call and order (no seed, no hash())
    assert len(H.folds(["AAPL", "SPY"], 4, "SPY")) == 1  # empty folds dropped


def test_pooled_figures_weigh_the_folds_by_their_samples() -> None:
    def rep(n: int, cov: float, is80: float, har: float) -> dict:
        return {"samples": n, "coverage_80": cov, "coverage_90": cov + 0.1, "interval_score_80": is80,
                "baseline_interval_score_80": is80 * 1.1, "har_interval_score_80": har,
                "per_ticker": [{"ticker": "X", "samples": n, "coverage_80": cov}]}

    p = H.pooled([rep(100, 0.78, 10.0, 10.5), rep(300, 0.82, 20.0, 20.0)])
    assert p["samples"] == 400 and p["tickers"] == 2
    assert p["coverage_80"] == pytest.approx(0.81) and p["interval_score_80"] == pytest.approx(17.5)
    assert p["interval_score_gain_vs_har_80"] == pytest.approx(1 - 17.5 / 17.625)
    assert p["worst_ticker_coverage_80_deviation"] == pytest.approx(0.02)


@pytest.mark.tensorflow
def test_a_holdout_run_scores_each_fold_on_tickers_its_model_never_saw(tmp_path: Path, shared_data: Path) -> None:
    bars = tmp_path / "bars"
    bars.mkdir()
    for t in TICKERS:
        (bars / f"{t}.csv.gz").symlink_to(shared_data / f"{t}.csv.gz")
    env = os.environ | {"MINUTECAST_HOME": str(tmp_path / "home"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "training.holdout", "--bars", str(bars), "--folds", "2",
                           "--preset", "tiny", "--max-samples", "3000", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "holdout.json").read_text())
    assert len(doc["folds"]) == 2
    held = [t for f in doc["folds"] for t in f["held_out"]]
    assert sorted(held) == sorted(set(TICKERS) - {"SPY"})  # every ticker held out once; the market never
    for f in doc["folds"]:
        assert not set(f["held_out"]) & set(f["trained_on"]) and "SPY" in f["trained_on"]
        assert sorted(row["ticker"] for row in f["per_ticker"]) == sorted(f["held_out"])  # scored: the unseen ones
        assert f["test_dates"]["val_dates"] and f["served"] == "model" and f["samples"] > 1000
        t = f["on_test_dates"]  # the same model and tickers on the test dates, after the validation dates
        assert not t["test_dates"]["val_dates"] and t["test_dates"]["first"] > f["test_dates"]["last"]
        assert sorted(row["ticker"] for row in t["per_ticker"]) == sorted(f["held_out"]) and t["samples"] > 500
    p = doc["pooled"]
    assert p["samples"] == sum(f["samples"] for f in doc["folds"]) and 0.7 < p["coverage_80"] < 0.9
    assert doc["pooled_test_dates"]["samples"] == sum(f["on_test_dates"]["samples"] for f in doc["folds"])
    assert (tmp_path / "out" / "holdout.md").read_text().count("| **pooled** |") == 2
    assert not (tmp_path / "home" / "models").exists()  # the user's registry untouched: each fold had its own
