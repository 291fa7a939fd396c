"""Unit tests of minutecast.intervals (pure numpy): the window-vol baseline, its calibration, the quantile
ordering, the time-of-day conformal scales and the online calibration (ACI on the interval scale)."""

from __future__ import annotations

import numpy as np
import pytest

from minutecast import intervals as I  # noqa: N812
from minutecast.window import GAP, HORIZON, N_COLUMNS, PREV, WINDOW, C, slots, with_market

OPEN = 1_759_325_400  # 2025-10-01 09:30 New York


def windows_with_sigma(n: int, sigma_1m: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n raw windows whose 1-minute log returns have std ``sigma_1m``, and targets drawn with the same vol."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, WINDOW, N_COLUMNS))
    r = rng.normal(0, sigma_1m, (n, WINDOW))
    close = 100 * np.exp(np.cumsum(r, axis=1))
    out[:, :, C] = close
    out[:, 1:, PREV] = close[:, :-1]
    out[:, 0, PREV] = close[:, 0]
    targets = close[:, -1] * np.exp(rng.normal(0, sigma_1m * np.sqrt(HORIZON), n))
    return out, targets


def test_window_sigma_excludes_gap_returns() -> None:
    w, _ = windows_with_sigma(200, 1e-3)
    plain = I.window_sigma(w)
    assert plain == pytest.approx(np.full(200, 1e-3), rel=0.35)
    jumped = w.copy()
    jumped[:, 30, C] *= 1.05  # a 5% overnight gap at slot 30 ...
    jumped[:, 31, PREV] = jumped[:, 30, C]
    jumped[:, 30, GAP] = 1  # ... marked as crossing a collapsed gap
    jumped[:, 31, C] = jumped[:, 30, C] * w[:, 31, C] / w[:, 30, C]
    assert I.window_sigma(jumped) == pytest.approx(I.window_sigma(w), rel=0.1)


def test_baseline_quantiles_are_ordered_and_calibration_hits_the_level() -> None:
    w, y = windows_with_sigma(20_000, 1e-3, seed=1)
    q = I.baseline_log_quantiles(w)
    assert np.all(np.diff(q, axis=1) > 0) and np.all(q[:, 2] == 0)
    scale = I.fit_baseline_scale(w, y)
    move = np.log(y / w[:, -1, C])
    cal = I.baseline_log_quantiles(w, scale)
    cov80 = np.mean((move >= cal[:, 1]) & (move <= cal[:, 3]))
    cov90 = np.mean((move >= cal[:, 0]) & (move <= cal[:, 4]))
    assert cov80 == pytest.approx(0.8, abs=0.005) and cov90 == pytest.approx(0.9, abs=0.005)
    prices = I.to_prices(cal, w[:, -1, C])
    assert np.all(np.diff(prices, axis=1) > 0)


def test_bucket_scales_make_each_bucket_nominal_on_its_samples() -> None:
    rng = np.random.default_rng(2)
    n = 6000
    minutes = OPEN + 60 * rng.integers(0, 390, n)  # regular-hours as-of minutes of one date
    buckets = I.bucket_index(minutes)
    true_sd = np.array([2.0, 1.0, 1.5, 1.0])[buckets]  # the model is too narrow at the open and the close
    raw = np.array([-1.645, -1.2816, 0.0, 1.2816, 1.645])[None, :] * np.ones((n, 1))
    y = rng.normal(0, true_sd)
    scales = I.bucket_scales(I.interval_scores(raw, y), buckets)
    assert scales.shape == (I.N_BUCKETS, 2)
    assert scales[0, 0] > 1.6 and scales[1, 0] == pytest.approx(1.0, abs=0.1) and scales[-1].tolist() == [1, 1]
    served = I.apply_bucket_scales(raw, minutes, scales)
    assert np.all(np.diff(served, axis=1) >= 0)
    for b in range(3):
        m = buckets == b
        assert np.mean((y[m] >= served[m, 1]) & (y[m] <= served[m, 3])) == pytest.approx(0.8, abs=0.02)
    np.testing.assert_array_equal(I.apply_bucket_scales(raw, minutes, None), raw)


def test_online_scale_moves_toward_the_miss_rate_and_applies_each_target_once() -> None:
    st = I.OnlineScale()
    q = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    assert st.update(st.apply(q), 5.0, OPEN)  # a miss of both intervals widens both
    assert st.log_s80 == pytest.approx(I.GAMMA * 0.8) and st.log_s90 == pytest.approx(I.GAMMA * 0.9)
    assert not st.update(st.apply(q), 5.0, OPEN)  # the same target again: nothing changes
    assert not st.update(st.apply(q), 5.0, OPEN - 60)  # an older target: nothing changes
    assert st.update(st.apply(q), 0.1, OPEN + 60)  # a hit narrows
    assert st.log_s80 == pytest.approx(I.GAMMA * 0.8 - I.GAMMA * 0.2)
    served = I.OnlineScale(log_s80=1.0, log_s90=-1.0).apply(q)
    assert np.all(np.diff(served) >= 0) and served[0] <= served[1]  # the 90% interval contains the 80% one
    assert I.OnlineScale.from_dict(st.to_dict()) == st and I.OnlineScale.from_dict(None) == I.OnlineScale()


def test_calibrate_in_time_order_reaches_nominal_coverage_for_a_miscalibrated_model() -> None:
    rng = np.random.default_rng(3)
    n = 8000
    tickers = np.array(["AAA", "BBB"])[rng.integers(0, 2, n)]
    ends = OPEN + 60 * np.arange(n)
    raw = 0.5 * np.array([-1.645, -1.2816, 0.0, 1.2816, 1.645])[None, :] * np.ones((n, 1))  # half too narrow
    y = rng.normal(0, 1, n)
    served, states = I.calibrate_in_time_order(tickers, ends, raw, y)
    assert set(states) == {"AAA", "BBB"}
    late = slice(n // 2, None)
    cov = np.mean((y[late] >= served[late, 1]) & (y[late] <= served[late, 3]))
    raw_cov = np.mean((y >= raw[:, 1]) & (y <= raw[:, 3]))
    assert raw_cov < 0.6 and cov == pytest.approx(0.8, abs=0.03)
    # The first forecast of each ticker is served raw: no outcome was known before it.
    for t in ("AAA", "BBB"):
        first = np.flatnonzero(tickers == t)[0]
        np.testing.assert_array_equal(served[first], raw[first])


def test_probe_windows_from_the_policy_have_a_positive_sigma() -> None:
    minutes = OPEN + 60 * np.arange(WINDOW + 5)
    close = 100 + np.sin(np.arange(WINDOW + 5))
    s = slots(minutes, np.stack([close, close + 0.1, close - 0.1, close, np.full(WINDOW + 5, 10.0)], axis=1))
    w = with_market(s.windows(s.ready()), s)
    assert np.all(I.window_sigma(w) > 0)
