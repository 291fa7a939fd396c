"""The evaluation report's files: ``report.json``, ``report.md``, a reliability diagram and fan charts.

Written by :func:`write_report` to ``<reports>/<version>/`` (aside, then renamed) and copied to
``<reports>/latest/``. The report dict comes from :func:`training.evaluate.build_report`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure

from minutecast.intervals import LEVELS, PAIRS
from minutecast.schemas import QUANTILE_FIELDS, QUANTILES
from minutecast.window import HORIZON, local_minutes, regular_hours, session_ids
from training.scoring import BUCKETS, TERCILES

PLOT_TICKERS = 30  # a fan chart per ticker, at most this many (most samples first)
RELIABILITY_PNG = "reliability.png"


class ScoredSamples(Protocol):
    """What the plots read of the test samples: :class:`training.data.Samples` or the windowless
    :class:`training.evaluate.Scored` (each (N,) in the order of the forecasts)."""

    @property
    def tickers(self) -> np.ndarray: ...
    @property
    def ends(self) -> np.ndarray: ...
    @property
    def targets(self) -> np.ndarray: ...
    @property
    def last_close(self) -> np.ndarray: ...


@dataclass(frozen=True)
class _Kept:
    tickers: np.ndarray
    ends: np.ndarray
    targets: np.ndarray
    last_close: np.ndarray


ORDER = ("model", "model_raw", "current", "naive", "baseline", "baseline_online", "har", "har_online")  # row order


def label(name: str, report: dict[str, Any]) -> str:
    """Human name of a forecaster of the report."""
    c80, c90 = report.get("baseline_scale", [1.0, 1.0])
    return {"model": f"model {report['version']} as served (+ online calibration)",
            "model_raw": "model, raw (no online calibration)",
            "current": f"current {report.get('current_version')} as served",
            "naive": "naive window-vol interval (scale 1)",
            "baseline": f"calibrated window-vol (scale {c80:.3f} / {c90:.3f}, training dates)",
            "baseline_online": "calibrated window-vol + online calibration"
                               + (" (served now, with persistence)" if report.get("served") != "model" else ""),
            "har": "HAR-style log-volatility regression (calibrated on the training dates)",
            "har_online": "HAR-style + online calibration (the gate's second bar)",
            "persistence": "persistence (last close)"}.get(name, name)


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _names(d: dict[str, Any]) -> list[str]:
    return [n for n in ORDER if n in d]


def _split_table(report: dict[str, Any], key: str, groups: tuple[str, ...], title: str) -> list[str]:
    """Coverage (80 / 90) and 80% interval score of each forecaster per group (time of day, volatility)."""
    names = _names(report["intervals"])
    lines = [f"| {title} | samples | " + " | ".join(f"{n}: cov 80 / 90, IS 80" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for g in groups:
        first = report["intervals"][names[0]][key][g]
        cells = [f"{_fmt(s['coverage_80'], 3)} / {_fmt(s['coverage_90'], 3)}, {_fmt(s['interval_score_80'], 2)}"
                 for s in (report["intervals"][n][key][g] for n in names)]
        lines.append(f"| {g} | {first['samples']} | " + " | ".join(cells) + " |")
    return lines


def max_split_deviation(d: dict[str, Any]) -> float | None:
    """Largest |coverage - nominal| of a forecaster's 80% and 90% intervals over its time-of-day buckets
    and volatility terciles."""
    devs = [abs(s[f"coverage_{round(lv * 100)}"] - lv) for key in ("by_time_of_day", "by_volatility")
            for s in d[key].values() for lv in LEVELS if s.get(f"coverage_{round(lv * 100)}") is not None]
    return max(devs) if devs else None


def targets(report: dict[str, Any]) -> list[tuple[str, str, float | None, bool | None]]:
    """Issue 14's targets: (what, goal, measured, met) for the top-level forecaster of the report."""
    top = report["intervals"].get(report.get("served", "model"), {})
    rmse, pers = report.get("model_rmse"), report.get("persistence_rmse")
    excess = rmse / pers - 1.0 if rmse is not None and pers else None
    rows: list[tuple[str, str, float | None, float, bool]] = [  # (what, goal, measured, bound, upper bound?)
        ("80% coverage - 0.80", "within +-0.015", _dev(report.get("coverage_80"), 0.8), 0.015, True),
        ("90% coverage - 0.90", "within +-0.01", _dev(report.get("coverage_90"), 0.9), 0.01, True),
        ("worst time-of-day / volatility-tercile coverage deviation", "at most 0.03",
         max_split_deviation(top) if top else None, 0.03, True),
        ("80% interval score gain over the calibrated baseline", "at least 0.04",
         report.get("interval_score_gain_80"), 0.04, False),
        ("80% interval score gain over the HAR baseline", "at least 0.01",
         report.get("interval_score_gain_vs_har_80"), 0.01, False),
        ("worst ticker's 80% coverage - 0.80", "within +-0.05", worst_ticker_deviation(report), 0.05, True),
        ("model RMSE / persistence RMSE - 1", "at most 0.0005", excess, 0.0005, True),
        ("regular-hours minutes forecast (worst ticker)", "at least 0.99",
         report.get("ready_share_regular_hours"), 0.99, False),
        ("first-hour minutes forecast (worst ticker)", "at least 0.95", report.get("ready_share_first_hour"), 0.95,
         False),
    ]
    out = []
    for what, goal, x, bound, upper in rows:
        met = None if x is None else (abs(x) <= bound if upper else x >= bound)
        out.append((what, goal, x, met))
    return out


def worst_ticker_deviation(report: dict[str, Any]) -> float | None:
    """The per-ticker table's 80% coverage farthest from 0.80, as a signed deviation."""
    devs = [row["coverage_80"] - 0.8 for row in report.get("per_ticker", []) if row.get("coverage_80") is not None]
    return max(devs, key=abs) if devs else None


def _dev(x: float | None, nominal: float) -> float | None:
    return None if x is None else x - nominal


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What was scored, the top-level figures and the targets."""
    served = report.get("served", "model")
    lines = [f"{report['samples']} regular-hours test samples ({report.get('samples_all_hours')} at all hours), "
             f"{report['tickers']} tickers, {report['period']['start']} .. {report['period']['end']}; forecast: "
             f"the close {HORIZON} minutes ahead. Interval scores, widths and pinball losses in basis points of "
             "the last close. Top-level figures are those of: " + label(served, report) + ".", "",
             "| figure | value |", "|---|---:|"]
    for key, digits in (("coverage_80", 4), ("coverage_90", 4), ("interval_score_80", 3),
                        ("baseline_interval_score_80", 3), ("interval_score_gain_80", 4),
                        ("har_interval_score_80", 3), ("interval_score_gain_vs_har_80", 4), ("interval_score_90", 3),
                        ("baseline_interval_score_90", 3), ("model_rmse", 6), ("persistence_rmse", 6),
                        ("dm_stat", 3), ("dm_pvalue", 4), ("model_directional_accuracy", 4), ("up_fraction", 4),
                        ("ready_share_regular_hours", 4), ("ready_share_first_hour", 4)):
        if key in report:
            lines.append(f"| `{key}` | {_fmt(report[key], digits)} |")
    lines += ["", "| target (issue 14) | goal | measured | met |", "|---|---|---:|---|"]
    lines += [f"| {what} | {goal} | {_fmt(x, 4)} | {'n/a' if met is None else 'yes' if met else 'no'} |"
              for what, goal, x, met in targets(report)]
    return lines


def point_lines(report: dict[str, Any]) -> list[str]:
    lines = ["| forecaster | RMSE ($) | MAE ($) | RMSE (bps) | MAE (bps) | directional acc. |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in ("model", "current", "persistence"):
        m = report["point"].get(name)
        if m:
            lines.append(f"| {label(name, report)} | {_fmt(m['rmse'], 5)} | {_fmt(m['mae'], 5)} | "
                         f"{_fmt(m['rmse_bps'], 3)} | {_fmt(m['mae_bps'], 3)} | {_fmt(m['directional_accuracy'], 4)} |")
    lines += ["", f"\"Always up\" directional accuracy (share of moves that were up): "
              f"{_fmt(report.get('up_fraction'), 4)}."]
    if report.get("dm"):
        dm = report["dm"]
        lines += ["", f"Diebold-Mariano test, model vs persistence ({dm['loss']}; Newey-West lag {dm['lag']}): "
                  f"statistic {_fmt(dm['stat'], 3)}, two-sided p = {_fmt(dm['pvalue'], 4)}, one-sided p (model "
                  f"worse) = {_fmt(dm['pvalue_worse'], 4)}."]
    return lines


def distribution_lines(report: dict[str, Any]) -> list[str]:
    names = _names(report["intervals"])
    lines = ["| forecaster | coverage 80% | coverage 90% | interval score 80% | interval score 90% | "
             "width 80% (bps) | width 90% (bps) | mean pinball |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        d = report["intervals"][n]
        lines.append(f"| {label(n, report)} | {_fmt(d['coverage_80'], 4)} | {_fmt(d['coverage_90'], 4)} | "
                     f"{_fmt(d['interval_score_80'], 3)} | {_fmt(d['interval_score_90'], 3)} | "
                     f"{_fmt(d['width_80_bps'], 2)} | {_fmt(d['width_90_bps'], 2)} | "
                     f"{_fmt(d.get('pinball_mean_bps'), 4)} |")
    lines += ["", "| forecaster | " + " | ".join(f"pinball {f} / share below" for f in QUANTILE_FIELDS) + " |",
              "|---|" + "---:|" * len(QUANTILE_FIELDS)]
    for n in names:
        d = report["intervals"][n]
        lines.append(f"| {n} | " + " | ".join(
            f"{_fmt(d['pinball_bps'][f], 3)} / {_fmt(d['quantile_coverage'][f], 3)}" for f in QUANTILE_FIELDS) + " |")
    lines += ["", "By time of day (as-of minute: first 60 regular minutes, midday, last 30 before the close):", ""]
    lines += _split_table(report, "by_time_of_day", BUCKETS, "time of day")
    lines += ["", "By volatility tercile of the window's 1-minute returns (cut points "
              + ", ".join(f"{c * 1e4:.2f}" for c in report.get("volatility_tercile_cuts", [])) + " bps):", ""]
    lines += _split_table(report, "by_volatility", TERCILES, "volatility")
    return lines


def ticker_lines(report: dict[str, Any]) -> list[str]:
    pt = report["per_ticker"]
    if not pt:
        return []
    ready = (report.get("ready_share") or {}).get("tickers", {})
    rmse_cols = [k for k in pt[0] if k.endswith("_rmse")]
    har = "har_interval_score_80" in pt[0]
    lines = ["| ticker | samples | coverage 80% | coverage 90% | interval score 80% | baseline IS 80% | "
             + ("HAR IS 80% | " if har else "") + " | ".join(f"{k.removesuffix('_rmse')} RMSE ($)" for k in rmse_cols)
             + " | minutes forecast | first hour |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * (len(rmse_cols) + 2 + har)]
    for row in pt:
        r = ready.get(row["ticker"], {})
        lines.append(f"| {row['ticker']} | {row['samples']} | {_fmt(row['coverage_80'], 3)} | "
                     f"{_fmt(row['coverage_90'], 3)} | {_fmt(row['interval_score_80'], 2)} | "
                     f"{_fmt(row['baseline_interval_score_80'], 2)} | "
                     + (f"{_fmt(row['har_interval_score_80'], 2)} | " if har else "")
                     + " | ".join(_fmt(row[k], 5) for k in rmse_cols)
                     + f" | {_fmt(r.get('regular_hours'), 4)} | {_fmt(r.get('first_hour'), 4)} |")
    return lines


def gate_lines(report: dict[str, Any]) -> list[str]:
    g = report.get("gate")
    return [f"Promotion gate: {'PASSED' if g['passed'] else 'REFUSED'}: {g['reason']}"] if g else []


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: headline figures and targets, point and distribution tables, splits, per
    ticker, the gate's decision and the plots."""
    served = report.get("served", "model")
    title = f"model {report['version']}" if served == "model" else "the persistence service"
    rs = report.get("ready_share") or {}
    lines = [f"# Evaluation of {title}", "", *summary_lines(report), "", "## Point forecast (median)", "",
             *point_lines(report), "", "## Distribution", "", *distribution_lines(report), "",
             "## Per ticker" + (f" (minutes forecast: {rs['dates']} dates, {rs['regular_minutes_per_ticker']} "
                                "regular-hours minutes per ticker)" if rs else ""), "", *ticker_lines(report)]
    gl = gate_lines(report)
    if gl:
        lines += ["", *gl]
    for png in report.get("plots", []):
        lines += ["", f"![{png}]({png})"]
    return "\n".join(lines) + "\n"


def plot_reliability(report: dict[str, Any], out: Path) -> str:
    """Nominal level vs empirical coverage: the 5 quantiles (share below) and both central intervals."""
    fig = Figure(figsize=(10, 4.5))  # no pyplot: no global figure state, no GUI backend (PNG via Agg)
    axes = fig.subplots(1, 2)
    names = [n for n in ("model", "model_raw", "naive", "baseline", "baseline_online") if n in report["intervals"]]
    for n in names:
        d = report["intervals"][n]
        axes[0].plot(QUANTILES, [d["quantile_coverage"][f] for f in QUANTILE_FIELDS], marker="o", label=n)
        axes[1].plot(LEVELS, [d[f"coverage_{round(lv * 100)}"] for lv in LEVELS], marker="o", label=n)
    axes[0].plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes[1].plot([0.75, 0.95], [0.75, 0.95], color="grey", linestyle=":", linewidth=1)
    axes[0].set(title="quantiles: share of closes below", xlabel="nominal level", ylabel="empirical")
    axes[1].set(title="central intervals: coverage", xlabel="nominal level", ylabel="empirical",
                xlim=(0.75, 0.95))
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / RELIABILITY_PNG, dpi=90)
    return RELIABILITY_PNG


def plot_fans(report: dict[str, Any], test: ScoredSamples, preds: dict[str, np.ndarray], out: Path,
              tickers: Sequence[str] | None = None) -> list[str]:
    """Fan charts (actual close, median, 80/90% bands of the served forecaster) on each of the
    :data:`PLOT_TICKERS` largest tickers' last test date, regular hours, x in New York time. ``tickers``:
    which, when ``test`` holds only what is plotted (training's :class:`training.tally.FanSamples`)."""
    q = preds[report.get("served", "model")]
    reg = regular_hours(test.ends)
    if tickers is None:
        names, counts = np.unique(test.tickers[reg], return_counts=True)
        tickers = names[np.argsort(-counts, kind="stable")][:PLOT_TICKERS].tolist()
    files = []
    for t in tickers:
        m = reg & (test.tickers == t)
        days = session_ids(test.ends)
        idx = np.flatnonzero(m & (days == days[m].max()))
        idx = idx[np.argsort(test.ends[idx], kind="stable")]
        x = (local_minutes(test.ends[idx] + 60 * HORIZON)).astype("datetime64[s]")  # the target minute, NY
        fig = Figure(figsize=(10, 4))
        ax = fig.subplots()
        for level, alpha in ((0.9, 0.18), (0.8, 0.3)):
            lo, hi = PAIRS[level]
            ax.fill_between(x, q[idx, lo], q[idx, hi], color="tab:blue", alpha=alpha, linewidth=0,
                            label=f"{round(level * 100)}% interval")
        ax.plot(x, q[idx, 2], color="tab:blue", linewidth=0.8, label="median forecast")
        ax.plot(x, test.targets[idx], color="black", linewidth=1.0, label="actual close")
        ax.plot(x, test.last_close[idx], color="grey", linewidth=0.6, alpha=0.6,
                label=f"close {HORIZON} min earlier")
        ax.set_title(f"{t}: {HORIZON}-minute-ahead forecast ({report.get('served')}) by target minute, New York time")
        ax.set_ylabel("price")
        ax.legend(loc="best", fontsize=8)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.set_xlabel(f"New York time, {str(x[0])[:10]}" if idx.size else "New York time")
        fig.tight_layout()
        name = f"fan_{t}.png"
        fig.savefig(out / name, dpi=90)
        files.append(name)
    return files


def write_report(report: dict[str, Any], test: ScoredSamples, preds: dict[str, np.ndarray], out_dir: Path,
                 latest: Path | None = None, fan_tickers: Sequence[str] | None = None) -> Path:
    """report.json + report.md + plots into ``out_dir`` (written aside, then renamed); copy to ``latest``.
    ``test`` and ``preds`` are what :func:`training.evaluate.build_report` was given and returned (or the
    fan charts' samples only, with ``fan_tickers``: :func:`plot_fans`)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        ok = np.isfinite(test.targets) & (test.targets > 0)  # build_report scored (and predicted) these
        if not ok.all():
            test = _Kept(test.tickers[ok], test.ends[ok], test.targets[ok], test.last_close[ok])
        report["plots"] = [plot_reliability(report, tmp), *plot_fans(report, test, preds, tmp, fan_tickers)]
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        os.chmod(tmp, 0o755)  # noqa: S103 - mkdtemp makes 0700; reports are for everyone to read
        _replace_dir(tmp, out_dir)
        if latest is not None:
            latest = Path(latest)
            latest.parent.mkdir(parents=True, exist_ok=True)
            copy = Path(tempfile.mkdtemp(prefix=".latest.", dir=latest.parent))
            shutil.rmtree(copy)
            shutil.copytree(out_dir, copy)
            _replace_dir(copy, latest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` (the old one is renamed away first)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, dst)
