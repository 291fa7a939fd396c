"""Soak: the whole pipeline at 60x for a long run, memory per service over time (no growth allowed).

    python -m benchmarks.soak                 # 503 tickers, 30 minutes at a minute a second (60x)
    python -m benchmarks.soak --minutes 60

Pace: the 60x stress (every ticker's bar of a minute in one burst, a minute a second) for ``--minutes``
wall-clock minutes. It runs :mod:`benchmarks.e2e` (``--minute-s 1 --timeline-s 10``) and reads its
``rss_timeline``: resident MiB of each service's process tree and Redis's ``used_memory``, every 10 s.
Reported per series: the mean of the first and last tenth of the second half and the growth between them
(%), and the least-squares slope over the second half (MiB per hour); the first half is warm-up (JIT,
caches, the window and forecast history filling to their bounds). The verdict (``rss_growth_second_half_pct``)
is the worst service's growth; ``producer`` (the benchmark's own feed process, which keeps every forecast it
reads to compute latencies) is reported but left out of it. Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HARNESS = ("producer",)  # the benchmark's own process: not a service of the pipeline
GOAL_GROWTH_PCT = 5.0


def growth(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Growth over the second half of a (seconds, MiB) series: ends (means of tenths), % and slope MiB/h."""
    if len(points) < 20:
        return None
    t, mb = np.array(points, dtype=np.float64).T
    half = t >= t[0] + (t[-1] - t[0]) / 2
    t2, m2 = t[half], mb[half]
    k = max(len(m2) // 10, 1)
    start, end = float(m2[:k].mean()), float(m2[-k:].mean())
    slope = float(np.polyfit(t2 / 3600, m2, 1)[0]) if len(t2) > 1 else 0.0
    return {"start_mb": round(start, 1), "end_mb": round(end, 1),
            "growth_pct": round(100 * (end - start) / start, 2) if start else 0.0, "slope_mb_per_h": round(slope, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock minutes at 60x")
    ap.add_argument("--tickers", type=int, default=503)
    args = ap.parse_args(argv)
    timed = int(args.minutes * 60)  # accelerated minutes: one a second
    out = subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--tickers", str(args.tickers), "--minute-s", "1",
                          "--minutes", str(timed), "--timeline-s", "10"], cwd=REPO, capture_output=True, text=True,
                         check=False)
    sys.stderr.write(out.stderr[-4000:])
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    e2e = json.loads(lines[-1]) if lines else {}
    series = {name: growth([tuple(p) for p in pts]) for name, pts in e2e.get("rss_timeline", {}).items()}
    services = {n: g for n, g in series.items() if g is not None and n not in HARNESS and n != "redis_used_memory"}
    worst = max(services.items(), key=lambda kv: kv[1]["growth_pct"], default=(None, None))
    redis_mem = series.get("redis_used_memory")
    result = {
        "benchmark": "soak", "pace": f"60x stress: a burst of {args.tickers} bars every second",
        "minutes": args.minutes,
        "tickers": args.tickers, "e2e_exit": out.returncode, "series": series,
        "rss_growth_second_half_pct": worst[1]["growth_pct"] if worst[1] else None, "worst_service": worst[0],
        "redis_used_memory_growth_second_half_pct": redis_mem["growth_pct"] if redis_mem else None,
        "p99_ms": e2e.get("p99_ms"), "backlog_growing": e2e.get("backlog_growing"),
        "forecasts": e2e.get("forecasts"), "expected": e2e.get("expected"), "goal_growth_pct": GOAL_GROWTH_PCT,
    }
    result["goal_met"] = result["rss_growth_second_half_pct"] is not None and \
        result["rss_growth_second_half_pct"] <= GOAL_GROWTH_PCT
    print(json.dumps(result))
    return 0 if out.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
