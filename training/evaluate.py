"""The evaluation report and the promotion gate.

For the model AND the persistence baseline (forecast = last close) on the same test samples:
RMSE and MAE in price units, RMSE in basis points of the last close, RMSE on per-ticker min-max
normalised prices (the scale the literature quotes), directional accuracy (share of samples whose price
moved where the forecast has the move's sign; persistence forecasts no move, so it has none). Plus a
per-ticker table and forecast-vs-actual plots. Written as ``report.json``, ``report.md`` and PNGs to
``<reports>/<version>/`` (and copied to ``<reports>/latest/``).

The gate: a new model becomes current only if its test RMSE (price units) is not worse than
persistence's and not worse than the current model's on the same samples.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from minutecast.errors import ModelError
from minutecast.registry import PERSISTENCE, Registry, ServingModel
from training.data import Samples

log = logging.getLogger(__name__)
PLOT_TICKERS = 3  # forecast-vs-actual plots for this many tickers (most samples first)
EVAL_BATCH = 65_536  # windows per predict call when evaluating (bounds memory; serving sends one batch)


def predict(model: ServingModel, samples: Samples) -> np.ndarray:
    """Forecast closes (N,) through the serving path (make_inputs -> model -> to_price)."""
    if not len(samples):
        return np.empty(0)
    return np.concatenate([model.predict_prices(samples.windows[i:i + EVAL_BATCH])
                           for i in range(0, len(samples), EVAL_BATCH)])


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def metrics(pred: np.ndarray, samples: Samples) -> dict[str, Any]:
    """Error metrics of forecast closes ``pred`` (N,) against the samples' targets."""
    actual, last = samples.targets, samples.windows[:, -1, 0]
    err = pred - actual
    # Min-max normalise per ticker over the test period (actual and last closes both define the range).
    norm_err = np.empty_like(err)
    for t in np.unique(samples.tickers):
        m = samples.tickers == t
        lo = min(actual[m].min(), last[m].min())
        span = max(actual[m].max(), last[m].max()) - lo
        norm_err[m] = err[m] / span if span > 0 else 0.0
    moved = actual != last
    pred_dir, true_dir = np.sign(pred - last), np.sign(actual - last)
    predicts_move = bool(np.any(pred_dir[moved] != 0)) if moved.any() else False
    return {
        "samples": int(err.size),
        "rmse": _finite(np.sqrt(np.mean(err ** 2))) if err.size else None,
        "mae": _finite(np.mean(np.abs(err))) if err.size else None,
        "rmse_bps": _finite(np.sqrt(np.mean((err / last * 1e4) ** 2))) if err.size else None,
        "rmse_minmax": _finite(np.sqrt(np.mean(norm_err ** 2))) if err.size else None,
        # Among samples whose price moved: forecast's move has the actual move's sign. None when the
        # forecaster never predicts a move (persistence).
        "directional_accuracy": _finite(np.mean(pred_dir[moved] == true_dir[moved])) if predicts_move else None,
    }


def build_report(samples: Samples, model: ServingModel | None, current: ServingModel | None = None,
                 *, extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The report dict and the forecasts behind it (name -> (N,) closes) for plotting."""
    if not len(samples):
        raise ValueError("no test samples to evaluate on")
    preds: dict[str, np.ndarray] = {}
    if model is not None:
        preds["model"] = predict(model, samples)
    if current is not None and (model is None or current.version != model.version):
        preds["current"] = predict(current, samples)
    preds["persistence"] = samples.windows[:, -1, 0].copy()  # forecast = last close
    overall = {name: metrics(p, samples) for name, p in preds.items()}
    per_ticker = []
    for t in np.unique(samples.tickers):
        idx = np.flatnonzero(samples.tickers == t)
        sub = samples.take(idx)
        row: dict[str, Any] = {"ticker": str(t), "samples": int(idx.size)}
        for name, p in preds.items():
            m = metrics(p[idx], sub)
            row |= {f"{name}_rmse": m["rmse"], f"{name}_rmse_bps": m["rmse_bps"],
                    f"{name}_directional_accuracy": m["directional_accuracy"]}
        per_ticker.append(row)
    moved = samples.targets != samples.windows[:, -1, 0]
    report: dict[str, Any] = {
        "version": model.version if model else PERSISTENCE,
        "current_version": current.version if current else None,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tickers": int(np.unique(samples.tickers).size),
        "samples": len(samples),
        "period": {"start": _iso(int(samples.ends.min())), "end": _iso(int(samples.ends.max()))},
        "up_fraction": _finite(float(np.mean(samples.targets[moved] > samples.windows[moved, -1, 0])))
        if moved.any() else None,  # share of moves that were up: what "always up" would score
        "metrics": overall,
        "model_rmse": overall.get("model", {}).get("rmse"),
        "model_mae": overall.get("model", {}).get("mae"),
        "model_directional_accuracy": overall.get("model", {}).get("directional_accuracy"),
        "persistence_rmse": overall["persistence"]["rmse"],
        "persistence_mae": overall["persistence"]["mae"],
        "current_rmse": overall.get("current", {}).get("rmse"),
        "per_ticker": per_ticker,
    }
    report |= extra or {}
    return report, preds


def _iso(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: summary table (model beside persistence) and the per-ticker table."""
    lines = [f"# Evaluation of model {report['version']}", "",
             f"{report['samples']} test samples, {report['tickers']} tickers, "
             f"{report['period']['start']} .. {report['period']['end']} (forecast: close 5 minutes ahead).", "",
             "| forecaster | RMSE ($) | MAE ($) | RMSE (bps) | RMSE (min-max) | directional acc. |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in report["metrics"].items():
        label = {"model": f"model {report['version']}", "current": f"current {report.get('current_version')}",
                 "persistence": "persistence (last close)"}[name]
        lines.append(f"| {label} | {_fmt(m['rmse'])} | {_fmt(m['mae'])} | {_fmt(m['rmse_bps'], 2)} | "
                     f"{_fmt(m['rmse_minmax'], 5)} | {_fmt(m['directional_accuracy'], 3)} |")
    lines += ["", f"Share of price moves that were up (the \"always up\" directional accuracy): "
              f"{_fmt(report.get('up_fraction'), 3)}.", ""]
    names = list(report["metrics"])
    lines += ["| ticker | samples | " + " | ".join(f"{n} RMSE ($)" for n in names) + " | "
              + " | ".join(f"{n} bps" for n in names) + " |",
              "|---|---:|" + "---:|" * (2 * len(names))]
    for row in report["per_ticker"]:
        lines.append(f"| {row['ticker']} | {row['samples']} | "
                     + " | ".join(_fmt(row[f"{n}_rmse"]) for n in names) + " | "
                     + " | ".join(_fmt(row[f"{n}_rmse_bps"], 2) for n in names) + " |")
    if report.get("gate"):
        g = report["gate"]
        lines += ["", f"Promotion gate: {'PASSED' if g['passed'] else 'REFUSED'}: {g['reason']}"]
    for png in report.get("plots", []):
        lines += ["", f"![{png}]({png})"]
    return "\n".join(lines) + "\n"


def plot(samples: Samples, preds: dict[str, np.ndarray], out_dir: Path) -> list[str]:
    """Forecast vs actual on the last test date of the tickers with most samples; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, counts = np.unique(samples.tickers, return_counts=True)
    files = []
    days = samples.days
    for t in names[np.argsort(-counts, kind="stable")][:PLOT_TICKERS]:
        m = samples.tickers == t
        idx = np.flatnonzero(m & (days == days[m].max()))
        x = (samples.ends[idx] + 300).astype("datetime64[s]")  # the target minute t + 5
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.plot(x, samples.targets[idx], label="actual close", color="black", linewidth=1.2)
        for name, p in preds.items():
            ax.plot(x, p[idx], label=f"{name} forecast", linewidth=0.8, alpha=0.8)
        ax.set_title(f"{t}: 5-minute-ahead forecast vs actual (UTC)")
        ax.set_ylabel("price")
        ax.legend(loc="best", fontsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        name = f"forecast_{t}.png"
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        files.append(name)
    return files


def write_report(report: dict[str, Any], samples: Samples, preds: dict[str, np.ndarray], out_dir: Path,
                 latest: Path | None = None) -> Path:
    """report.json + report.md + plots into ``out_dir`` (written aside, then renamed); copy to ``latest``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        report["plots"] = plot(samples, preds, tmp)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        os.chmod(tmp, 0o755)  # noqa: S103 - mkdtemp makes 0700; reports are for everyone to read
        _replace_dir(tmp, out_dir)
        if latest is not None:
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


def gate(report: dict[str, Any]) -> tuple[bool, str]:
    """Promote only if model RMSE <= persistence RMSE and <= the current model's, on the same samples."""
    model, pers, cur = report.get("model_rmse"), report.get("persistence_rmse"), report.get("current_rmse")
    if model is None or pers is None:
        return False, "no model RMSE on the test samples"
    if model > pers:
        return False, f"model RMSE {model:.6f} is worse than persistence {pers:.6f}"
    if cur is not None and model > cur:
        return False, f"model RMSE {model:.6f} is worse than current {report.get('current_version')} {cur:.6f}"
    return True, (f"model RMSE {model:.6f} <= persistence {pers:.6f}"
                  + (f" and <= current {cur:.6f}" if cur is not None else " (no current model)"))


def apply_gate(registry: Registry, version: str, report: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`gate`; promote ``version`` when it passes. Returns the decision (also put in the report)."""
    passed, reason = gate(report)
    if passed:
        registry.promote(version)
        log.info("promoted %s: %s", version, reason)
    else:
        log.warning("not promoting %s: %s", version, reason)
    decision = {"passed": passed, "reason": reason, "promoted": passed, "version": version}
    report["gate"] = decision
    return decision


def load_current(registry: Registry) -> ServingModel | None:
    """The current model, or None when there is none or it no longer loads (logged)."""
    version = registry.current_version()
    if version is None:
        return None
    try:
        return registry.load(version)
    except ModelError as exc:  # a broken current model must not block a fresh one
        log.warning("current model %s does not load (%s): gating against persistence only", version, exc)
        return None
