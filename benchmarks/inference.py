"""Benchmark: model time for one batch of 503 windows (the serving call) vs the seed's way (one
``model.predict`` per ticker), in the same run, on CPU.

    python -m benchmarks.inference            # the per-ticker loop runs all 503 calls (~30 s here)
    python -m benchmarks.inference --quick    # the loop times 50 tickers and extrapolates to 503

The model is the seed architecture (``minutecast.model`` preset ``seed``: LSTM(50)-Dropout-Dense(32)-Dense(1)),
randomly initialised: weights do not change the speed. Windows are random raw [close, volume] windows.

* ``batch_ms_503``: median of ``ServingModel.predict_prices`` on 503 windows, the exact call the Spark job
  makes per partition (features via ``minutecast.features`` + one compiled ``tf.function`` call + to price);
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

import numpy as np

GOAL_MS = 50.0
TICKERS = 503


def random_windows(n: int, seed: int = 0) -> np.ndarray:
    """(n, 60, 2) raw windows: a random-walk close around 100 and a positive volume."""
    from minutecast.window import WINDOW

    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, (n, WINDOW)), axis=1))
    volume = rng.lognormal(8, 1, (n, WINDOW))
    return np.stack([close, volume], axis=2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="time the per-ticker loop on 50 tickers, extrapolate")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats of the batched call")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import tensorflow as tf

    from minutecast.features import Scaler, make_inputs
    from minutecast.model import build_model, get_preset
    from minutecast.registry import ServingModel

    model = build_model(get_preset("seed"))
    scaler = Scaler(ret_scale=1e-3, logvol_mean=8.0, logvol_std=1.0, target_scale=2e-3)
    served = ServingModel(version="bench", kind="lstm", scaler=scaler, meta={}, keras_model=model)
    windows = random_windows(TICKERS)
    inputs = tf.constant(make_inputs(windows, scaler))

    for _ in range(3):  # trace and warm up
        served.predict_prices(windows)
        served._fn(inputs)
    batch, model_only = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = served.predict_prices(windows)
        batch.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        served._fn(inputs).numpy()
        model_only.append((time.perf_counter() - t0) * 1000)
    assert out.shape == (TICKERS,) and np.isfinite(out).all()

    timed = 50 if args.quick else TICKERS
    x = make_inputs(windows, scaler)
    model.predict(x[:1], verbose=0)  # warm up predict's own graph
    t0 = time.perf_counter()
    for i in range(timed):
        model.predict(x[i:i + 1], verbose=0)
    loop_ms = (time.perf_counter() - t0) * 1000 * TICKERS / timed

    batch_ms = statistics.median(batch)
    result = {
        "benchmark": "inference",
        "tickers": TICKERS,
        "batch_ms_503": round(batch_ms, 2),
        "batch_ms_503_p90": round(float(np.percentile(batch, 90)), 2),
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
    print(f"batched serving call, 503 windows: {batch_ms:.1f} ms (median of {args.repeats}); "
          f"seed loop: {loop_ms / 1000:.1f} s{note}; "
          f"speedup {result['speedup']}x")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
