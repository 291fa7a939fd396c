"""Sufficient statistics of the evaluation report, accumulated a chunk of scored test samples at a time.

The report's figures are means, rates and a Diebold-Mariano test, so counts and sums are enough: per
forecaster and group (all, each time-of-day bucket, each volatility tercile) the interval hits, interval
scores and widths; per point forecaster the squared and absolute errors and the direction hits; per ticker
the per-ticker table's sums; per as-of minute the loss differences' sums (the Diebold-Mariano series). What
a rank holds grows with the tickers and minutes, not with the test samples (issue #28). The volatility
tercile cut points must be known before the first chunk (a cheap first pass over the samples' window
volatility: :func:`training.evaluate.test_sigmas`). Tallies of disjoint samples :meth:`ReportTally.merge`
(the ranks' tallies on rank 0). The whole-array definitions of the same figures are
:func:`training.scoring.interval_metrics` / ``point_metrics`` / ``diebold_mariano``; tests check the two agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minutecast.intervals import LEVELS, PAIRS
from minutecast.schemas import QUANTILE_FIELDS, QUANTILES
from minutecast.window import BUCKETS, regular_hours, session_ids, time_buckets
from training import scoring as S

N_GROUPS = 1 + len(BUCKETS) + len(S.TERCILES)  # group 0: all samples; then the buckets; then the terciles
# Per-ticker table columns: (report key, forecaster, metric).
TICKER_COLUMNS = (("coverage_80", "served", "coverage_80"), ("coverage_90", "served", "coverage_90"),
                  ("interval_score_80", "served", "interval_score_80"),
                  ("baseline_interval_score_80", "baseline", "interval_score_80"),
                  ("har_interval_score_80", "har_online", "interval_score_80"))  # when the HAR baseline is scored


def _mean(total: float, n: float) -> float | None:
    return S.finite(total / n) if n else None


def per_sample_intervals(q: np.ndarray, actual: np.ndarray, last: np.ndarray) -> np.ndarray:
    """(N, 3 x len(LEVELS)) per sample and level: hit (0/1), interval score (bps), width (bps)."""
    cols = []
    for level in LEVELS:
        lo, hi = PAIRS[level]
        cols += [S.covered(actual, q[:, lo], q[:, hi]).astype(np.float64),
                 S.bps(S.winkler(actual, q[:, lo], q[:, hi], level), last), S.bps(q[:, hi] - q[:, lo], last)]
    return np.stack(cols, axis=1)


@dataclass
class IntervalTally:
    """One forecaster's distribution sums: per group, the count and per level (hits, interval score, width);
    over all samples, per quantile the pinball loss (bps) and the closes at or below it."""

    n: np.ndarray = field(default_factory=lambda: np.zeros(N_GROUPS))
    sums: np.ndarray = field(default_factory=lambda: np.zeros((N_GROUPS, 3 * len(LEVELS))))
    pinball: np.ndarray = field(default_factory=lambda: np.zeros(len(QUANTILES)))
    below: np.ndarray = field(default_factory=lambda: np.zeros(len(QUANTILES)))

    def add(self, q: np.ndarray, actual: np.ndarray, last: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Add samples; ``groups`` (2N,): each sample's time-of-day row, then its tercile row (1..). Returns
        their per-sample interval values (:func:`per_sample_intervals`)."""
        q = np.asarray(q, dtype=np.float64)
        values = per_sample_intervals(q, actual, last)
        self.n[0] += len(actual)
        self.sums[0] += values.sum(axis=0)
        self.n[1:] += np.bincount(groups, minlength=N_GROUPS)[1:]
        both = np.concatenate([values, values])
        for k in range(both.shape[1]):
            self.sums[1:, k] += np.bincount(groups, weights=both[:, k], minlength=N_GROUPS)[1:]
        for i, tau in enumerate(QUANTILES):
            self.pinball[i] += S.bps(S.pinball(actual, q[:, i], tau), last).sum()
            self.below[i] += np.count_nonzero(actual <= q[:, i])
        return values

    def merge(self, other: IntervalTally) -> None:
        self.n += other.n
        self.sums += other.sums
        self.pinball += other.pinball
        self.below += other.below

    def summary(self, g: int) -> dict[str, Any]:
        """:func:`training.scoring.interval_metrics`' summary of group ``g``."""
        n = float(self.n[g])
        out: dict[str, Any] = {"samples": int(n)}
        for k, level in enumerate(LEVELS):
            pct = round(level * 100)
            hit, score, width = self.sums[g, 3 * k:3 * k + 3]
            out |= {f"coverage_{pct}": _mean(hit, n), f"interval_score_{pct}": _mean(score, n),
                    f"width_{pct}_bps": _mean(width, n)}
        return out

    def result(self) -> dict[str, Any]:
        """What :func:`training.scoring.interval_metrics` gives on the same samples."""
        out = self.summary(0)
        n = float(self.n[0])
        if n:
            pin = {f: _mean(self.pinball[i], n) for i, f in enumerate(QUANTILE_FIELDS)}
            out["pinball_bps"] = pin
            out["pinball_mean_bps"] = S.finite(np.mean([v for v in pin.values() if v is not None]))
            out["quantile_coverage"] = {f: _mean(self.below[i], n) for i, f in enumerate(QUANTILE_FIELDS)}
        out["by_time_of_day"] = {name: self.summary(1 + i) for i, name in enumerate(BUCKETS)}
        out["by_volatility"] = {name: self.summary(1 + len(BUCKETS) + i) for i, name in enumerate(S.TERCILES)}
        return out


POINT_SUMS = ("se", "ae", "se_bps", "ae_bps", "moved", "dir_hit", "dir_called")


@dataclass
class PointTally:
    """One point forecaster's sums: squared / absolute errors ($ and bps), and among moved closes the
    direction hits and the forecasts that call a move."""

    n: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(len(POINT_SUMS)))

    def add(self, pred: np.ndarray, actual: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Add samples; returns their squared errors ($^2)."""
        err = np.asarray(pred, dtype=np.float64) - actual
        eb = S.bps(err, last)
        moved = actual != last
        pdir, tdir = np.sign(pred - last)[moved], np.sign(actual - last)[moved]
        se = err ** 2
        self.n += int(err.size)
        self.sums += [se.sum(), np.abs(err).sum(), (eb ** 2).sum(), np.abs(eb).sum(), np.count_nonzero(moved),
                      np.count_nonzero(pdir == tdir), np.count_nonzero(pdir != 0)]
        return se

    def merge(self, other: PointTally) -> None:
        self.n += other.n
        self.sums += other.sums

    def result(self) -> dict[str, Any]:
        """What :func:`training.scoring.point_metrics` gives on the same samples."""
        if not self.n:
            return {"samples": 0, "rmse": None, "mae": None, "rmse_bps": None, "mae_bps": None,
                    "directional_accuracy": None}
        se, ae, se_bps, ae_bps, moved, hit, called = self.sums
        return {"samples": self.n, "rmse": S.finite(math.sqrt(se / self.n)), "mae": _mean(ae, self.n),
                "rmse_bps": S.finite(math.sqrt(se_bps / self.n)), "mae_bps": _mean(ae_bps, self.n),
                "directional_accuracy": _mean(hit, moved) if called else None}


@dataclass
class MinuteSums:
    """Per as-of minute: the sum and count of a per-sample series (the Diebold-Mariano loss differences)."""

    minutes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    sums: np.ndarray = field(default_factory=lambda: np.empty(0))
    counts: np.ndarray = field(default_factory=lambda: np.empty(0))

    def add(self, minutes: np.ndarray, values: np.ndarray, counts: np.ndarray | None = None) -> None:
        m = np.concatenate([self.minutes, np.asarray(minutes, np.int64)])
        uniq, inv = np.unique(m, return_inverse=True)
        inv = inv.ravel()
        c = np.ones(len(minutes)) if counts is None else counts
        self.sums = np.bincount(inv, weights=np.concatenate([self.sums, values]), minlength=uniq.size)
        self.counts = np.bincount(inv, weights=np.concatenate([self.counts, c]), minlength=uniq.size)
        self.minutes = uniq

    def merge(self, other: MinuteSums) -> None:
        self.add(other.minutes, other.sums, other.counts)


class ReportTally:
    """Everything :func:`training.evaluate.report_of` needs of the regular-hours test samples, as sums.

    ``names``: the forecasters scored; ``served``: the one whose figures lead the report (and the per-ticker
    table); ``cuts``: the volatility tercile cut points (window_sigma) of ALL the samples to be added."""

    def __init__(self, names: Sequence[str], served: str, cuts: Sequence[float]) -> None:
        self.served, self.cuts = served, [float(c) for c in cuts]
        self.intervals = {n: IntervalTally() for n in names}
        self.points = {n: PointTally() for n in (*(p for p in ("model", "current") if p in names), "persistence")}
        self.dm = MinuteSums() if "model" in names else None
        # the per-ticker table's columns of the forecasters scored
        self.columns = [c for c in TICKER_COLUMNS if c[1] == "served" or c[1] in names]
        self.tickers: dict[str, np.ndarray] = {}  # ticker -> [samples, columns' sums, squared error sums]
        self.n_all, self.up, self.moved = 0, 0, 0
        self.period = (math.inf, -math.inf)  # as-of minutes, every hour

    @property
    def n(self) -> int:
        return int(self.intervals[self.served].n[0])

    def add(self, tickers: np.ndarray, ends: np.ndarray, actual: np.ndarray, last: np.ndarray, sigma: np.ndarray,
            preds: dict[str, np.ndarray]) -> None:
        """Add scored samples (:class:`training.evaluate.Scored` fields); those outside regular hours count
        towards ``samples_all_hours`` and the period only."""
        self.n_all += len(ends)
        if len(ends):
            self.period = (min(self.period[0], int(ends.min())), max(self.period[1], int(ends.max())))
        reg = regular_hours(ends)
        if not reg.all():
            tickers, ends, actual, last, sigma = (a[reg] for a in (tickers, ends, actual, last, sigma))
            preds = {k: v[reg] for k, v in preds.items()}
        if not len(ends):
            return
        tercile = np.searchsorted(self.cuts, sigma, side="right")
        groups = np.concatenate([1 + time_buckets(ends), 1 + len(BUCKETS) + tercile])  # each sample twice
        values = {n: self.intervals[n].add(q, actual, last, groups) for n, q in preds.items()}
        errors = self._add_points(preds, actual, last, ends)
        self._add_tickers(tickers, values, errors)
        moved = actual != last
        self.moved += int(np.count_nonzero(moved))
        self.up += int(np.count_nonzero(actual[moved] > last[moved]))

    def _add_points(self, preds: dict[str, np.ndarray], actual: np.ndarray, last: np.ndarray,
                    ends: np.ndarray) -> dict[str, np.ndarray]:
        """The point forecasters' sums, and the model-vs-persistence loss differences per minute."""
        medians = {n: preds[n][:, 2] for n in self.points if n != "persistence"} | {"persistence": last}
        errors = {n: self.points[n].add(p, actual, last) for n, p in medians.items()}
        if self.dm is not None:
            # the ($) losses as weighted in training.scoring.diebold_mariano: price units
            self.dm.add(ends, (medians["model"] - actual) ** 2 - (last - actual) ** 2)
        return errors

    def _add_tickers(self, tickers: np.ndarray, values: dict[str, np.ndarray], errors: dict[str, np.ndarray]) -> None:
        """Per-ticker sums: samples, the table columns' per-sample values, each point forecaster's squared error."""
        col = {m: 3 * k + j for k, lv in enumerate(LEVELS) for j, m in
               enumerate((f"coverage_{round(lv * 100)}", f"interval_score_{round(lv * 100)}"))}
        cols = [np.ones(len(tickers))]
        cols += [values[self.served if who == "served" else who][:, col[metric]] for _, who, metric in self.columns]
        cols += list(errors.values())
        names, inv = np.unique(tickers, return_inverse=True)
        sums = np.stack([np.bincount(inv.ravel(), weights=c, minlength=names.size) for c in cols], axis=1)
        for t, row in zip(names.tolist(), sums, strict=True):
            self.tickers[t] = self.tickers[t] + row if t in self.tickers else row

    def merge(self, other: ReportTally) -> None:
        """Add another tally of other samples (another rank's), made with the same cut points."""
        for n, it in other.intervals.items():
            self.intervals[n].merge(it)
        for n, p in other.points.items():
            self.points[n].merge(p)
        if self.dm is not None and other.dm is not None:
            self.dm.merge(other.dm)
        for t, row in other.tickers.items():
            self.tickers[t] = self.tickers[t] + row if t in self.tickers else row
        self.n_all, self.up, self.moved = self.n_all + other.n_all, self.up + other.up, self.moved + other.moved
        self.period = (min(self.period[0], other.period[0]), max(self.period[1], other.period[1]))

    def per_ticker(self) -> list[dict[str, Any]]:
        """The report's per-ticker table (sorted by ticker)."""
        rows = []
        for t in sorted(self.tickers):
            n, *rest = self.tickers[t]
            row: dict[str, Any] = {"ticker": t, "samples": int(n)}
            k = len(self.columns)
            row |= {key: _mean(s, n) for (key, _, _), s in zip(self.columns, rest[:k], strict=True)}
            row |= {f"{p}_rmse": S.finite(math.sqrt(se / n)) for p, se in zip(self.points, rest[k:], strict=True)}
            rows.append(row)
        return rows

    def diebold_mariano(self) -> dict[str, Any] | None:
        """:func:`training.scoring.diebold_mariano` of the model's median vs persistence (panel, per minute)."""
        if self.dm is None:
            return None
        return S.diebold_mariano_of_sums(self.dm.sums, self.dm.counts)

    def up_fraction(self) -> float | None:
        return S.finite(self.up / self.moved) if self.moved else None


@dataclass
class FanSamples:
    """For the fan charts: each ticker's regular-hours sample count and, for the :data:`limit` tickers with the
    most samples (ties: by name, as :func:`training.report.plot_fans` picks), the served forecaster's samples
    of its last test date. Tickers come in whole (a chunk of whole tickers; a ticker split across ranks is
    counted in full on rank 0 but its last date is taken from the rank that kept it)."""

    served: str
    limit: int
    counts: dict[str, int] = field(default_factory=dict)
    kept: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)  # ends, targets, last, q (served)

    def add(self, tickers: np.ndarray, ends: np.ndarray, actual: np.ndarray, last: np.ndarray,
            preds: dict[str, np.ndarray]) -> None:
        reg = np.flatnonzero(regular_hours(ends))
        days = session_ids(ends[reg])
        order = np.lexsort((ends[reg], days, tickers[reg]))  # by ticker, then date, then minute
        idx, days, names = reg[order], days[order], tickers[reg][order]
        uniq, first, n = np.unique(names, return_index=True, return_counts=True)
        for t, lo, k in zip(uniq.tolist(), first, n, strict=True):
            self.counts[t] = self.counts.get(t, 0) + int(k)
            hi = lo + k
            day_lo = lo + int(np.searchsorted(days[lo:hi], days[hi - 1]))
            pick = idx[day_lo:hi]
            self._keep(t, (ends[pick], actual[pick], last[pick], preds[self.served][pick]))
        self._prune()

    def _keep(self, t: str, part: tuple[np.ndarray, ...]) -> None:
        old = self.kept.get(t)
        if old is not None and session_ids(old[0][-1:])[0] >= session_ids(part[0][-1:])[0]:
            return
        self.kept[t] = part

    def _prune(self) -> None:
        ranked = sorted(self.kept, key=lambda t: (-self.counts[t], t))
        for t in ranked[self.limit:]:
            del self.kept[t]

    def merge(self, other: FanSamples) -> None:
        for t, c in other.counts.items():
            self.counts[t] = self.counts.get(t, 0) + c
        for t, part in other.kept.items():
            self._keep(t, part)
        self._prune()

    def chosen(self) -> list[str]:
        """The tickers to plot, most samples first."""
        return sorted(self.kept, key=lambda t: (-self.counts[t], t))

    def samples(self) -> tuple[Plotted, dict[str, np.ndarray]]:
        """The kept samples and the served forecaster's quantiles on them, for :func:`training.report.write_report`
        (with ``fan_tickers=`` :meth:`chosen`)."""
        names = self.chosen()
        parts = [self.kept[t] for t in names]
        cat = (lambda i, empty: np.concatenate([p[i] for p in parts]) if parts else empty)  # noqa: E731
        tickers = np.concatenate([np.full(len(p[0]), t) for t, p in zip(names, parts, strict=True)]) if parts \
            else np.empty(0, "<U12")
        return (Plotted(tickers, cat(0, np.empty(0, np.int64)), cat(1, np.empty(0)), cat(2, np.empty(0))),
                {self.served: cat(3, np.empty((0, len(QUANTILES))))})


@dataclass(frozen=True)
class Plotted:
    """The fan charts' samples (:class:`training.report.ScoredSamples`)."""

    tickers: np.ndarray
    ends: np.ndarray
    targets: np.ndarray
    last_close: np.ndarray
