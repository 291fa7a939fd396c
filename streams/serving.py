"""What one forecast is made of, as pure functions (numpy + the shared contracts; no Redis, no Spark):
vetting window-ready events (and the dead-letter row of one that cannot be served), calling the model on a
partition's windows and checking its raw quantiles (the calibrated baseline where they fail), catching a
ticker's online calibration up with the outcomes it can see (the closes by minute of its stored rows), and
turning served log quantiles into prices, sigma and a v2 :class:`~minutecast.schemas.Forecast`. The windows
themselves (market context included) are cut by :mod:`streams.windows`; Redis and the per-partition flow are
:mod:`streams.partition`.

The calibration follows :func:`minutecast.intervals.calibrate_in_time_order` exactly (the evaluation
replays it the same way): before the forecast at ``t`` is served, every stored forecast of the ticker
whose target minute is in ``(state.through, t]`` is applied in target order, with the quantiles that
were *served* (from its history JSON) and the close of the real bar at its target minute (skipped when
the window store has no bar there). :meth:`OnlineScale.update` ignores a target that is not newer than
``through``, so a replayed batch never applies an outcome twice.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import numpy as np

from minutecast.errors import Rejected
from minutecast.intervals import OnlineScale, baseline_log_quantiles, implied_sigma, to_prices
from minutecast.schemas import READY_VERSION, TICKER_RE, DeadLetter, Forecast, WindowReady
from minutecast.window import HORIZON

# Largest |log move| in 5 minutes a model may output (e = x2.7 either way); beyond it the output is a
# malfunction, served as the baseline interval rather than published.
MAX_LOG_MOVE = 1.0

log = logging.getLogger("minutecast.infer")


def dead_letter_row(deadletter_topic: str, ready_topic: str, row: Any, reason: str,
                    detail: str) -> tuple[str, str | None, str]:
    """The dead-letter topic's row (topic, key, value) for a window-ready event that cannot be served."""
    key = row.key if isinstance(row.key, str) else None
    dl = DeadLetter.of(Rejected(reason, detail), row.value if isinstance(row.value, str) else None, "infer",
                       topic=ready_topic, partition=int(row.partition), offset=int(row.offset), key=key)
    return (deadletter_topic, key, dl.to_json().decode())


def reject_reason(row: Any) -> tuple[str, str] | None:
    """Why a window-ready event cannot be served (reason code, detail), or None when it is fine."""
    if isinstance(row.ticker, str) and row.minute == row.minute and row.ready_at == row.ready_at \
            and row.v == READY_VERSION:
        if not TICKER_RE.match(row.ticker):
            return "bad_ticker", f"{row.ticker[:20]!r} is not a ticker"
        return None
    try:  # Spark's parser said no: ask the schema's own parser for a precise reason code
        WindowReady.from_json(row.value or "")
    except Rejected as exc:
        return exc.reason, exc.detail
    except json.JSONDecodeError as exc:
        return "not_json", str(exc)[:80]
    except KeyError as exc:
        return "missing_field", str(exc)[:80]
    except (TypeError, ValueError, AttributeError) as exc:
        return "wrong_type", str(exc)[:80]
    return "wrong_type", "a field has the wrong type"


def check_outputs(raw: np.ndarray) -> dict[str, np.ndarray]:
    """Raw model log quantiles (N, 5) -> boolean masks (N,) of the rows to replace by the baseline:
    ``non_finite``, ``crossing`` (a quantile below the one before), ``out_of_range`` (|x| > MAX_LOG_MOVE).
    A row is counted under the first that applies."""
    q = np.asarray(raw, dtype=np.float64)
    non_finite = ~np.isfinite(q).all(axis=1)
    safe = np.where(np.isfinite(q), q, 0.0)
    crossing = ~non_finite & (np.diff(safe, axis=1) < 0).any(axis=1)
    out_of_range = ~non_finite & ~crossing & (np.abs(safe) > MAX_LOG_MOVE).any(axis=1)
    return {"non_finite": non_finite, "crossing": crossing, "out_of_range": out_of_range}


def model_or_baseline(model: Any, windows: np.ndarray, baseline_scale: Callable[[], tuple[float, float]],
                      counts: MutableMapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Raw log quantiles (N, 5) of ``windows`` and which rows are the model's (N,): one compiled call of
    ``model`` (a ``ServingModel``, or None before any is promoted) on all of them; a row it got wrong
    (:func:`check_outputs`, counted per kind in ``counts``), or every row when it raised (``model_error``),
    gets the calibrated window-vol baseline (``baseline_scale()`` is read only then)."""
    n = len(windows)
    raw, use_model = np.zeros((n, 5)), np.zeros(n, dtype=bool)
    if model is not None:
        try:
            raw = np.asarray(model.predict_log_quantiles(windows), dtype=np.float64)
            bad = check_outputs(raw)
            for name, mask in bad.items():
                counts[name] += float(mask.sum())
            use_model = ~np.logical_or.reduce(list(bad.values()))
        except Exception as exc:  # noqa: BLE001 - serve the (labelled) baseline rather than nothing
            log.error("model %s failed on %d windows, serving the baseline: %s", model.version, n, exc)
            counts["model_error"] += n
            raw, use_model = np.zeros((n, 5)), np.zeros(n, dtype=bool)
    if not use_model.all():
        raw[~use_model] = baseline_log_quantiles(windows[~use_model], baseline_scale())
    return raw, use_model


def catch_up(state: OnlineScale, history: Mapping[int, Forecast | bytes | str], closes: Mapping[int, float],
             t: int) -> int:
    """Apply to ``state`` (in place) the outcomes visible at ``t``; returns how many were applied.

    ``history``: as-of minute -> stored Forecast (or its JSON) (at least those whose target is in
    ``(state.through, t]``; others are ignored); ``closes``: minute -> close of the real bars in the window
    store. Entries that are not v2 (no served quantiles) or whose target bar is absent are skipped.
    """
    due: list[tuple[int, Forecast]] = []
    for as_of, raw in history.items():
        target = int(as_of) + 60 * HORIZON
        if not state.through < target <= t:
            continue
        try:
            f = raw if isinstance(raw, Forecast) else Forecast.from_json(raw)
        except (Rejected, KeyError, TypeError, ValueError):
            continue  # not ours to judge here: an unreadable entry has no served interval to score
        q = f.quantiles
        if q is None or f.target_minute != target:
            continue
        due.append((target, f))
    applied = 0
    for target, f in sorted(due, key=lambda x: x[0]):
        close = closes.get(target)
        if close is None:
            continue
        served = np.log(np.asarray(f.quantiles, dtype=np.float64) / f.last_close)
        applied += state.update(served, math.log(close / f.last_close), target)
    return applied


def price_quantiles(last_close: np.ndarray, served_log_q: np.ndarray) -> list[list[float]]:
    """Served log quantiles (N, 5) of ``log(close_{t+5} / close_t)`` and closes at t (N,) -> price quantiles
    as Python floats (vectorised once per partition)."""
    lq = np.asarray(served_log_q, dtype=np.float64).reshape(-1, 5)
    return to_prices(lq, np.asarray(last_close, dtype=np.float64)).tolist()  # type: ignore[no-any-return]


def make_forecast(*, ticker: str, as_of: int, last_close: float, prices: list[float], state: OnlineScale,
                  model_version: str, model_kind: str, interval_kind: str, published_at: float | None,
                  window_ready_at: float, forecast_at: float, window_checksum: str | None = None) -> Forecast:
    """A v2 forecast from its price quantiles (5,) (:func:`price_quantiles`; sigma is the one they imply,
    :func:`~minutecast.intervals.implied_sigma`); ``state`` is the
    online calibration that was applied to them, ``window_checksum`` the checksum of the window it was made
    from (what decides whether it corrects a stored forecast of the same minute)."""
    q05, q10, q50, q90, q95 = prices
    return Forecast(ticker=ticker, as_of=as_of, horizon_min=HORIZON, predicted_close=q50, last_close=last_close,
                    model_version=model_version, model_kind=model_kind, published_at=published_at,
                    window_ready_at=window_ready_at, forecast_at=forecast_at, q05=q05, q10=q10, q50=q50,
                    q90=q90, q95=q95, sigma=implied_sigma(q10, q90), interval_kind=interval_kind, log_s80=state.log_s80,
                    log_s90=state.log_s90, window_checksum=window_checksum)


def closes_by_minute(rows: Iterable[tuple[int, float, float, float, float, float, float | None]] | np.ndarray,
                     ) -> dict[int, float]:
    """Stored window rows (``streams.window_store.WindowRow``s or ``decode_value`` rows) -> {minute: close}."""
    if isinstance(rows, np.ndarray):
        return dict(zip(rows[:, 0].astype(np.int64).tolist(), rows[:, 4].tolist(), strict=True))
    return {int(r[0]): float(r[4]) for r in rows}
