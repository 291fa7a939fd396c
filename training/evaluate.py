"""The evaluation report: every forecaster on the same regular-hours test samples, as subscribers saw it.

Forecasters (log-move quantiles (N, 5) -> prices via :func:`minutecast.intervals.to_prices`):

* ``model``: the model as served: raw quantiles -> :func:`minutecast.intervals.calibrate_in_time_order`
  (the per-ticker online calibration Spark applies, replayed in time order from a fresh state at the
  start of the test period); ``model_raw``: the same before calibration;
* ``naive``: the window-vol baseline at scale (1, 1); ``baseline``: the same at ``baseline_scale``
  (fitted on the training dates, static); ``baseline_online``: ``baseline`` + online calibration, which
  is what serving publishes while persistence is current;
* ``har``: the HAR-style baseline (:mod:`minutecast.har`, fitted and calibrated on the training dates);
  ``har_online``: the same + online calibration (what the gate holds a model against);
* ``current``: the current model as served (when there is one other than ``model``), for the gate.

Point forecasts: each model's median q50 and persistence (the last close). The online calibration runs
over *all* test samples in time order (serving calibrates every minute it forecasts); the figures are
over the samples whose as-of minute is in regular hours. Scoring functions: :mod:`training.scoring`;
Markdown, plots and files: :mod:`training.report`; the promotion gate: :mod:`training.gate`. This module
re-exports them, so callers use ``training.evaluate`` only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minutecast.errors import ConfigError
from minutecast.har import Har
from minutecast.intervals import baseline_log_quantiles, calibrate_in_time_order, to_prices, window_sigma
from minutecast.registry import PERSISTENCE
from minutecast.serving_model import ServingModel
from minutecast.window import C, regular_hours
from training import scoring as S
from training.data import Samples
from training.gate import COVERAGE_TOL, DM_ALPHA, apply_gate, gate, load_current
from training.report import PLOT_TICKERS, markdown, write_report
from training.scoring import ready_share, ready_share_of
from training.tally import FanSamples, ReportTally

__all__ = ["COVERAGE_TOL", "DM_ALPHA", "Scored", "apply_gate", "build_report", "forecaster_names", "forecasts",
           "gate", "load_current", "markdown", "predict_log_quantiles", "ready_share", "ready_share_of", "report_of",
           "report_of_tally", "score", "score_all", "served_name", "tally_all", "test_sigmas", "ticker_chunks",
           "write_report"]

EVAL_BATCH = 65_536  # windows per predict call when evaluating (bounds memory; serving sends one batch)
EVAL_CHUNK = 16_384  # windows built at once for scoring (whole tickers: a larger ticker is a chunk alone)


def predict_log_quantiles(model: ServingModel, windows: np.ndarray) -> np.ndarray:
    """Raw log-move quantiles (N, 5) of ``windows`` through the serving path, in bounded batches."""
    if not len(windows):
        return np.empty((0, 5))
    return np.concatenate([model.predict_log_quantiles(windows[i:i + EVAL_BATCH])
                           for i in range(0, len(windows), EVAL_BATCH)])


def forecasts(test: Samples, model: ServingModel | None, current: ServingModel | None,
              baseline_scale: tuple[float, float], har: Har | None = None) -> dict[str, np.ndarray]:
    """Price quantiles (N, 5) of every forecaster on all of ``test`` (see the module docstring)."""
    last = test.windows[:, -1, C]
    realised = np.log(test.targets / last)

    def served(raw: np.ndarray) -> np.ndarray:
        return calibrate_in_time_order(test.tickers, test.ends, raw, realised)[0]

    log_q: dict[str, np.ndarray] = {}
    if model is not None:
        log_q["model_raw"] = predict_log_quantiles(model, test.windows)
        log_q["model"] = served(log_q["model_raw"])
    if current is not None and (model is None or current.version != model.version):
        log_q["current"] = served(predict_log_quantiles(current, test.windows))
    log_q["naive"] = baseline_log_quantiles(test.windows, (1.0, 1.0))
    log_q["baseline"] = baseline_log_quantiles(test.windows, baseline_scale)
    log_q["baseline_online"] = served(log_q["baseline"])
    if har is not None:
        log_q["har"] = har.log_quantiles(test.windows)
        log_q["har_online"] = served(log_q["har"])
    return {name: to_prices(q, last) for name, q in log_q.items()}


def forecaster_names(model: ServingModel | None, current: ServingModel | None, har: Har | None = None) -> list[str]:
    """The forecasters :func:`forecasts` returns for ``model``, ``current`` and ``har``, in its order."""
    names = ["model_raw", "model"] if model is not None else []
    if current is not None and (model is None or current.version != model.version):
        names.append("current")
    return [*names, "naive", "baseline", "baseline_online", *(("har", "har_online") if har is not None else ())]


def _iso(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


@dataclass(frozen=True)
class Scored:
    """Test samples once scored: what the report needs of them, without windows (~300 B a sample instead of
    ~5.8 kB). ``preds``: forecaster -> (N, 5) price quantiles. Samples without a usable target are not in it."""

    tickers: np.ndarray  # (N,) str
    ends: np.ndarray  # (N,) int64 as-of minutes
    targets: np.ndarray  # (N,) float64 actual close at t + HORIZON
    last_close: np.ndarray  # (N,) float64 close at t
    sigma: np.ndarray  # (N,) window_sigma of the window (1-minute log-return std)
    preds: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.ends.shape[0])

    @staticmethod
    def concat(parts: Sequence[Scored]) -> Scored:
        """One Scored of ``parts`` in order (they hold the same forecasters)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ConfigError("no test samples (with a target) to evaluate on")
        cat = np.concatenate
        return Scored(cat([p.tickers for p in parts]), cat([p.ends for p in parts]),
                      cat([p.targets for p in parts]), cat([p.last_close for p in parts]),
                      cat([p.sigma for p in parts]), {n: cat([p.preds[n] for p in parts]) for n in parts[0].preds})


def score(test: Samples, model: ServingModel | None, current: ServingModel | None,
          baseline_scale: tuple[float, float], har: Har | None = None) -> Scored:
    """Every forecaster on ``test`` (whole tickers: the online calibration replays each ticker in time order
    from a fresh state, :func:`forecasts`). Samples without a usable target are left out."""
    ok = np.isfinite(test.targets) & (test.targets > 0)
    if not ok.all():
        test = Samples(test.tickers[ok], test.ends[ok], test.windows[ok], test.targets[ok])
    if not len(test):
        return Scored(test.tickers, test.ends, test.targets, test.targets, test.targets, {})
    return Scored(test.tickers, test.ends, test.targets, test.last_close.copy(), window_sigma(test.windows),  # no view
                  forecasts(test, model, current, baseline_scale, har))


def score_all(chunks: Iterable[Samples], n: int, model: ServingModel | None, current: ServingModel | None,
              baseline_scale: tuple[float, float], har: Har | None = None) -> Scored:
    """:func:`score` of each chunk (whole tickers), written into arrays for ``n`` samples allocated once (no
    concatenation: one copy of the scored samples at a time)."""
    names = forecaster_names(model, current, har)
    out = Scored(np.empty(n, "<U12"), np.empty(n, np.int64), np.empty(n), np.empty(n), np.empty(n),
                 {k: np.empty((n, 5)) for k in names})
    pos = 0
    for c in chunks:
        s = score(c, model, current, baseline_scale, har)
        if pos + len(s) > n:
            raise ConfigError(f"more than the {n} test samples counted")
        for a, b in ((out.tickers, s.tickers), (out.ends, s.ends), (out.targets, s.targets),
                     (out.last_close, s.last_close), (out.sigma, s.sigma), *((out.preds[k], s.preds[k]) for k in
                                                                              (names if len(s) else []))):
            a[pos:pos + len(s)] = b
        pos += len(s)
    return Scored(out.tickers[:pos], out.ends[:pos], out.targets[:pos], out.last_close[:pos], out.sigma[:pos],
                  {k: v[:pos] for k, v in out.preds.items()})


def ticker_chunks(test: Samples, size: int = EVAL_CHUNK) -> Iterator[Samples]:
    """``test`` in chunks of whole tickers of about ``size`` samples (a larger ticker is a chunk alone), in
    order of first appearance."""
    names, first = np.unique(test.tickers, return_index=True)
    picked: list[np.ndarray] = []
    n = 0
    for t in names[np.argsort(first, kind="stable")]:
        idx = np.flatnonzero(test.tickers == t)
        if picked and n + idx.size > size:
            yield test.take(np.concatenate(picked))
            picked, n = [], 0
        picked.append(idx)
        n += idx.size
    if picked:
        yield test.take(np.concatenate(picked))


def build_report(test: Samples, model: ServingModel | None, current: ServingModel | None = None, *,
                 baseline_scale: tuple[float, float] = (1.0, 1.0), har: Har | None = None,
                 extra: dict[str, Any] | None = None,
                 chunk: int = EVAL_CHUNK) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """:func:`report_of` the samples ``test``, scored a chunk of whole tickers at a time (:func:`score`),
    and the forecasts behind it (forecaster -> (N, 5) price quantiles on all of ``test`` with a target, in
    its order when each ticker's samples are together) for the plots."""
    scored = Scored.concat([score(c, model, current, baseline_scale, har) for c in ticker_chunks(test, chunk)]
                           if len(test) else [])
    return report_of(scored, model, current, baseline_scale=baseline_scale, har=har, extra=extra), scored.preds


def report_of(scored: Scored, model: ServingModel | None, current: ServingModel | None = None, *,
              baseline_scale: tuple[float, float] = (1.0, 1.0), har: Har | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dict of scored test samples (:func:`score`, :meth:`Scored.concat`). ``model`` None: the
    report is about what serving publishes without a model (persistence + the calibrated baseline with
    online calibration). ``extra`` is merged in last (e.g. :func:`ready_share` of the bars the samples
    came from). The same figures as :func:`report_of_tally` of these samples tallied a chunk at a time."""
    reg = regular_hours(scored.ends)
    tally = ReportTally(list(scored.preds), served_name(model), S.tercile_cuts(scored.sigma[reg]))
    tally.add(scored.tickers, scored.ends, scored.targets, scored.last_close, scored.sigma, scored.preds)
    return report_of_tally(tally, model, current, baseline_scale=baseline_scale, har=har, extra=extra)


def served_name(model: ServingModel | None) -> str:
    """The forecaster whose figures lead the report: the model as served, else what persistence serves."""
    return "model" if model is not None else "baseline_online"


def report_of_tally(tally: ReportTally, model: ServingModel | None, current: ServingModel | None = None, *,
                    baseline_scale: tuple[float, float] = (1.0, 1.0), har: Har | None = None,
                    extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dict from the sufficient statistics of the test samples (:class:`training.tally.ReportTally`,
    every rank's merged): what was scored, the headline figures, the details, then ``extra``."""
    if tally.n == 0:
        raise ConfigError("no test samples with an as-of minute in regular hours")
    point = {name: p.result() for name, p in tally.points.items()}
    dist = {name: t.result() for name, t in tally.intervals.items()}
    dm = _dm_figures(tally)
    report = {**_what_was_scored(tally, model, current, baseline_scale, har),
              **_headline(dist[tally.served], dist, point, dm),
              "up_fraction": tally.up_fraction(),
              # details
              "point": point, "dm": dm, "intervals": dist, "per_ticker": tally.per_ticker()}
    for value in (extra or {}).values():  # a nested ready_share(...) result: its headline figures go on top
        if isinstance(value, dict) and "ready_share_regular_hours" in value:
            report |= value
    report |= extra or {}
    return report


def _dm_figures(tally: ReportTally) -> dict[str, Any] | None:
    """The Diebold-Mariano test of the model's median vs persistence (None without a model), JSON-safe."""
    dm = tally.diebold_mariano()
    if dm is None:
        return None
    dm |= {"loss": "squared error ($), model median vs persistence, per-minute sums (panel)"}
    dm["stat"] = S.finite(dm["stat"])  # +-inf (losses differ by a constant) is not JSON
    return dm


def _what_was_scored(tally: ReportTally, model: ServingModel | None, current: ServingModel | None,
                     baseline_scale: tuple[float, float], har: Har | None) -> dict[str, Any]:
    return {
        "version": model.version if model is not None else PERSISTENCE,
        "current_version": current.version if current is not None else None,
        "served": tally.served,  # the forecaster whose figures are at the top level
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tickers": len(tally.tickers),
        "samples": tally.n,  # regular-hours test samples: what every figure is over
        "samples_all_hours": tally.n_all,
        "period": {"start": _iso(int(tally.period[0])), "end": _iso(int(tally.period[1]))},
        "baseline_scale": [float(baseline_scale[0]), float(baseline_scale[1])],
        "har": har.to_dict() if har is not None else None,  # the HAR baseline's fit (minutecast.har)
        "volatility_tercile_cuts": tally.cuts,  # window_sigma (1-minute log-return std) cut points
    }


def _headline(top: dict[str, Any], dist: dict[str, dict[str, Any]], point: dict[str, dict[str, Any]],
              dm: dict[str, Any] | None) -> dict[str, Any]:
    """The top-level figures, for scripts: the served forecaster's intervals beside the calibrated baseline's,
    the point forecasts beside persistence, the Diebold-Mariano test."""
    base = dist["baseline"]
    gain = (1.0 - top["interval_score_80"] / base["interval_score_80"]
            if top["interval_score_80"] is not None and base["interval_score_80"] else None)
    model, pers, cur = point.get("model", {}), point["persistence"], point.get("current", {})
    har = dist.get("har_online", {}).get("interval_score_80")  # HAR + online calibration, as the model is served
    gain_har = 1.0 - top["interval_score_80"] / har if top["interval_score_80"] is not None and har else None
    return {
        "coverage_80": top["coverage_80"], "coverage_90": top["coverage_90"],
        "interval_score_80": top["interval_score_80"], "interval_score_90": top["interval_score_90"],
        "baseline_interval_score_80": base["interval_score_80"],
        "baseline_interval_score_90": base["interval_score_90"],
        "interval_score_gain_80": S.finite(gain) if gain is not None else None,
        "har_interval_score_80": har,
        "interval_score_gain_vs_har_80": S.finite(gain_har) if gain_har is not None else None,
        "current_interval_score_80": dist.get("current", {}).get("interval_score_80"),
        "model_rmse": model.get("rmse"), "model_mae": model.get("mae"), "model_rmse_bps": model.get("rmse_bps"),
        "persistence_rmse": pers["rmse"], "persistence_mae": pers["mae"], "persistence_rmse_bps": pers["rmse_bps"],
        "current_rmse": cur.get("rmse"),
        "dm_stat": dm["stat"] if dm else None,
        "dm_pvalue": dm["pvalue"] if dm else None,
        "dm_pvalue_worse": dm["pvalue_worse"] if dm else None,
        "model_directional_accuracy": model.get("directional_accuracy"),
    }


# -- training's evaluation: a tally a chunk at a time, no scored samples kept ------------------------------
def test_sigmas(chunks: Iterable[Samples], n: int) -> np.ndarray:
    """The window volatility (window_sigma) of each test sample with a usable target, a chunk at a time: the
    cheap first pass that fixes the volatility tercile cut points before the tally (8 bytes a sample). ``n``:
    the samples counted (an upper bound): filled into one array of that size, not parts joined at the end
    (which holds every sample twice for a moment)."""
    out, k = np.empty(n), 0
    for c in chunks:
        ok = np.isfinite(c.targets) & (c.targets > 0)
        part = window_sigma(c.windows[ok] if not ok.all() else c.windows)
        if k + part.size > n:
            raise ConfigError(f"more than the {n} test samples counted")
        out[k:k + part.size] = part
        k += part.size
    return out[:k]


def tally_all(chunks: Iterable[Samples], n: int, model: ServingModel | None, current: ServingModel | None,
              baseline_scale: tuple[float, float], cuts: Sequence[float],
              har: Har | None = None) -> tuple[ReportTally, FanSamples]:
    """:func:`score` of each chunk (whole tickers) into the report's sufficient statistics and the fan charts'
    samples; nothing per sample is kept. ``n``: the test samples counted (a check), ``cuts``: every rank's
    volatility tercile cut points (:func:`test_sigmas`, :func:`training.scoring.tercile_cuts`)."""
    tally = ReportTally(forecaster_names(model, current, har), served_name(model), cuts)
    fans = FanSamples(served_name(model), PLOT_TICKERS)
    for c in chunks:
        s = score(c, model, current, baseline_scale, har)
        if not len(s):
            continue
        tally.add(s.tickers, s.ends, s.targets, s.last_close, s.sigma, s.preds)
        fans.add(s.tickers, s.ends, s.targets, s.last_close, s.preds)
        if tally.n_all > n:
            raise ConfigError(f"more than the {n} test samples counted")
    return tally, fans
