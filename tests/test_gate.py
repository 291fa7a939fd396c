"""The promotion gate's decisions (training.gate): each refusal with its reason, a pass, and apply_gate
leaving CURRENT alone on a refusal. Pure logic on report dicts shaped like training.evaluate.build_report's."""

from __future__ import annotations

from pathlib import Path

import pytest

from minutecast.registry import Registry
from training import gate as G


def good() -> dict:
    """A report the gate passes: beats the calibrated baseline, nominal coverage, RMSE ~ persistence."""
    return {"served": "model", "version": "v", "current_version": None, "interval_score_80": 30.0,
            "baseline_interval_score_80": 31.0, "coverage_80": 0.805, "coverage_90": 0.897,
            "model_rmse": 0.4575, "persistence_rmse": 0.4572, "dm_stat": 0.8, "dm_pvalue": 0.42,
            "dm_pvalue_worse": 0.21, "current_interval_score_80": None}


def test_a_good_model_passes() -> None:
    passed, reason = G.gate(good())
    assert passed and "30.000 bps < calibrated baseline 31.000" in reason and "no current model" in reason


@pytest.mark.parametrize(("change", "words"), [
    ({"served": "baseline_online", "interval_score_80": 31.0}, "no model forecasts"),
    ({"interval_score_80": None}, "no model forecasts"),
    ({"baseline_interval_score_80": None}, "no calibrated-baseline"),
    ({"interval_score_80": 31.0}, "does not beat the calibrated baseline"),  # a tie is not a win
    ({"interval_score_80": 31.5}, "does not beat the calibrated baseline"),
    ({"har_interval_score_80": 30.0}, "does not beat the HAR baseline's 30.000"),  # a tie is not a win
    ({"har_interval_score_80": 29.0}, "does not beat the HAR baseline's 29.000"),
    ({"coverage_80": 0.779}, "80% interval coverage 0.7790 is outside 0.80 +- 0.02"),
    ({"coverage_80": 0.8201}, "80% interval coverage"),
    ({"coverage_90": 0.921}, "90% interval coverage 0.9210 is outside 0.90 +- 0.02"),
    ({"coverage_90": None}, "90% interval coverage None"),
    ({"model_rmse": None}, "no point RMSE"),
    ({"model_rmse": 0.47, "dm_stat": 3.0, "dm_pvalue": 0.003, "dm_pvalue_worse": 0.0015},
     "significantly worse than persistence"),
    ({"current_interval_score_80": 29.5, "current_version": "old"}, "worse than current old's 29.500"),
])
def test_each_refusal_names_its_reason(change: dict, words: str) -> None:
    passed, reason = G.gate(good() | change)
    assert not passed and words in reason, reason


def test_a_model_beating_the_har_baseline_says_so() -> None:
    passed, reason = G.gate(good() | {"har_interval_score_80": 30.4})
    assert passed and "< calibrated baseline 31.000 bps and HAR 30.400 bps" in reason


def test_worse_rmse_without_significance_is_not_refused() -> None:
    """DM one-sided at 5%: a higher RMSE that the test cannot tell from noise does not block promotion."""
    assert G.gate(good() | {"model_rmse": 0.4580, "dm_pvalue_worse": 0.06})[0]
    assert not G.gate(good() | {"model_rmse": 0.4580, "dm_pvalue_worse": 0.049})[0]
    # significant, but in the model's favour (its RMSE is lower): passes
    assert G.gate(good() | {"model_rmse": 0.4500, "dm_stat": -3.0, "dm_pvalue_worse": 0.9987})[0]


def test_coverage_tolerance_edges() -> None:
    assert G.gate(good() | {"coverage_80": 0.8 - G.COVERAGE_TOL + 1e-9, "coverage_90": 0.9 + G.COVERAGE_TOL - 1e-9})[0]


def test_not_worse_than_current_passes() -> None:
    passed, reason = G.gate(good() | {"current_interval_score_80": 30.0, "current_version": "old"})
    assert passed and "not worse than current" in reason


def test_apply_gate_refusal_keeps_current(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    report = good() | {"coverage_80": 0.7}
    decision = G.apply_gate(reg, "20261201T000000Z-00000000", report)
    assert decision["promoted"] is False and report["gate"] == decision and "coverage" in decision["reason"]
    assert reg.current_version() is None
    assert G.load_current(reg) is None
