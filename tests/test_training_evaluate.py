"""Unit tests of the evaluation's scoring functions (hand-computed tiny arrays) and of the report on
synthetic samples built with minutecast.window (no data loader, no Kafka): the forecasters are consistent
with serving's online calibration, and the files are written. Pure logic: a fake model (a class with
``version`` and ``predict_log_quantiles``) stands in for the LSTM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from minutecast.intervals import PAIRS, calibrate_in_time_order, fit_baseline_scale, to_prices
from minutecast.window import (
    regular_hours,
    session_ids,
)
from tests.support.evaluation import FakeModel, session_minutes, synthetic
from training import evaluate as E
from training import scoring as S
from training.data import Samples


# -- scoring on hand-computed arrays -----------------------------------------------------------------------
def test_pinball_hand_computed() -> None:
    np.testing.assert_allclose(S.pinball(np.array([1.0, 2.0, 3.0]), np.full(3, 2.0), 0.1), [0.9, 0.0, 0.1])
    np.testing.assert_allclose(S.pinball(np.array([1.0, 3.0]), np.full(2, 2.0), 0.5), [0.5, 0.5])


def test_winkler_and_coverage_hand_computed() -> None:
    y = np.array([0.5, 2.0, -0.5, 1.0])
    lo, hi = np.zeros(4), np.ones(4)
    # width 1; outside by d costs 2/alpha * d = 10 d at the 80% level, 20 d at the 90% level
    np.testing.assert_allclose(S.winkler(y, lo, hi, 0.8), [1.0, 11.0, 6.0, 1.0])
    np.testing.assert_allclose(S.winkler(y, lo, hi, 0.9), [1.0, 21.0, 11.0, 1.0])
    np.testing.assert_array_equal(S.covered(y, lo, hi), [True, False, False, True])  # bounds included


def test_point_metrics_and_direction() -> None:
    last, actual = np.array([100.0, 100.0, 100.0]), np.array([102.0, 98.0, 100.0])
    m = S.point_metrics(np.array([101.0, 99.0, 100.0]), actual, last)
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3)) and m["mae"] == pytest.approx(2 / 3)
    assert m["rmse_bps"] == pytest.approx(100 * math.sqrt(2 / 3))
    assert m["directional_accuracy"] == 1.0  # both moves (the third did not move) called right
    assert S.point_metrics(last, actual, last)["directional_accuracy"] is None  # persistence calls no move
    assert S.up_fraction(actual, last) == 0.5


def test_diebold_mariano_known_cases() -> None:
    same = np.random.default_rng(0).random(100)
    dm = S.diebold_mariano(same, same)
    assert dm["stat"] == 0.0 and dm["pvalue"] == 1.0
    # d = [1, 2, 3, 4], lag 1: u = [-1.5, -.5, .5, 1.5]; sum u^2 = 5, sum u_t u_t+1 = 1.25, Bartlett weight
    # 1/2 -> long-run sum 6.25, var(mean) = 6.25 / 16, stat = 2.5 / 0.625 = 4
    dm = S.diebold_mariano(np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4), lag=1)
    assert dm["stat"] == pytest.approx(4.0)
    assert dm["pvalue"] == pytest.approx(math.erfc(4.0 / math.sqrt(2)))
    assert dm["pvalue_worse"] == pytest.approx(dm["pvalue"] / 2)
    rng = np.random.default_rng(1)
    e = rng.normal(size=2000)
    worse = S.diebold_mariano((e + 0.5) ** 2, e ** 2)  # a biased forecaster
    assert worse["stat"] > 5 and worse["pvalue"] < 1e-6 and worse["pvalue_worse"] < 1e-6
    better = S.diebold_mariano(e ** 2, (e + 0.5) ** 2)
    assert better["stat"] == pytest.approx(-worse["stat"]) and better["pvalue_worse"] > 0.999


def test_diebold_mariano_panel_does_not_count_copies_as_evidence() -> None:
    """Two tickers with identical loss differentials at the same minutes are one observation per minute."""
    rng = np.random.default_rng(2)
    d = rng.normal(0.1, 1.0, 500)
    one = S.diebold_mariano(d, np.zeros(500), times=np.arange(500))
    two = S.diebold_mariano(np.r_[d, d], np.zeros(1000), times=np.r_[np.arange(500), np.arange(500)])
    naive = S.diebold_mariano(np.r_[d, d], np.zeros(1000))  # ignoring the panel inflates the evidence
    assert two["stat"] == pytest.approx(one["stat"]) and abs(naive["stat"]) > abs(one["stat"]) * 1.3


def test_time_buckets_use_each_dates_close() -> None:
    day = session_minutes("2025-11-26")  # 09:30 .. 15:59
    early = session_minutes("2025-11-28")  # 09:30 .. 12:59
    picks = np.array([day[0], day[59], day[60], day[359], day[360], day[-1], early[179], early[180],
                      day[0] - 3600])
    np.testing.assert_array_equal(S.time_buckets(picks), [0, 0, 1, 1, 2, 2, 1, 2, -1])


def test_terciles_cut_at_the_samples_own_quantiles() -> None:
    idx, cuts = S.terciles(np.arange(9, dtype=float))
    np.testing.assert_array_equal(idx, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert cuts == pytest.approx([8 / 3, 16 / 3])


def test_ready_share_on_a_calendar_with_a_missing_minute() -> None:
    """AAA: both dates, 10:00 missing on the early-close date; BBB: the second date only."""
    d1, d2 = session_minutes("2025-11-26"), session_minutes("2025-11-28", skip=("10:00",))
    pre = d1[0] - 60 * np.arange(1, 4)  # extended-hours bars: never in the denominator or the numerator
    out = S.ready_share({"AAA": np.r_[pre, d1, d2], "BBB": session_minutes("2025-11-28")})
    rs = out["ready_share"]
    assert rs["dates"] == 2 and rs["regular_minutes_per_ticker"] == 390 + 210
    # AAA: 3 pre-market bars + the first 57 regular ones fill the first 60 slots -> 390 - 56 ready on day 1;
    # on day 2 every bar is ready (the window reaches back across the overnight gap), 209 of 210 present.
    a = rs["tickers"]["AAA"]
    assert a["ready_minutes"] == 334 + 209
    assert a["regular_hours"] == pytest.approx(543 / 600)
    assert a["first_hour"] == pytest.approx((4 + 59) / 120)
    b = rs["tickers"]["BBB"]  # its first 59 minutes have too little history; day 1 is missing entirely
    assert b["regular_hours"] == pytest.approx((210 - 59) / 600) and b["first_hour"] == pytest.approx(1 / 120)
    assert out["ready_share_regular_hours"] == b["regular_hours"]  # the minimum over tickers
    assert out["ready_share_regular_hours_overall"] == pytest.approx((543 + 151) / 1200)
    only2 = S.ready_share({"AAA": np.r_[pre, d1, d2]}, days=[int(session_ids(d2[:1])[0])])
    assert only2["ready_share_regular_hours"] == pytest.approx(209 / 210)


def test_a_half_day_session_on_a_full_day_date_counts_210_minutes() -> None:
    """A recorded half day (Nov 28) replayed onto a full-day date keeps its 13:00 close: its sparse
    extended-hours prints after 13:00 do not make the afternoon "missing"; a feed that stops at 14:00 does."""
    half = session_minutes("2025-11-28") + 7 * 86400  # 09:30 .. 12:59 of a Friday the calendar runs to 16:00
    prints = half[-1] + 60 * np.arange(15, 181, 30)  # extended-hours prints after the early close, one ticker
    whole = session_minutes("2025-12-01")
    stopped = whole[whole < whole[0] + 270 * 60]  # 09:30 .. 13:59, then nothing
    out = S.ready_share({"AAA": np.r_[whole, half, prints], "BBB": np.r_[whole, half]})
    assert out["ready_share"]["regular_minutes_per_ticker"] == 390 + 210
    assert out["ready_share"]["tickers"]["BBB"]["ready_minutes"] == 390 - 59 + 210
    cut = S.ready_share({"AAA": np.r_[stopped, half], "BBB": np.r_[stopped, half]})
    assert cut["ready_share"]["regular_minutes_per_ticker"] == 390 + 210  # 14:00-16:00 of Dec 1 still missing
    assert cut["ready_share"]["tickers"]["AAA"]["ready_minutes"] == 270 - 59 + 210


# -- the report on synthetic samples -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def data() -> tuple[Samples, dict[str, np.ndarray]]:
    return synthetic()


def test_report_serves_what_online_calibration_serves(data: tuple[Samples, dict[str, np.ndarray]]) -> None:
    test, bars = data
    narrow = FakeModel(width=0.6, bias=1e-6)  # right shape, intervals 40% too narrow; median: "always up"
    report, preds = E.build_report(test, narrow, None, baseline_scale=(1.0, 1.0), extra=S.ready_share(bars))
    last = test.windows[:, -1, 0 + 3]
    raw = narrow.predict_log_quantiles(test.windows)
    served, _ = calibrate_in_time_order(test.tickers, test.ends, raw, np.log(test.targets / last))
    np.testing.assert_allclose(preds["model"], to_prices(served, last))
    np.testing.assert_allclose(preds["model"][:, 2], preds["model_raw"][:, 2])  # calibration keeps the median
    reg = regular_hours(test.ends)
    lo, hi = PAIRS[0.8]
    cov = np.mean(S.covered(test.targets[reg], preds["model"][reg, lo], preds["model"][reg, hi]))
    assert report["coverage_80"] == pytest.approx(cov)
    raw_cov, srv_cov = report["intervals"]["model_raw"]["coverage_80"], report["coverage_80"]
    assert raw_cov < 0.7 and abs(srv_cov - 0.8) < abs(raw_cov - 0.8)
    assert abs(report["coverage_90"] - 0.9) < abs(report["intervals"]["model_raw"]["coverage_90"] - 0.9)
    # the calibrated baseline (scale fitted on these samples) covers 80% overall but misses by time of day
    fitted = E.build_report(test, None, None, baseline_scale=_fit(test))[0]
    assert fitted["intervals"]["baseline"]["coverage_80"] == pytest.approx(0.8, abs=0.01)
    assert report["samples"] == int(reg.sum()) and report["ready_share_regular_hours"] > 0.8
    for key in ("coverage_80", "coverage_90", "interval_score_80", "baseline_interval_score_80", "interval_score_90",
                "baseline_interval_score_90", "model_rmse", "persistence_rmse", "dm_stat", "dm_pvalue",
                "model_directional_accuracy", "up_fraction", "ready_share_regular_hours", "ready_share_first_hour",
                "interval_score_gain_80"):
        assert report[key] is not None, key
    assert report["model_directional_accuracy"] == report["up_fraction"]
    assert json.loads(json.dumps(report)) == report  # plain JSON


def _fit(test: Samples) -> tuple[float, float]:
    return fit_baseline_scale(test.windows, test.targets)


def test_a_model_that_knows_the_volatility_shape_beats_the_calibrated_baseline(data) -> None:
    test, _ = data
    report, _ = E.build_report(test, FakeModel(width=1.0), None, baseline_scale=_fit(test))
    assert report["interval_score_80"] < report["baseline_interval_score_80"]
    assert report["interval_score_gain_80"] == pytest.approx(
        1 - report["interval_score_80"] / report["baseline_interval_score_80"])
    tod = report["intervals"]["baseline"]["by_time_of_day"]
    assert sum(b["samples"] for b in tod.values()) == report["samples"]
    # a static scale on the past hour's volatility under-covers the run-up to the close
    assert tod["last_30"]["coverage_80"] < tod["midday"]["coverage_80"] - 0.03
    passed, reason = E.gate(report)
    assert passed, reason


def test_without_a_model_the_report_is_about_what_persistence_serves(data) -> None:
    test, _ = data
    report, preds = E.build_report(test, None, None, baseline_scale=(1.1, 1.1))
    assert report["served"] == "baseline_online" and report["version"] == "persistence"
    assert "model" not in preds and report["model_rmse"] is None and report["dm_pvalue"] is None
    assert report["coverage_80"] == report["intervals"]["baseline_online"]["coverage_80"]
    assert report["baseline_scale"] == [1.1, 1.1]
    passed, reason = E.gate(report)
    assert not passed and "no model" in reason


def test_current_model_is_scored_as_served_and_gates(data) -> None:
    test, _ = data
    report, preds = E.build_report(test, FakeModel(1.0, "new", bias=0.0003), FakeModel(1.0, "cur"),
                                   baseline_scale=_fit(test))
    assert set(preds) >= {"model", "current", "baseline_online"}
    assert report["current_interval_score_80"] < report["interval_score_80"]  # a biased median widens misses
    assert report["dm_stat"] > 0 and report["dm_pvalue_worse"] < 0.05  # and its point errors are worse
    assert not E.gate(report)[0]


def test_write_report_files(tmp_path: Path, data) -> None:
    test, bars = data
    report, preds = E.build_report(test, FakeModel(0.8), None, baseline_scale=(1.0, 1.0),
                                   extra={"ready": S.ready_share(bars)})
    assert report["ready_share_first_hour"] is not None  # nested ready_share result lifted to the top level
    out = E.write_report(report, test, preds, tmp_path / "v1", tmp_path / "latest")
    saved = json.loads((out / "report.json").read_text())
    assert saved["coverage_80"] == report["coverage_80"]
    assert {"reliability.png", "fan_AAA.png", "fan_BBB.png"} <= set(saved["plots"])
    for name in saved["plots"]:
        assert (out / name).stat().st_size > 1000 and (tmp_path / "latest" / name).exists()
    md = (out / "report.md").read_text()
    assert "## Distribution" in md and "| `coverage_80` |" in md and "first_hour" in md
