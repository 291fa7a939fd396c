"""``minutecast evaluate``: the evaluation report (intervals, point, gate figures) on recorded bars in files.

    minutecast evaluate --bars ../shared/data/bars-1m --json          # current model (or persistence), test dates
    minutecast evaluate --bars DIR --model 20261122T031500Z-1a2b3c4d --all-dates
    minutecast evaluate --bars DIR --tickers AAPL,MSFT                 # the market ticker is loaded for context
    minutecast evaluate --bars DIR --model V --tickers INTC,MU --val-dates   # leave-tickers-out (training.holdout)

Test samples: regular-hours as-of minutes of the test dates, the last ``MINUTECAST_TEST_FRAC`` of the
dates as in training (the same cut as ``minutecast train`` on the same bars), the validation dates before
them with ``--val-dates`` (held out from the fit: leave-tickers-out validation scores a model's unseen
tickers there, :mod:`training.holdout`), or every date with ``--all-dates`` (data the model never saw).
Without a current model (and no ``--model``) the report is about what serving publishes then: persistence
with the calibrated baseline interval. The baselines (the
calibrated window-vol scale and the HAR-style fit, :mod:`minutecast.har`) are the registry's (fitted by the
newest training run) when it has both, else fitted here on the training dates' regular-hours samples
(``--fit-baseline`` forces that). The report goes to
``<reports>/<version>/files-<time>/`` (or ``--out``); with ``--json`` the last stdout line is the report as
one JSON object (``coverage_80``, ``interval_score_80``, ``baseline_interval_score_80``,
``har_interval_score_80``, ``interval_score_gain_vs_har_80``, ``model_rmse``,
``persistence_rmse``, ``dm_pvalue``, ``ready_share_regular_hours``, ...).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from minutecast import intervals as I  # noqa: N812
from minutecast.errors import ConfigError
from minutecast.har import Har
from minutecast.har import fit as fit_har
from minutecast.registry import BASELINE_FILE, PERSISTENCE, Registry
from minutecast.settings import TrainingSettings
from training import data as D
from training import evaluate as E

FIT_SAMPLES = 50_000  # training-date windows (drawn at random) the baselines are fitted on here


def _iso_day(day: int) -> str:
    """New York day number (days since 1970-01-01) -> YYYY-MM-DD."""
    return (date(1970, 1, 1) + timedelta(days=int(day))).isoformat()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bars", type=Path, required=True, help="directory of recorded bar files (or one file)")
    p.add_argument("--model", default=None, help="registry version (default: the current model, else persistence)")
    p.add_argument("--tickers", default=None, help="comma-separated subset of tickers to score")
    p.add_argument("--market", default=None, help="market-context ticker (default: MINUTECAST_MARKET_TICKER)")
    dates = p.add_mutually_exclusive_group()
    dates.add_argument("--all-dates", action="store_true", help="score every date, not only the test dates")
    dates.add_argument("--val-dates", action="store_true",
                       help="score the validation dates (before the test dates), not the test dates")
    p.add_argument("--fit-baseline", action="store_true",
                   help="fit the baselines (window-vol scale, HAR) on the training dates even if the registry has them")
    p.add_argument("--out", type=Path, default=None, help="report directory (default under <home>/reports)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line (last line)")


def run(args: argparse.Namespace) -> int:
    settings = TrainingSettings()  # the same split fractions as training (MINUTECAST_VAL_FRAC, _TEST_FRAC)
    registry = Registry(settings.models_dir)
    version = args.model or registry.current_version()
    model = registry.load(version) if version else None
    market = args.market or settings.market_ticker
    wanted = [t.strip().upper() for t in args.tickers.split(",")] if args.tickers else None
    bars = D.load_bars(args.bars, None if wanted is None else sorted({*wanted, market}))
    if wanted is not None and not set(wanted) & set(bars):
        raise ConfigError(f"none of {wanted} in {args.bars}")
    cat = D.catalog(bars, market)
    if wanted is not None:
        cat = cat.take(np.flatnonzero(np.isin(cat.tickers, wanted)))
    if not len(cat):
        raise ConfigError(f"no ready windows with targets in {args.bars}")
    days = np.unique(cat.days)
    if args.all_dates:
        test_cat, train_cat = cat, cat.take(np.empty(0, np.int64))
    else:
        cuts = D.split_days(days.tolist(), settings.val_frac, settings.test_frac)
        parts = D.split(cat, cuts)
        test_cat, train_cat = parts["val" if args.val_dates else "test"], parts["train"]
    test = D.regular(test_cat)  # positions only: windows are built a chunk of whole tickers at a time below
    if not len(test):
        raise ConfigError(f"no regular-hours test samples in {args.bars}")

    scale, har, source = baselines(registry, train_cat, cat, refit=args.fit_baseline)
    test_days = np.unique(test.days).tolist()
    scored = {t: s for t, s in bars.items() if wanted is None or t in wanted}
    extra = E.ready_share(scored, days=test_days) | {
        "bars": str(args.bars), "market_ticker": market, "baseline_scale_source": source,
        "test_dates": {"first": _iso_day(test_days[0]), "last": _iso_day(test_days[-1]), "count": len(test_days),
                       "all_dates": bool(args.all_dates), "val_dates": bool(args.val_dates)},
    }
    current = E.load_current(registry) if model is not None and registry.current_version() != version else None
    scored_test = E.score_all(test.ticker_chunks(E.EVAL_CHUNK), len(test), model, current, scale, har)
    report = E.report_of(scored_test, model, current, baseline_scale=scale, har=har, extra=extra)
    out = args.out or settings.reports / (version or PERSISTENCE) / time.strftime("files-%Y%m%dT%H%M%SZ",
                                                                                   time.gmtime())
    E.write_report(report, scored_test, scored_test.preds, out)
    report["report_dir"] = str(out)
    if args.json:
        print(json.dumps(report))
    else:
        print(E.markdown(report))
        print(f"report: {out}")
    return 0


def baselines(registry: Registry, train_cat: D.Catalog, cat: D.Catalog,
              refit: bool) -> tuple[tuple[float, float], Har, str]:
    """The window-vol baseline's scale and the HAR baseline: the registry's (fitted by the newest training run)
    unless ``refit`` or it has none (or a HAR of another specification); else fitted here on up to
    :data:`FIT_SAMPLES` regular-hours windows of the training dates (of every date with ``--all-dates``)."""
    har = registry.har()
    if (registry.root / BASELINE_FILE).exists() and har is not None and not refit:
        return registry.baseline_scale(), har, f"registry ({registry.root / BASELINE_FILE})"
    fit = D.subsample(D.regular(train_cat), FIT_SAMPLES).samples()
    source = "fitted here on the training dates"
    if not len(fit):  # --all-dates without a registry fit: nothing else to fit on
        fit, source = D.subsample(D.regular(cat), FIT_SAMPLES).samples(), "fitted on the scored dates"
    return I.fit_baseline_scale(fit.windows, fit.targets), fit_har([(fit.windows, fit.targets)]), source
