"""The HAR-style baseline (minutecast/har.py): features read from raw windows, a fit from running sums equal to a
one-shot least-squares fit, calibration to nominal coverage on the training samples, New York buckets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from minutecast import har as HAR
from minutecast.errors import ModelError
from minutecast.registry import BASELINE_FILE, Registry
from minutecast.window import GAP, MINUTE, MKT_BAR, MKT_RET, N_COLUMNS, PREV, WINDOW, C, H, L

rng = np.random.default_rng(7)


def ny(ts: str) -> int:
    return int(pd.Timestamp(ts, tz="America/New_York").timestamp())


def windows(n: int, vol: np.ndarray | float, start: int = ny("2025-11-03 10:30")) -> tuple[np.ndarray, np.ndarray]:
    """``n`` raw windows whose one-minute log returns have std ``vol`` (per window), and their target closes
    five minutes on with the same volatility."""
    vol = np.broadcast_to(np.asarray(vol, dtype=np.float64), (n,))
    r = rng.standard_normal((n, WINDOW + 5)) * vol[:, None]
    close = 100.0 * np.exp(np.cumsum(r, axis=1))
    w = np.zeros((n, WINDOW, N_COLUMNS))
    w[..., C] = close[:, :WINDOW]
    w[..., PREV] = np.concatenate([np.full((n, 1), 100.0), close[:, :WINDOW - 1]], axis=1)
    w[..., H] = w[..., C] * np.exp(np.abs(r[:, :WINDOW]))
    w[..., L] = w[..., C]
    w[..., MINUTE] = start + 60 * (np.arange(WINDOW) - WINDOW + 1) + 60 * rng.integers(0, 300, n)[:, None]
    w[..., MKT_RET] = rng.standard_normal((n, WINDOW)) * 5e-4
    w[..., MKT_BAR] = 1.0
    return w, close[:, -1]


def test_diurnal_buckets_follow_new_york_wall_clock_across_dst() -> None:
    for day in ("2025-07-01", "2025-12-01"):  # EDT and EST: the same buckets
        m = np.array([ny(f"{day} 09:30"), ny(f"{day} 09:44"), ny(f"{day} 09:45"), ny(f"{day} 15:59"),
                      ny(f"{day} 08:00"), ny(f"{day} 16:30")])
        assert HAR.diurnal_bucket(m).tolist() == [0, 0, 1, 25, 26, 26]


def test_design_reads_volatility_from_the_window_and_skips_gaps() -> None:
    w, _ = windows(2, np.array([1e-4, 1e-3]))
    x = HAR.design(w)
    assert x.shape == (2, HAR.N_FEATURES)
    rv60 = HAR.FEATURES.index("log_rv60")
    assert x[1, rv60] - x[0, rv60] == pytest.approx(np.log(10.0), abs=0.3)
    assert x[:, HAR.FEATURES.index("gap")].tolist() == [0.0, 0.0] and (x[:, -HAR.N_DIURNAL:].sum(axis=1) == 1).all()
    gapped = w.copy()
    gapped[0, 10, PREV] = gapped[0, 10, C] / 1.2  # a 20% overnight jump, flagged as a collapsed gap
    gapped[0, 10, GAP] = 1.0
    g = HAR.design(gapped)
    assert g[0, rv60] == pytest.approx(x[0, rv60], abs=0.05) and g[0, HAR.FEATURES.index("gap")] == 1.0


def test_a_fit_from_chunks_equals_one_least_squares_fit() -> None:
    w, t = windows(3000, rng.uniform(2e-4, 3e-3, 3000))
    whole = HAR.HarFit()
    whole.add(w, t)
    parts = HAR.HarFit()
    for lo in range(0, 3000, 700):
        parts.add(w[lo:lo + 700], t[lo:lo + 700])
    assert parts.n == whole.n == 3000
    np.testing.assert_allclose(parts.solve(), whole.solve(), rtol=1e-9, atol=1e-9)
    x, y = HAR.design(w), HAR.target(w, t)
    ls = np.linalg.lstsq(x, y, rcond=None)[0]  # the fitted values: coefficients of collinear columns are not unique
    np.testing.assert_allclose(x @ whole.solve(), x @ ls, atol=1e-4)
    with pytest.raises(ModelError):
        HAR.HarFit().solve()


def test_the_fit_tracks_volatility_and_covers_its_levels_on_training() -> None:
    vol = rng.uniform(2e-4, 3e-3, 6000)
    w, t = windows(6000, vol)
    har = HAR.fit([(w[:3000], t[:3000]), (w[3000:], t[3000:])])
    s = har.sigma(w)
    assert np.corrcoef(np.log(s), np.log(vol))[0, 1] > 0.9  # the scale follows the true volatility
    q = har.log_quantiles(w)
    move = np.log(t / w[:, -1, C])
    assert ((q[:, 1] <= move) & (move <= q[:, 3])).mean() == pytest.approx(0.8, abs=0.005)
    assert ((q[:, 0] <= move) & (move <= q[:, 4])).mean() == pytest.approx(0.9, abs=0.005)
    assert (q[:, 2] == 0).all() and (np.diff(q, axis=1) >= 0).all()
    again = HAR.Har.from_dict(har.to_dict())
    np.testing.assert_array_equal(again.log_quantiles(w), q)
    with pytest.raises(ModelError, match="another specification"):
        HAR.Har.from_dict(har.to_dict() | {"spec": "har-v0"})


def test_the_registry_keeps_the_newest_fit_beside_the_window_vol_scale(tmp_path: Path) -> None:
    w, t = windows(2000, rng.uniform(2e-4, 3e-3, 2000))
    har = HAR.fit([(w, t)])
    reg = Registry(tmp_path)
    assert reg.har() is None  # nothing fitted yet: the evaluate CLI fits one
    reg.save_baseline_scale((1.2, 1.3), {"run_id": "r"}, har=har)
    assert reg.har() == har and reg.baseline_scale() == (1.2, 1.3)
    doc = (tmp_path / BASELINE_FILE).read_text().replace("har-v1", "har-v0")
    (tmp_path / BASELINE_FILE).write_text(doc)
    assert reg.har() is None and reg.baseline_scale() == (1.2, 1.3)  # another specification: refit, never misread


def test_the_blend_averages_about_the_models_median_in_regular_hours_only() -> None:
    model = np.array([[-3.0, -2.0, 0.5, 3.0, 4.0], [-3.0, -2.0, 0.5, 3.0, 4.0]])
    har = np.array([[-1.0, -0.8, 0.0, 0.8, 1.0], [-1.0, -0.8, 0.0, 0.8, 1.0]])
    regular = np.array([True, False])
    out = HAR.blend(model, har, 0.25, regular)
    want = 0.5 + 0.25 * (model[0] - 0.5) + 0.75 * har[0]
    np.testing.assert_allclose(out[0], want)
    np.testing.assert_array_equal(out[1], model[1])  # outside regular hours: the network alone
    np.testing.assert_array_equal(out[:, 2], model[:, 2])  # the point forecast is the network's
    np.testing.assert_array_equal(HAR.blend(model, har, 1.0, regular), model)
    assert np.all(np.diff(HAR.blend(model, har, 0.6, regular), axis=1) >= 0)  # averages of sorted rows stay sorted


def test_the_weight_is_the_one_with_the_least_validation_pinball() -> None:
    n = 20_000
    sigma = rng.uniform(1.0, 3.0, n)
    moves = rng.standard_normal(n) * sigma
    right = sigma[:, None] * HAR.Z[None, :]  # the true quantiles
    too_wide = 2.0 * right
    regular = np.ones(n, dtype=bool)
    # A network twice too wide against a right HAR: all weight on HAR; the reverse: all on the network.
    assert HAR.fit_weight(HAR.pinball_by_weight(too_wide, right, moves, regular)) == 0.0
    assert HAR.fit_weight(HAR.pinball_by_weight(right, too_wide, moves, regular)) == 1.0
    # Two forecasts with independent errors in their scale: the average beats both.
    noisy_a = right * np.exp(rng.normal(0, 0.3, n))[:, None]
    noisy_b = right * np.exp(rng.normal(0, 0.3, n))[:, None]
    losses = HAR.pinball_by_weight(noisy_a, noisy_b, moves, regular)
    w = HAR.fit_weight(losses)
    assert 0.2 < w < 0.8 and losses[list(HAR.WEIGHTS).index(w)] < min(losses[0], losses[-1])
    # Only regular-hours samples count; none at all (or every rank empty): the network alone.
    assert HAR.fit_weight(HAR.pinball_by_weight(too_wide, right, moves, np.zeros(n, dtype=bool))) == 1.0
