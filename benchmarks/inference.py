"""Benchmark: model time for one batch of 503 windows with market context (the serving call) vs the seed's
way (one ``model.predict`` per ticker), in the same run, on CPU.

    python -m benchmarks.inference            # the per-ticker loop runs all 503 calls (~30 s here)
    python -m benchmarks.inference --quick    # the loop times 50 tickers and extrapolates to 503

The model is the serving architecture (``minutecast.model`` preset ``default``: pooled LSTM with the
5-quantile head), randomly initialised: weights do not change the speed. Windows are built from
synthetic random-walk bars of 503 tickers and the market ticker through the shared window policy
(``streams.window_store.windows_for``, the partition's own call), so each carries the market context.

* ``batch_ms_503``: median of ``ServingModel.predict_log_quantiles`` on the 503 windows, the exact call the
  Spark job makes per partition (features via ``minutecast.features`` + one compiled ``tf.function`` call);
* ``intervals_ms_503``: what the partition does after it (output checks, per-ticker ``OnlineScale.apply``
  and the v2 ``Forecast`` objects);
* ``build_ms_503``: the windows themselves from stored rows (market rows slotted once);
* ``model_only_ms_503``: the compiled call alone on ready inputs;
* ``per_ticker_loop_ms_503``: 503 x ``model.predict(one window)`` (the seed).

Last stdout line: one JSON object. Goal: ``batch_ms_503 <= 50``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from minutecast.features import Scaler, make_inputs
from minutecast.intervals import OnlineScale
from minutecast.model import build_model, get_preset
from minutecast.serving_model import ServingModel
from minutecast.window import RETAIN
from streams.serving import check_outputs, make_forecast, price_quantiles
from streams.window_store import WindowRow
from streams.windows import windows_for

GOAL_MS = 50.0
TICKERS = 503
T0 = 1_759_327_200  # 2025-10-01 10:00 New York: the last bar is mid-session


def stored_rows(n: int, seed: int = 0) -> tuple[list[list[Any]], list[Any], list[int]]:
    """Window-store rows of ``n`` tickers and the market (``window.RETAIN`` bars each, ~3% of minutes
    missing), and each ticker's as-of minute (its newest bar)."""
    rng = np.random.default_rng(seed)

    def one() -> list[Any]:
        keep = np.r_[rng.random(RETAIN - 1) > 0.03, True]
        close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, RETAIN)))
        vol = rng.lognormal(8, 1, RETAIN)
        return [WindowRow(T0 + 60 * i, close[i], close[i] * 1.0005, close[i] * 0.9995, close[i], vol[i], None)
                for i in range(RETAIN) if keep[i]]

    return [one() for _ in range(n)], one(), [T0 + 60 * (RETAIN - 1)] * n


@dataclass
class Setup:
    """The serving model (random weights) and 503 windows with market context, as the partition has them."""

    model: Any  # the Keras model
    served: ServingModel
    scaler: Scaler
    windows: np.ndarray  # (503, window, features)
    minutes: list[int]  # each ticker's as-of minute
    build_ms: float  # building the windows from stored rows
    states: list[OnlineScale]  # each ticker's online interval calibration


def setup() -> Setup:
    model = build_model(get_preset("default"))
    scaler = Scaler(ret_scale=1e-3, gap_scale=5e-3, range_scale=1e-3, logvol_mean=8.0, logvol_std=1.0,
                    mkt_ret_scale=1e-3, mkt_range_scale=1e-3, target_scale=2e-3)
    served = ServingModel(version="bench", kind="lstm", scaler=scaler, meta={}, keras_model=model)
    rows, market, minutes = stored_rows(TICKERS)
    t0 = time.perf_counter()
    built = windows_for(rows, minutes, market)
    build_ms = (time.perf_counter() - t0) * 1000
    windows = np.stack([w for w in built if w is not None])
    assert windows.shape[0] == TICKERS and np.abs(windows[..., -3:]).sum() > 0, "windows without market context"
    states = [OnlineScale(log_s80=0.1, log_s90=-0.1) for _ in range(TICKERS)]
    return Setup(model, served, scaler, windows, minutes, build_ms, states)


def intervals(s: Setup, raw: np.ndarray) -> list[Any]:
    """The partition's steps after the model call (streams.partition.infer_partition)."""
    check_outputs(raw)
    served_q = np.stack([st.apply(q) for st, q in zip(s.states, raw, strict=True)])
    prices = price_quantiles(s.windows[:, -1, 3], served_q)
    return [make_forecast(ticker="AAPL", as_of=s.minutes[i], last_close=float(s.windows[i, -1, 3]),
                          prices=prices[i], state=s.states[i], model_version="bench",
                          model_kind="lstm", interval_kind="lstm", published_at=None, window_ready_at=0.0,
                          forecast_at=0.0)
            for i in range(TICKERS)]


def time_serving(s: Setup, repeats: int) -> tuple[list[float], list[float], list[float]]:
    """ms per repeat of the serving call, of the steps after it, and of the compiled call alone on ready inputs
    (after 3 warm-up rounds that trace the graphs)."""
    import tensorflow as tf

    inputs = tf.constant(make_inputs(s.windows, s.scaler))
    for _ in range(3):  # trace and warm up
        s.served.predict_log_quantiles(s.windows)
        s.served._fn(inputs)
    batch, model_only, after = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = s.served.predict_log_quantiles(s.windows)
        batch.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        fcs = intervals(s, out)
        after.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        s.served._fn(inputs).numpy()
        model_only.append((time.perf_counter() - t0) * 1000)
    assert out.shape == (TICKERS, 5) and np.isfinite(out).all() and len(fcs) == TICKERS
    return batch, model_only, after


def time_seed_loop(s: Setup, timed: int) -> float:
    """ms for 503 x ``model.predict(one window)``, the seed's way (``timed`` of them, extrapolated to 503)."""
    x = make_inputs(s.windows, s.scaler)
    s.model.predict(x[:1], verbose=0)  # warm up predict's own graph
    t0 = time.perf_counter()
    for i in range(timed):
        s.model.predict(x[i:i + 1], verbose=0)
    return (time.perf_counter() - t0) * 1000 * TICKERS / timed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="time the per-ticker loop on 50 tickers, extrapolate")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats of the batched call")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf

    s = setup()
    batch, model_only, after = time_serving(s, args.repeats)
    timed = 50 if args.quick else TICKERS
    loop_ms = time_seed_loop(s, timed)

    batch_ms = statistics.median(batch)
    result = {
        "benchmark": "inference",
        "tickers": TICKERS,
        "market_context": True,
        "batch_ms_503": round(batch_ms, 2),
        "batch_ms_503_p90": round(float(np.percentile(batch, 90)), 2),
        "intervals_ms_503": round(statistics.median(after), 2),
        "build_ms_503": round(s.build_ms, 1),
        "model_only_ms_503": round(statistics.median(model_only), 2),
        "per_ticker_loop_ms_503": round(loop_ms, 1),
        "per_ticker_loop_timed_tickers": timed,
        "per_ticker_loop_extrapolated": timed != TICKERS,
        "speedup": round(loop_ms / batch_ms, 1),
        "goal_ms": GOAL_MS,
        "goal_met": batch_ms <= GOAL_MS,
        "threads": {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
                    "cpus": os.cpu_count()},
        "tensorflow": tf.__version__,
    }
    note = f" (extrapolated from {timed})" if timed != TICKERS else ""
    print(f"batched serving call, 503 windows with market context: {batch_ms:.1f} ms (median of {args.repeats}), "
          f"intervals {result['intervals_ms_503']} ms, windows {s.build_ms:.0f} ms; seed loop: "
          f"{loop_ms / 1000:.1f} s{note}; speedup {result['speedup']}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
