"""Pure scoring functions of the evaluation report: point errors, quantile and interval scores, the
Diebold-Mariano test and the share of regular-hours minutes with a ready window.

Units: prices in $, relative quantities in basis points of the close at the as-of minute ``t``
(``1e4 * x / close_t``), so tickers of different price levels weigh alike in pooled figures. Forecast
quantiles are price arrays (N, 5) at the levels of :data:`minutecast.schemas.QUANTILES`; the 80% interval
is columns (1, 3), the 90% one (0, 4) (:data:`minutecast.intervals.PAIRS`). numpy only (no scipy).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minutecast.intervals import LEVELS, PAIRS
from minutecast.schemas import QUANTILE_FIELDS, QUANTILES
from minutecast.window import (  # noqa: F401 - BUCKETS and time_buckets are re-exported for the report
    BUCKETS,
    EARLY_CLOSE_MIN,
    FIRST_HOUR_MIN,
    HORIZON,
    OPEN_MIN,
    WINDOW,
    close_minute,
    minute_of_day,
    regular_hours,
    session_ids,
    slots,
    time_buckets,
)

TERCILES = ("low", "mid", "high")


def finite(x: Any) -> float | None:
    """A JSON-safe float: None for NaN/inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def bps(x: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Price differences (N,) or (N, k) -> basis points of the as-of close ``last`` (N,)."""
    last = np.asarray(last, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    return 1e4 * x / (last if x.ndim == 1 else last[:, None])


# -- point forecasts -------------------------------------------------------------------------------
def point_metrics(pred: np.ndarray, actual: np.ndarray, last: np.ndarray) -> dict[str, Any]:
    """RMSE/MAE in $ and bps of point forecasts ``pred`` (N,) of ``actual`` (N,) made at close ``last`` (N,),
    and the directional accuracy: among samples whose price moved, the share whose forecast move has the
    actual move's sign (a forecast of no move counts as wrong; None when it never forecasts a move)."""
    err = np.asarray(pred, dtype=np.float64) - actual
    n = int(err.size)
    if n == 0:
        return {"samples": 0, "rmse": None, "mae": None, "rmse_bps": None, "mae_bps": None,
                "directional_accuracy": None}
    eb = bps(err, last)
    moved = actual != last
    pdir, tdir = np.sign(pred - last), np.sign(actual - last)
    predicts = bool(np.any(pdir[moved] != 0))
    return {"samples": n, "rmse": finite(np.sqrt(np.mean(err ** 2))), "mae": finite(np.mean(np.abs(err))),
            "rmse_bps": finite(np.sqrt(np.mean(eb ** 2))), "mae_bps": finite(np.mean(np.abs(eb))),
            "directional_accuracy": finite(np.mean(pdir[moved] == tdir[moved])) if predicts else None}


def up_fraction(actual: np.ndarray, last: np.ndarray) -> float | None:
    """Share of moves that were up: the directional accuracy of "always up"."""
    moved = actual != last
    return finite(np.mean(actual[moved] > last[moved])) if moved.any() else None


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, times: np.ndarray | None = None,
                    lag: int = HORIZON - 1) -> dict[str, Any]:
    """Diebold-Mariano test of equal expected loss, ``d = loss_a - loss_b`` (N,).

    The variance of mean(d) is Newey-West (Bartlett weights ``1 - k/(lag+1)``, ``k <= lag``; ``lag =
    HORIZON - 1`` because 5-minute-ahead errors of consecutive minutes overlap). With ``times`` (N,) (as-of
    minutes of a panel of tickers) the centred differentials are first summed per minute, so errors of
    different tickers at the same minute (the market moves them together) are not counted as independent.
    ``stat > 0``: a's loss is larger. ``pvalue`` is two-sided, ``pvalue_worse`` one-sided (H1: a worse).
    """
    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    n = d.size
    dbar = float(d.mean()) if n else 0.0
    u = d - dbar
    series: np.ndarray
    if times is None:
        series = u
    else:
        _, inv = np.unique(np.asarray(times), return_inverse=True)
        series = np.bincount(inv.ravel(), weights=u)  # (T,) per-minute sums, in time order
    return _dm_result(series, n, dbar, lag)


def diebold_mariano_of_sums(sums: np.ndarray, counts: np.ndarray, lag: int = HORIZON - 1) -> dict[str, Any]:
    """:func:`diebold_mariano` with ``times`` from the per-minute sums (T,) of ``d = loss_a - loss_b`` and
    the samples per minute (T,), minutes in time order: the centred per-minute sums are ``sums - counts x
    mean(d)`` (equal to the per-sample form within float rounding)."""
    n = int(np.sum(counts))
    dbar = float(np.sum(sums) / n) if n else 0.0
    return _dm_result(np.asarray(sums, dtype=np.float64) - np.asarray(counts, dtype=np.float64) * dbar, n, dbar, lag)


def _dm_result(series: np.ndarray, n: int, dbar: float, lag: int) -> dict[str, Any]:
    """The test's figures from the centred series (per sample or per minute), n samples, mean difference."""
    lrv = float(series @ series)
    for k in range(1, min(lag, series.size - 1) + 1):
        lrv += 2.0 * (1.0 - k / (lag + 1)) * float(series[:-k] @ series[k:])
    var_mean = lrv / n ** 2 if n else 0.0
    if var_mean > 0:
        stat = dbar / math.sqrt(var_mean)
    else:  # no variation at all: equal losses give 0, a constant non-zero difference is decisive
        stat = 0.0 if dbar == 0 else math.copysign(math.inf, dbar)
    return {"stat": stat, "pvalue": math.erfc(abs(stat) / math.sqrt(2.0)),
            "pvalue_worse": 0.5 * math.erfc(stat / math.sqrt(2.0)), "lag": lag, "samples": int(n),
            "mean_loss_difference": dbar}


# -- distribution forecasts ------------------------------------------------------------------------
def pinball(actual: np.ndarray, q: np.ndarray, tau: float) -> np.ndarray:
    """Pinball (quantile) loss per sample of quantile forecasts ``q`` (N,) at level ``tau``."""
    diff = np.asarray(actual, dtype=np.float64) - q
    return np.maximum(tau * diff, (tau - 1.0) * diff)


def winkler(actual: np.ndarray, lo: np.ndarray, hi: np.ndarray, level: float) -> np.ndarray:
    """Interval (Winkler) score per sample of central ``level`` intervals [lo, hi]: the width plus
    ``2 / alpha`` times the distance by which the actual falls outside (alpha = 1 - level). Lower is better."""
    alpha = 1.0 - level
    y = np.asarray(actual, dtype=np.float64)
    return (hi - lo) + (2.0 / alpha) * (np.maximum(lo - y, 0.0) + np.maximum(y - hi, 0.0))


def covered(actual: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """True where the actual lies inside [lo, hi] (bounds included)."""
    return (lo <= actual) & (actual <= hi)


def terciles(sigma: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Volatility tercile index (N,) into :data:`TERCILES` and the two cut points (from ``sigma`` itself)."""
    cuts = tercile_cuts(sigma)
    return np.searchsorted(np.asarray(cuts), sigma, side="right"), cuts


def tercile_cuts(sigma: np.ndarray, overwrite: bool = False) -> list[float]:
    """The two volatility tercile cut points of ``sigma`` (N,); ``overwrite``: partition ``sigma`` in place
    instead of a copy (it is reordered: for a caller that drops it next, 8 bytes a sample less at the peak)."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if not sigma.size:
        return [0.0, 0.0]
    return [float(c) for c in np.quantile(sigma, [1 / 3, 2 / 3], overwrite_input=overwrite)]


def _interval_summary(actual: np.ndarray, q: np.ndarray, last: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": int(actual.size)}
    for level in LEVELS:
        lo, hi = PAIRS[level]
        pct = round(level * 100)
        if actual.size == 0:
            out |= {f"coverage_{pct}": None, f"interval_score_{pct}": None, f"width_{pct}_bps": None}
            continue
        out[f"coverage_{pct}"] = finite(np.mean(covered(actual, q[:, lo], q[:, hi])))
        out[f"interval_score_{pct}"] = finite(np.mean(bps(winkler(actual, q[:, lo], q[:, hi], level), last)))
        out[f"width_{pct}_bps"] = finite(np.mean(bps(q[:, hi] - q[:, lo], last)))
    return out


def interval_metrics(q: np.ndarray, actual: np.ndarray, last: np.ndarray, bucket: np.ndarray,
                     tercile: np.ndarray) -> dict[str, Any]:
    """Every distribution figure of one forecaster: price quantiles ``q`` (N, 5) of ``actual`` (N,) made at
    close ``last`` (N,). Interval scores, widths and pinball losses in bps of ``last``. ``bucket`` and
    ``tercile`` (N,) index :data:`BUCKETS` / :data:`TERCILES`."""
    q = np.asarray(q, dtype=np.float64)
    out = _interval_summary(actual, q, last)
    if actual.size:
        pin = {f: finite(np.mean(bps(pinball(actual, q[:, i], tau), last)))
               for i, (f, tau) in enumerate(zip(QUANTILE_FIELDS, QUANTILES, strict=True))}
        out["pinball_bps"] = pin
        out["pinball_mean_bps"] = finite(np.mean([v for v in pin.values() if v is not None]))
        # Reliability: share of actual closes at or below each quantile (nominal: its level).
        out["quantile_coverage"] = {f: finite(np.mean(actual <= q[:, i])) for i, f in enumerate(QUANTILE_FIELDS)}
    out["by_time_of_day"] = {name: _interval_summary(actual[bucket == i], q[bucket == i], last[bucket == i])
                             for i, name in enumerate(BUCKETS)}
    out["by_volatility"] = {name: _interval_summary(actual[tercile == i], q[tercile == i], last[tercile == i])
                            for i, name in enumerate(TERCILES)}
    return out


# -- how many minutes get a forecast ---------------------------------------------------------------
def _minutes_of(v: Any) -> np.ndarray:
    return np.asarray(getattr(v, "minutes", v), dtype=np.int64)


@dataclass(frozen=True)
class ReadyCounts:
    """One ticker's part of :func:`ready_share`, small enough to gather from every rank: its minutes with a ready
    window in regular hours per New York date (``days`` (k,), ``n_all`` (k,), ``n_first`` (k,) in the first
    hour), and the dates on which it has a regular-hours bar with that date's session length in minutes and its
    regular-hours bars before and from 13:00 (``reg_am``, ``reg_pm``: is the day's session a half day?)."""

    days: np.ndarray
    n_all: np.ndarray
    n_first: np.ndarray
    reg_days: np.ndarray
    reg_len: np.ndarray
    reg_am: np.ndarray
    reg_pm: np.ndarray


def ready_counts(v: Any) -> ReadyCounts:
    """:class:`ReadyCounts` of one ticker's bar minutes (n,) int64 epoch s (or anything with ``.minutes``)."""
    m = _minutes_of(v)
    reg = m[regular_hours(m)]
    reg_days, first, inv_reg = np.unique(session_ids(reg), return_index=True, return_inverse=True)
    reg_len = close_minute(reg[first]) - OPEN_MIN if reg_days.size else np.empty(0, np.int64)
    pm = minute_of_day(reg) >= EARLY_CLOSE_MIN
    reg_pm = np.bincount(inv_reg.ravel(), weights=pm, minlength=reg_days.size).astype(np.int64)
    reg_am = np.bincount(inv_reg.ravel(), minlength=reg_days.size).astype(np.int64) - reg_pm
    s = slots(m, np.ones((m.size, 5)))  # readiness depends on the minutes only
    rm = s.minutes[s.bar_slot >= WINDOW - 1]
    rm = rm[regular_hours(rm)]
    days, inv = np.unique(session_ids(rm), return_inverse=True)
    first_hour = (minute_of_day(rm) < OPEN_MIN + FIRST_HOUR_MIN).astype(np.int64)
    return ReadyCounts(days, np.bincount(inv.ravel(), minlength=days.size).astype(np.int64),
                       np.bincount(inv.ravel(), weights=first_hour, minlength=days.size).astype(np.int64),
                       reg_days, np.asarray(reg_len, np.int64), reg_am, reg_pm)


HALF_DAY_DENSITY = 0.25  # bars per minute from 13:00 below this share of the morning's: a half-day session


def ready_share(bars: Mapping[str, Any], days: Iterable[int] | None = None) -> dict[str, Any]:
    """Share of regular-hours minutes (09:30 up to the close) of each ticker that had a ready window.

    ``bars``: ticker -> bar minutes (n,) int64 epoch s (or anything with a ``.minutes`` array, e.g. a
    training.data.Series). A minute counts as forecast when the ticker has a bar there whose slot index is
    at least WINDOW - 1 (:func:`minutecast.window.slots`, so windows reach across the overnight gap). The
    denominator is every regular-hours minute (390, or 210 on early-close days) of every session date
    present in the data (a date with a regular-hours bar of any ticker), optionally only ``days`` (New York
    day numbers, e.g. the test dates); minutes without any bar count as not forecast. A date whose calendar says
    16:00 but whose bars from 13:00 are less than :data:`HALF_DAY_DENSITY` as dense (bars per minute, all
    tickers) as before 13:00 was a half-day session (extended-hours prints only after 13:00: a recorded half
    day replayed onto another date, an unscheduled early close) and counts 210 minutes. A feed that stops for
    some tickers only, or for all before 13:00 or after about 13:45, still counts as missing minutes (one that
    stops for every ticker between 13:00 and 13:45 reads as a half day). Also the same within
    each date's first hour (09:30..10:29). Returns the per-ticker shares and, at the top level, the minimum
    over tickers and the pooled share. (:func:`ready_share_of` of each ticker's :func:`ready_counts`.)"""
    return ready_share_of({t: ready_counts(v) for t, v in bars.items()}, days)


def session_lengths(parts: Sequence[ReadyCounts]) -> tuple[np.ndarray, np.ndarray]:
    """Every date with a regular-hours bar of any ticker (sorted) and its regular session's length in minutes:
    the calendar's, or 210 where the bars from 13:00 (all tickers) are under :data:`HALF_DAY_DENSITY` as dense
    as the morning's (see :func:`ready_share`)."""
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    uniq, first, inv = np.unique(np.concatenate([c.reg_days for c in parts]), return_index=True,
                                 return_inverse=True)
    calendar = np.concatenate([c.reg_len for c in parts])[first]

    def per_day(values: list[np.ndarray]) -> np.ndarray:
        return np.bincount(inv.ravel(), weights=np.concatenate(values), minlength=uniq.size)

    am, pm = per_day([c.reg_am for c in parts]), per_day([c.reg_pm for c in parts])
    half = EARLY_CLOSE_MIN - OPEN_MIN
    sparse = pm / np.maximum(calendar - half, 1) < HALF_DAY_DENSITY * am / half
    return uniq, np.where((calendar > half) & sparse, half, calendar)


def ready_share_of(counts: Mapping[str, ReadyCounts], days: Iterable[int] | None = None) -> dict[str, Any]:
    """:func:`ready_share` from each ticker's :class:`ReadyCounts` (gathered from the ranks that read them)."""
    uniq, day_len = session_lengths(list(counts.values()))
    if days is not None:
        keep = np.isin(uniq, np.fromiter(days, dtype=np.int64))
        uniq, day_len = uniq[keep], day_len[keep]
    denom_all, denom_first = int(day_len.sum()), FIRST_HOUR_MIN * int(uniq.size)
    per: dict[str, dict[str, Any]] = {}
    num_all = num_first = 0
    for t in sorted(counts):
        c = counts[t]
        sel = np.isin(c.days, uniq)
        n_all, n_first = int(c.n_all[sel].sum()), int(c.n_first[sel].sum())
        num_all, num_first = num_all + n_all, num_first + n_first
        per[t] = {"regular_hours": n_all / denom_all if denom_all else None, "ready_minutes": n_all,
                  "first_hour": n_first / denom_first if denom_first else None}
    shares = [p["regular_hours"] for p in per.values() if p["regular_hours"] is not None]
    firsts = [p["first_hour"] for p in per.values() if p["first_hour"] is not None]
    n_t = max(len(per), 1)
    return {
        "ready_share_regular_hours": min(shares) if shares else None,
        "ready_share_first_hour": min(firsts) if firsts else None,
        "ready_share_regular_hours_overall": num_all / (denom_all * n_t) if denom_all else None,
        "ready_share_first_hour_overall": num_first / (denom_first * n_t) if denom_first else None,
        "ready_share": {"dates": int(uniq.size), "regular_minutes_per_ticker": denom_all, "tickers": per},
    }
