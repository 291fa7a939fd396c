"""Leave-tickers-out validation: how the model does on tickers it never saw, on dates it never fitted (issue #25).

    python -m training.holdout --bars ../shared/data/bars-1m --folds 4 --preset first
    python -m training.holdout --bars DIR --folds 5 --preset default --out build/holdout   # then training.readme

The tickers of ``--bars`` (all but the market ticker, which every run needs for its context) are dealt into
``--folds`` folds in the order of a hash of their names (sha256: no choice fitted to the data). For each fold, one
training run (``python -m training.train``) on the other tickers, in a scratch ``MINUTECAST_HOME`` (the user's
registry is never touched; nothing promoted), then ``minutecast evaluate --val-dates`` of its model on the
fold's tickers: the validation dates, after every training date, so the scored samples are held out in both
tickers and time. The same model is also scored on the fold's tickers on the test dates (``on_test_dates``),
which no step of training reads: what separates the loss from unseen tickers from the loss from another
period. The baselines the model is compared with (the
calibrated window-vol scale, the HAR fit) are those the run fitted on its own training tickers, so they are
out of sample too. Writes ``holdout.json`` (every fold's report and the pooled figures: sample-weighted means
of the folds' interval scores and coverages, ``pooled`` on the validation dates, ``pooled_test_dates``) and
``holdout.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from minutecast.entry import run_main
from minutecast.errors import ConfigError, MinutecastError
from minutecast.settings import TrainingSettings
from training import data as D

POOLED = ("coverage_80", "coverage_90", "interval_score_80", "baseline_interval_score_80", "har_interval_score_80")


def folds(tickers: list[str], k: int, market: str) -> list[list[str]]:
    """Every ticker but ``market`` in one of ``k`` folds: ordered by sha256 of their names (the same order on
    every machine, unrelated to the data), then dealt round-robin (fold sizes differ by one at most); empty
    folds dropped."""
    order = sorted(set(tickers) - {market}, key=lambda t: hashlib.sha256(t.encode()).hexdigest())
    return [sorted(order[i::k]) for i in range(k) if order[i::k]]


def pooled(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The folds' figures as one: each a mean over samples, so weighted by the fold's samples; the gains of
    the pooled interval scores."""
    n = sum(int(r["samples"]) for r in reports)
    out: dict[str, Any] = {"samples": n, "tickers": sum(len(r["per_ticker"]) for r in reports)}
    for key in POOLED:
        out[key] = sum(float(r[key]) * int(r["samples"]) for r in reports) / n
    out["interval_score_gain_80"] = 1.0 - out["interval_score_80"] / out["baseline_interval_score_80"]
    out["interval_score_gain_vs_har_80"] = 1.0 - out["interval_score_80"] / out["har_interval_score_80"]
    cov = [row["coverage_80"] for r in reports for row in r["per_ticker"]]
    out["worst_ticker_coverage_80_deviation"] = max(abs(c - 0.8) for c in cov)
    return out


def run_fold(bars: Path, train: list[str], held: list[str], flags: list[str], home: Path, log: Path) -> dict[str, Any]:
    """One training run on ``train`` (``flags``: the preset and its overrides) and the evaluation of its model on
    ``held`` (validation dates)."""
    env = os.environ | {"MINUTECAST_HOME": str(home)}
    out = home / "run"
    cmd = [sys.executable, "-m", "training.train", "--bars", str(bars), "--tickers", ",".join(train),
           *flags, "--no-promote", "--out", str(out)]
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        if subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode != 0:
            raise MinutecastError(f"the training run of the fold holding {held} failed: see {log}")
        version = json.loads((out / "result.json").read_text())["version"]
        reports: list[dict[str, Any]] = []
        for dates in (["--val-dates"], []):  # the validation dates, then the test dates
            ev = [sys.executable, "-m", "minutecast.cli", "evaluate", "--bars", str(bars), "--model", version,
                  "--tickers", ",".join(held), *dates, "--json", "--out", str(home / f"report{len(reports)}")]
            f.write(f"$ {' '.join(ev)}\n")
            f.flush()
            done = subprocess.run(ev, env=env, stdout=subprocess.PIPE, stderr=f, text=True, check=False)
            if done.returncode != 0:
                raise MinutecastError(f"the evaluation of the fold holding {held} failed: see {log}")
            reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
    keep = ("samples", "per_ticker", "test_dates", *POOLED, "interval_score_gain_80", "interval_score_gain_vs_har_80")
    return reports[0] | {"held_out": held, "trained_on": train,
                         "on_test_dates": {k: reports[1][k] for k in keep if k in reports[1]}}


def markdown(doc: dict[str, Any]) -> str:
    """The page's section: one row per fold and the pooled row, then the held-out tickers."""
    lines = [f"Leave-tickers-out validation (`{doc['command']}`, {doc['created_at']}): {len(doc['folds'])} folds, "
             f"each trained (preset `{doc['preset']}`) without its tickers and scored on them on the validation "
             "dates, with baselines fitted on the training tickers only.", "",
             "| held out | samples | coverage 80% | coverage 90% | IS 80 | window-vol IS 80 | HAR IS 80 | gain vs "
             "window-vol | gain vs HAR |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [(", ".join(f["held_out"]), f) for f in doc["folds"]] + [("**pooled**", doc["pooled"])]
    for name, r in rows:
        lines.append(f"| {name} | {r['samples']} | {r['coverage_80']:.3f} | {r['coverage_90']:.3f} | "
                     f"{r['interval_score_80']:.2f} | {r['baseline_interval_score_80']:.2f} | "
                     f"{r['har_interval_score_80']:.2f} | {r['interval_score_gain_80']:+.2%} | "
                     f"{r['interval_score_gain_vs_har_80']:+.2%} |")
    if "pooled_test_dates" in doc:  # holdout.json written before it scored the test dates: no such section
        lines += ["", "The same models on the same held-out tickers, on the test dates (read by no step of training):",
                  "", "| held out | samples | coverage 80% | coverage 90% | gain vs window-vol | gain vs HAR |",
                  "|---|---:|---:|---:|---:|---:|"]
        test_rows = [(", ".join(f["held_out"]), f["on_test_dates"]) for f in doc["folds"]]
        for name, r in [*test_rows, ("**pooled**", doc["pooled_test_dates"])]:
            lines.append(f"| {name} | {r['samples']} | {r['coverage_80']:.3f} | {r['coverage_90']:.3f} | "
                         f"{r['interval_score_gain_80']:+.2%} | {r['interval_score_gain_vs_har_80']:+.2%} |")
    lines += ["", "| held-out ticker | samples | coverage 80% | IS 80 | HAR IS 80 |", "|---|---:|---:|---:|---:|"]
    for f in doc["folds"]:
        for row in f["per_ticker"]:
            lines.append(f"| {row['ticker']} | {row['samples']} | {row['coverage_80']:.3f} | "
                         f"{row['interval_score_80']:.2f} | {row['har_interval_score_80']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bars", type=Path, required=True, help="directory of recorded bar files")
    p.add_argument("--folds", type=int, default=4, help="folds the tickers are dealt into (one training run each)")
    p.add_argument("--preset", default="first", help="model preset of every fold's run")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: the preset's)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="training samples of every run (default: the preset's)")
    p.add_argument("--out", type=Path, default=None, help="where holdout.json and holdout.md go "
                   "(default <home>/reports/holdout-<time>)")
    args = p.parse_args(argv)
    settings = TrainingSettings()
    market = settings.market_ticker
    tickers = sorted(D.load_bars(args.bars))  # from the bars, not file names: a file-per-day layout holds many
    if market not in tickers:
        raise ConfigError(f"the market ticker {market} (MINUTECAST_MARKET_TICKER) is not in {args.bars}")
    fs = folds(tickers, args.folds, market)
    if len(fs) < 2:
        raise ConfigError(f"{len(tickers)} tickers in {args.bars}: too few for {args.folds} folds")
    out = args.out or settings.reports / time.strftime("holdout-%Y%m%dT%H%M%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    flags = ["--preset", args.preset, *(["--epochs", str(args.epochs)] if args.epochs is not None else []),
             *(["--max-samples", str(args.max_samples)] if args.max_samples is not None else [])]
    reports = []
    for i, held in enumerate(fs):
        train = [t for t in tickers if t not in held]
        print(f"fold {i + 1}/{len(fs)}: training on {len(train)} tickers, holding out {held}", flush=True)
        with tempfile.TemporaryDirectory(prefix="minutecast-holdout-") as home:
            reports.append(run_fold(args.bars, train, held, flags, Path(home), out / "holdout.log"))
        r = reports[-1]
        t = r["on_test_dates"]
        print(f"  validation dates: coverage 80% {r['coverage_80']:.3f}, gain vs HAR "
              f"{r['interval_score_gain_vs_har_80']:+.2%}, vs window-vol {r['interval_score_gain_80']:+.2%}; test "
              f"dates: {t['coverage_80']:.3f}, {t['interval_score_gain_vs_har_80']:+.2%}, "
              f"{t['interval_score_gain_80']:+.2%}", flush=True)
    command = " ".join(["python -m training.holdout", "--bars", str(args.bars), "--folds", str(args.folds), *flags])
    doc = {"command": command, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "preset": args.preset, "market_ticker": market, "pooled": pooled(reports),
           "pooled_test_dates": pooled([r["on_test_dates"] for r in reports]), "folds": reports}
    (out / "holdout.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "holdout.md").write_text(markdown(doc) + "\n")
    print(markdown(doc))
    print(json.dumps({"out": str(out), **doc["pooled"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, "training.holdout"))
