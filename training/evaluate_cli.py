"""``minutecast evaluate``: the evaluation report of a model vs persistence on recorded bars in files.

    minutecast evaluate --bars ../shared/data/bars-1m                 # current model, all given data
    minutecast evaluate --bars DIR --model 20261122T031500Z-1a2b3c4d --json

The test period is all of the given data (every ready window with a bar 5 minutes later). Files are in
the yfinance CSV layout, plain or ``.gz``, one per ticker (``AAPL.csv.gz``). The report goes to
``<reports>/<version>/files-<time>/``; with ``--json`` the last stdout line is one JSON object
(``tickers``, ``samples``, ``model_rmse``, ``persistence_rmse``, ``model_directional_accuracy``, ...).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bars", type=Path, required=True, help="directory of <TICKER>.csv[.gz] files (or one file)")
    p.add_argument("--model", default=None, help="registry version (default: the current model)")
    p.add_argument("--tickers", default=None, help="comma-separated subset of tickers")
    p.add_argument("--out", type=Path, default=None, help="report directory (default under <home>/reports)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line (last line)")


def run(args: argparse.Namespace) -> int:
    from minutecast.errors import ConfigError, ModelError
    from minutecast.registry import Registry
    from minutecast.settings import TrainingSettings
    from training import data as D
    from training import evaluate as E

    settings = TrainingSettings()
    if not args.bars.exists():
        raise ConfigError(f"--bars {args.bars}: no such file or directory")
    registry = Registry(settings.models_dir)
    version = args.model or registry.current_version()
    if version is None:
        raise ModelError(f"no current model under {settings.models_dir}: train one or pass --model VERSION")
    model = registry.load(version)
    files = D.bar_files(args.bars)
    samples = D.build_samples(D.load_files(files, args.tickers.split(",") if args.tickers else None))
    if not len(samples):
        raise ConfigError(f"no ready windows with targets in {args.bars} ({len(files)} files)")
    report, preds = E.build_report(samples, model, extra={"bars": str(args.bars), "files": len(files)})
    out = args.out or settings.reports / version / time.strftime("files-%Y%m%dT%H%M%SZ", time.gmtime())
    E.write_report(report, samples, preds, out)
    report["report_dir"] = str(out)
    if args.json:
        print(json.dumps(report))
    else:
        print(E.markdown(report))
        print(f"report: {out}")
    return 0
