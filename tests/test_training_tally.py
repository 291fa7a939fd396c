"""The report from sufficient statistics (training.tally: sums a chunk at a time, merged over ranks) against the
whole-array report it replaced (kept below as the reference: every figure a mean over all scored samples):
the same figures to 1e-9, the same fan-chart samples. Synthetic samples and the fake model of
tests/support/evaluation.py; pure logic."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from minutecast import har as HAR
from minutecast.intervals import window_sigma
from minutecast.window import regular_hours, session_ids
from tests.support.evaluation import FakeModel, synthetic
from tests.test_training_stream import _close, _figures
from training import evaluate as E
from training import scoring as S
from training.report import PLOT_TICKERS
from training.tally import TICKER_COLUMNS

SCALE = (1.05, 1.1)


def whole_array_report(scored: E.Scored, model: Any, current: Any) -> dict[str, Any]:
    """The figures of today's-before-#28 ``report_of``: every figure over the whole arrays at once."""
    served_name = "model" if model is not None else "baseline_online"
    reg = np.flatnonzero(regular_hours(scored.ends))
    preds = {k: v[reg] for k, v in scored.preds.items()}
    tickers, ends, actual, last, sigma = (a[reg] for a in (
        scored.tickers, scored.ends, scored.targets, scored.last_close, scored.sigma))
    bucket = S.time_buckets(ends)
    tercile, cuts = S.terciles(sigma)
    points: dict[str, np.ndarray] = {}
    if model is not None:
        points["model"] = preds["model"][:, 2]
    if "current" in preds:
        points["current"] = preds["current"][:, 2]
    points["persistence"] = last
    point = {name: S.point_metrics(p, actual, last) for name, p in points.items()}
    dm = None
    if model is not None:
        dm = S.diebold_mariano((points["model"] - actual) ** 2, (last - actual) ** 2, times=ends) | {
            "loss": "squared error ($), model median vs persistence, per-minute sums (panel)"}
        dm["stat"] = S.finite(dm["stat"])
    dist = {name: S.interval_metrics(q, actual, last, bucket, tercile) for name, q in preds.items()}
    per_ticker = []
    for t in np.unique(tickers):
        m = tickers == t
        row: dict[str, Any] = {"ticker": str(t), "samples": int(m.sum())}
        for key, name, metric in (c for c in TICKER_COLUMNS if c[1] == "served" or c[1] in preds):
            q = preds[served_name if name == "served" else name][m]
            row[key] = S.interval_metrics(q, actual[m], last[m], bucket[m], tercile[m])[metric]
        for name, p in points.items():
            row[f"{name}_rmse"] = S.point_metrics(p[m], actual[m], last[m])["rmse"]
        per_ticker.append(row)
    top, base = dist[served_name], dist["baseline"]
    gain = 1.0 - top["interval_score_80"] / base["interval_score_80"]
    har = dist.get("har_online", {}).get("interval_score_80")
    har_keys = {"har_interval_score_80": har,
                "interval_score_gain_vs_har_80": S.finite(1.0 - top["interval_score_80"] / har) if har else None}
    return har_keys | {
        "tickers": int(np.unique(tickers).size), "samples": int(reg.size), "samples_all_hours": len(scored),
        "period": {"start": E._iso(int(scored.ends.min())), "end": E._iso(int(scored.ends.max()))},
        "volatility_tercile_cuts": cuts, "coverage_80": top["coverage_80"], "coverage_90": top["coverage_90"],
        "interval_score_80": top["interval_score_80"], "interval_score_90": top["interval_score_90"],
        "baseline_interval_score_80": base["interval_score_80"], "interval_score_gain_80": S.finite(gain),
        "current_interval_score_80": dist.get("current", {}).get("interval_score_80"),
        "model_rmse": point.get("model", {}).get("rmse"), "persistence_rmse": point["persistence"]["rmse"],
        "current_rmse": point.get("current", {}).get("rmse"), "dm_stat": dm["stat"] if dm else None,
        "dm_pvalue": dm["pvalue"] if dm else None, "dm_pvalue_worse": dm["pvalue_worse"] if dm else None,
        "model_directional_accuracy": point.get("model", {}).get("directional_accuracy"),
        "up_fraction": S.up_fraction(actual, last), "point": point, "dm": dm, "intervals": dist,
        "per_ticker": per_ticker,
    }


def _same(report: dict[str, Any], reference: dict[str, Any]) -> None:
    _close({k: report[k] for k in reference}, reference)


@pytest.fixture(scope="module")
def scored() -> tuple[E.Scored, Any, Any]:
    test, _ = synthetic(("AAA", "BBB", "CCC", "DDD"))
    model, current = FakeModel(0.9, "new", bias=1e-4), FakeModel(1.1, "cur")
    s = E.Scored.concat([E.score(c, model, current, SCALE) for c in E.ticker_chunks(test, 2000)])
    return s, model, current


def test_report_from_sums_equals_the_whole_array_report(scored) -> None:
    s, model, current = scored
    _same(E.report_of(s, model, current, baseline_scale=SCALE), whole_array_report(s, model, current))
    no_model = E.Scored(s.tickers, s.ends, s.targets, s.last_close, s.sigma,
                        {k: v for k, v in s.preds.items() if k not in ("model", "model_raw", "current")})
    _same(E.report_of(no_model, None, None, baseline_scale=SCALE), whole_array_report(no_model, None, None))


def test_the_har_baseline_is_scored_as_served_and_tallied_like_every_forecaster() -> None:
    """With a fitted HAR baseline the report gains ``har`` / ``har_online`` beside the others, the keys
    ``har_interval_score_80`` (as served: online calibration) and ``interval_score_gain_vs_har_80``, and a per-ticker
    column; a chunked, rank-merged tally gives the whole-array figures."""
    test, _ = synthetic(("AAA", "BBB", "CCC", "DDD"))
    har = HAR.fit([(test.windows[::3], test.targets[::3])])
    model, current = FakeModel(0.9, "new", bias=1e-4), FakeModel(1.1, "cur")
    s = E.Scored.concat([E.score(c, model, current, SCALE, har) for c in E.ticker_chunks(test, 2000)])
    assert {"har", "har_online"} <= set(s.preds) and list(s.preds) == E.forecaster_names(model, current, har)
    report = E.report_of(s, model, current, baseline_scale=SCALE, har=har)
    reference = whole_array_report(s, model, current)
    _same(report, reference)
    assert report["har_interval_score_80"] is not None and report["har"] == har.to_dict()
    assert report["interval_score_gain_vs_har_80"] == pytest.approx(
        1 - report["interval_score_80"] / report["har_interval_score_80"], rel=1e-12)
    assert all(row["har_interval_score_80"] is not None for row in report["per_ticker"])
    ranks = [test.take(np.flatnonzero(np.isin(test.tickers, part))) for part in (["AAA", "CCC"], ["BBB", "DDD"])]
    cuts = S.tercile_cuts(np.concatenate([E.test_sigmas(E.ticker_chunks(r, 2000), len(r)) for r in ranks]))
    tallies = [E.tally_all(E.ticker_chunks(r, 1500), len(r), model, current, SCALE, cuts, har=har)[0] for r in ranks]
    tallies[0].merge(tallies[1])
    _same(E.report_of_tally(tallies[0], model, current, baseline_scale=SCALE, har=har), reference)


def test_samples_outside_regular_hours_count_only_as_all_hours_and_period(scored) -> None:
    s, model, current = scored
    early = np.flatnonzero(s.tickers == "BBB")[:500]
    ends = s.ends.copy()
    ends[early] += 12 * 3600  # 21:30..04:00: outside regular hours
    moved = E.Scored(s.tickers, ends, s.targets, s.last_close, s.sigma, s.preds)
    report = E.report_of(moved, model, current, baseline_scale=SCALE)
    assert not regular_hours(ends[early]).any()
    assert report["samples"] == len(s) - 500 and report["samples_all_hours"] == len(s)
    _same(report, whole_array_report(moved, model, current))


def test_chunked_tallies_merged_over_ranks_equal_the_whole_array_report() -> None:
    """What training does: cut points from a first pass, a tally per chunk of whole tickers on each 'rank',
    the ranks' tallies merged on rank 0; the fan charts' samples are those the whole-array plots pick."""
    test, _ = synthetic(("AAA", "BBB", "CCC", "DDD"))
    model, current = FakeModel(0.9, "new", bias=1e-4), FakeModel(1.1, "cur")
    ranks = [test.take(np.flatnonzero(np.isin(test.tickers, part))) for part in (["AAA", "CCC"], ["BBB", "DDD"])]
    cuts = S.tercile_cuts(np.concatenate([E.test_sigmas(E.ticker_chunks(r, 2000), len(r)) for r in ranks]))
    parts = [E.tally_all(E.ticker_chunks(r, 2000), len(r), model, current, SCALE, cuts) for r in ranks]
    tally, fans = parts[0]
    for t, f in parts[1:]:
        tally.merge(t)
        fans.merge(f)
    whole, preds = E.build_report(test, model, current, baseline_scale=SCALE)
    _close(_figures(E.report_of_tally(tally, model, current, baseline_scale=SCALE)), _figures(whole))
    s = E.Scored.concat([E.score(c, model, current, SCALE) for c in E.ticker_chunks(test, 2000)])
    _same(E.report_of_tally(tally, model, current, baseline_scale=SCALE), whole_array_report(s, model, current))
    # fans: the most samples first, each ticker's last date, the served forecaster's quantiles
    kept, q = fans.samples()
    names, counts = np.unique(s.tickers, return_counts=True)
    assert fans.chosen() == names[np.argsort(-counts, kind="stable")][:PLOT_TICKERS].tolist()
    for t in fans.chosen():
        m = s.tickers == t
        last_day = m & (session_ids(s.ends) == session_ids(s.ends[m]).max())
        np.testing.assert_array_equal(kept.ends[kept.tickers == t], np.sort(s.ends[last_day]))
        np.testing.assert_array_equal(q["model"][kept.tickers == t], s.preds["model"][last_day])
    with pytest.raises(E.ConfigError, match="more than the 10 test samples"):
        E.tally_all(E.ticker_chunks(ranks[0], 2000), 10, model, current, SCALE, cuts)


def test_fan_samples_keep_only_the_largest_tickers() -> None:
    test, _ = synthetic(("AAA", "BBB", "CCC"))
    model = FakeModel(1.0, "m")
    drop = np.flatnonzero(test.tickers == "AAA")[:100]
    test = test.take(np.setdiff1d(np.arange(len(test)), drop))  # AAA: the fewest samples
    cuts = S.tercile_cuts(E.test_sigmas([test], len(test)))
    _, fans = E.tally_all(E.ticker_chunks(test, 500), len(test), model, None, SCALE, cuts)
    fans.limit = 2
    fans.merge(type(fans)(fans.served, 2))
    assert fans.chosen() == ["BBB", "CCC"] and set(fans.kept) == {"BBB", "CCC"}


def test_diebold_mariano_of_minute_sums_equals_the_per_sample_test() -> None:
    rng = np.random.default_rng(3)
    times = np.sort(rng.integers(0, 400, 5000))
    a, b = rng.normal(1.0, 1.0, 5000) ** 2, rng.normal(1.05, 1.0, 5000) ** 2
    ref = S.diebold_mariano(a, b, times=times)
    uniq, inv = np.unique(times, return_inverse=True)
    got = S.diebold_mariano_of_sums(np.bincount(inv, weights=a - b), np.bincount(inv).astype(float))
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k


def test_cut_points_in_place_and_sigmas_into_one_array_are_the_same_figures() -> None:
    """The trainer's low-memory first pass (sigmas filled into one array of the counted size, cut points by an
    in-place partition) gives bit for bit the cut points of the reference (every sample's window_sigma at
    once, np.quantile on a copy)."""
    test, _ = synthetic(("AAA", "BBB", "CCC"))
    ok = np.isfinite(test.targets) & (test.targets > 0)
    joined = window_sigma(test.windows[ok])
    filled = E.test_sigmas(E.ticker_chunks(test, 500), len(test))
    np.testing.assert_array_equal(np.sort(filled), np.sort(joined))
    reference = [float(c) for c in np.quantile(joined, [1 / 3, 2 / 3])]
    assert S.terciles(joined)[1] == reference
    assert S.tercile_cuts(filled, overwrite=True) == reference
    with pytest.raises(E.ConfigError, match="more than the 10 test samples"):
        E.test_sigmas(E.ticker_chunks(test, 500), 10)
