"""The benchmark report: each figure of the suite's results beside its same-run baseline, the seed's number and
its target, as the table of ``latest.md`` and of the docs site's Performance page (docs/performance.md).

:data:`FIGURES` defines the rows; :func:`figures` computes them from the benchmarks' JSON results;
:func:`markdown` renders ``latest.md`` (:func:`write` writes it with ``latest.json``). Used by
:mod:`benchmarks.suite` (which runs the benchmarks) and :mod:`benchmarks.readme`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results"

RSS_SERVICES = ("producer", "faust_worker", "spark_driver_jvm_python_workers", "redis", "kafka")
RSS_LABELS = {  # Redis and Kafka are the shared servers: their RSS includes everything else they hold
    "producer": "producer (the benchmark's feed process)", "faust_worker": "Faust worker",
    "spark_driver_jvm_python_workers": "Spark driver + JVM + Python workers", "redis": "Redis server (shared)",
    "kafka": "Kafka broker (shared)"}


@dataclass(frozen=True)
class Figure:
    """One row of the table: ``key`` (dotted path) in benchmark ``bench``'s JSON."""

    label: str
    bench: str
    key: str
    unit: str
    baseline_key: str | None = None  # same run; benchmark ``baseline_bench`` (None: ``bench`` itself)
    baseline_note: str = ""
    baseline_bench: str | None = None
    ratio: bool = False  # the row's value is ours / the baseline (a scaling factor); the baseline row is apart
    seed: str = ""  # the seed project's number, only where it measures the same thing
    target: tuple[str, float | bool] | None = None  # (op, value), op in >=, <=, <, ==
    extra: dict[str, str] = field(default_factory=dict)


FIGURES: tuple[Figure, ...] = (
    Figure("ingest, 1 producer process", "ingest", "bars_per_s", "bars/s", "baseline_bars_per_s",
           "naive produce+flush per bar", target=(">=", 100_000)),
    Figure("ingest speedup vs naive", "ingest", "speedup", "x", target=(">=", 20)),
    Figure("ingest, 2 producer processes", "ingest", "bars_per_s_2proc", "bars/s", "baseline_bars_per_s",
           "naive produce+flush per bar"),
    Figure("state: one Faust worker into Redis", "state", "bars_per_s", "bars/s", target=(">=", 30_000)),
    Figure("state: one Faust worker, 5,000 distinct tickers (every bar another ticker)", "state_5000", "bars_per_s",
           "bars/s", target=(">=", 20_000)),
    Figure("state: Redis round trips per bar", "state", "redis_roundtrips_per_bar", "", target=("<", 1)),
    Figure("state: two Faust workers (one group) into Redis", "state_2workers", "bars_per_s", "bars/s", "bars_per_s",
           "1 worker", baseline_bench="state"),
    Figure("state scaling 2 workers / 1 worker", "state_2workers", "bars_per_s", "x", "bars_per_s",
           baseline_bench="state", ratio=True, target=(">=", 1.6)),
    Figure("inference: one batch of 503 windows", "inference", "batch_ms_503", "ms", "per_ticker_loop_ms_503",
           "one predict per ticker", seed="21,600 ms (500 stocks, one predict each)", target=("<=", 50)),
    Figure("inference speedup vs per-ticker loop", "inference", "speedup", "x"),
    Figure("Spark micro-batch floor: addBatch of 503 events, a Python body doing no work", "spark_floor",
           "add_batch_p50_ms", "ms"),
    Figure("Spark micro-batch floor: whole trigger (planning + addBatch), p50", "spark_floor",
           "trigger_execution_p50_ms", "ms"),
    Figure("e2e latency p50 (503 tickers)", "e2e", "p50_ms", "ms"),
    Figure("e2e latency p95", "e2e", "p95_ms", "ms"),
    Figure("e2e latency p99", "e2e", "p99_ms", "ms", target=("<=", 300)),
    Figure("e2e 60x stress (503 tickers, a minute a second): latency p99", "e2e_stress", "p99_ms", "ms",
           "p99_ms", "bursts every 10 s, e2e", baseline_bench="e2e", target=("<=", 500)),
    Figure("e2e 60x stress: backlog growing", "e2e_stress", "backlog_growing", "", target=("==", False)),
    Figure("e2e bars/s achieved", "e2e", "bars_per_s", "bars/s"),
    Figure("e2e backlog growing", "e2e", "backlog_growing", "", target=("==", False)),
    *(Figure(f"e2e on Spark standalone (master + 2 workers): latency {p}", "e2e_standalone", f"{p}_ms", "ms",
             f"{p}_ms", "local[*], e2e", baseline_bench="e2e") for p in ("p50", "p99")),
    Figure("e2e at 10k bars/s: latency p99", "e2e_10k", "p99_ms", "ms"),
    Figure("e2e at 10k bars/s: bars/s achieved", "e2e_10k", "bars_per_s", "bars/s"),
    Figure("e2e at 10k bars/s: backlog growing", "e2e_10k", "backlog_growing", "", target=("==", False)),
    *(Figure(f"peak RSS during e2e: {RSS_LABELS[svc]}", "e2e", f"rss_peak_mb.{svc}", "MiB")
      for svc in RSS_SERVICES),
    Figure("e2e at 5,000 tickers: latency p50", "e2e_5000", "p50_ms", "ms", "p50_ms", "503 tickers, e2e",
           baseline_bench="e2e"),
    Figure("e2e at 5,000 tickers: latency p99", "e2e_5000", "p99_ms", "ms", "p99_ms", "503 tickers, e2e",
           target=("<=", 2000), baseline_bench="e2e"),
    Figure("e2e at 5,000 tickers: bars/s achieved", "e2e_5000", "bars_per_s", "bars/s"),
    Figure("e2e at 5,000 tickers: backlog growing", "e2e_5000", "backlog_growing", "", target=("==", False)),
    Figure("e2e at 5,000 tickers, 5,000 bars/s: latency p99", "e2e_5000_stress", "p99_ms", "ms", target=("<=", 2000)),
    Figure("e2e at 5,000 tickers, 5,000 bars/s: backlog growing", "e2e_5000_stress", "backlog_growing", "",
           target=("==", False)),
    Figure("e2e at 8,000 tickers (bursts): latency p99", "e2e_8000", "p99_ms", "ms", target=("<=", 1500)),
    Figure("Redis bytes per ticker, full retention (8,000 tickers)", "redis_memory", "bytes_per_ticker.total", "B",
           target=("<=", 16_000)),
    Figure("Redis bytes per ticker at the end of e2e (503 tickers)", "e2e", "redis_bytes_per_ticker.total", "B"),
    Figure("soak (60x, 503 tickers): worst service RSS growth, 2nd half", "soak", "rss_growth_second_half_pct", "%",
           target=("<=", 5)),
    Figure("soak: Redis used_memory growth, 2nd half", "soak", "redis_used_memory_growth_second_half_pct", "%"),
    *(Figure(f"peak RSS at 5,000 tickers: {RSS_LABELS[svc]}", "e2e_5000", f"rss_peak_mb.{svc}", "MiB",
             f"rss_peak_mb.{svc}", "503 tickers, e2e", baseline_bench="e2e") for svc in RSS_SERVICES),
    Figure("training, 1 rank (CPU, 1 thread)", "training", "samples_per_s_1rank", "samples/s"),
    Figure("training, 2 Horovod ranks", "training", "samples_per_s_2ranks", "samples/s", "samples_per_s_1rank",
           "1 rank"),
    Figure("training scaling 2 ranks / 1 rank", "training", "scaling", "x", target=(">=", 1.7)),
    # What two cores give at that moment without Horovod: the ceiling the 2-rank run is up against.
    Figure("training control: 2 independent 1-rank processes", "training", "control_2_independent_1rank",
           "samples/s", "samples_per_s_1rank", "1 rank"),
    Figure("training epoch of 1M samples on GPU (batch 2048)", "training", "gpu_epoch_s", "s",
           seed="149 s at batch 32 on a Tesla M60 (~5 s at batch 2048)", target=("<", 5)),
    # Issue 15; anchor: Feast's Redis online store reports p99 < 1.5 ms per entity.
    Figure("API: GET /api/forecasts/{ticker} p99", "api", "forecast_one_p99_ms", "ms", target=("<", 5)),
    Figure("API: GET /api/forecasts (503 tickers) p99", "api", "forecasts_all_p99_ms", "ms", target=("<", 20)),
    Figure("API: forecast on the topic -> SSE client p99 (50 clients)", "api", "sse_p99_ms", "ms",
           target=("<", 100)),
)


def lookup(result: dict[str, Any] | None, key: str) -> Any:
    """``a.b`` -> result["a"]["b"]; None where anything is missing."""
    cur: Any = result
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def met(value: Any, target: tuple[str, float | bool] | None) -> bool | None:
    """Whether ``value`` meets ``target``; None when there is no target or no value."""
    if target is None or value is None:
        return None
    op, goal = target
    if op == "==":
        return bool(value == goal)
    v, g = float(value), float(goal)
    return {">=": v >= g, "<=": v <= g, "<": v < g, ">": v > g}[op]


def figures(benchmarks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The table rows for the benchmarks that ran (rows whose value is missing are left out)."""
    rows = []
    for f in FIGURES:
        res = benchmarks.get(f.bench, {}).get("result")
        value = lookup(res, f.key)
        base_res = benchmarks.get(f.baseline_bench, {}).get("result") if f.baseline_bench else res
        baseline = lookup(base_res, f.baseline_key) if f.baseline_key else None
        if f.ratio:  # no baseline in this run (e.g. --only state_2workers): no ratio either
            value, baseline = (round(value / baseline, 2), None) if value is not None and baseline else (None, None)
        if value is None:
            continue
        note = f.baseline_note
        if f.baseline_key == "per_ticker_loop_ms_503" and lookup(res, "per_ticker_loop_extrapolated"):
            note += f", timed on {lookup(res, 'per_ticker_loop_timed_tickers')} and extrapolated"
        rows.append({"figure": f.label, "bench": f.bench, "key": f.key, "unit": f.unit, "value": value,
                     "baseline": baseline, "baseline_note": note, "seed": f.seed,
                     "target": None if f.target is None else {"op": f.target[0], "value": f.target[1]},
                     "met": met(value, f.target)})
    return rows



def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "latest.md").write_text(markdown(results) + "\n")


def fmt(value: Any, unit: str = "") -> str:
    """Numbers with thousands separators and a sensible precision; booleans as yes/no."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        v = float(value)
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:,.2f}" if abs(v) >= 0.1 \
            else f"{v:.4f}"
        if unit == "x":
            return f"{text}x"
        return f"{text} {unit}".strip()
    return str(value)


def _target_text(row: dict[str, Any]) -> str:
    t = row.get("target")
    if not t:
        return ""
    if t["op"] == "==":
        return fmt(t["value"])
    return f"{t['op']} {fmt(t['value'], row['unit'])}".replace(">=", "≥").replace("<=", "≤")


def table(results: dict[str, Any]) -> str:
    """The Markdown table: figure, ours, baseline in the same run, seed, target, met?"""
    lines = ["| figure | ours | baseline (same run) | seed | target | met? |", "|---|---:|---:|---|---|---|"]
    for r in results.get("figures", []):
        base = f"{fmt(r['baseline'], r['unit'])} ({r['baseline_note']})" if r.get("baseline") is not None else ""
        ok = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        lines.append(f"| {r['figure']} | {fmt(r['value'], r['unit'])} | {base} | {r.get('seed', '')} | "
                     f"{_target_text(r)} | {ok} |")
    return "\n".join(lines)


def machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    gpu = ", ".join(m.get("gpus") or []) or "no GPU"
    return (f"{m.get('cpus')} cores ({m.get('cpu_model')}), {m.get('memory_gib')} GiB RAM, {gpu}, {m.get('os')}; "
            f"Python {m.get('python')}, TensorFlow {m.get('tensorflow')}, Spark {m.get('pyspark')}, "
            f"Kafka {m.get('kafka_broker')}, faust-streaming {m.get('faust')}, Horovod {m.get('horovod')}")


def status_lines(results: dict[str, Any]) -> list[str]:
    """One line per benchmark: status, duration and the load average around it."""
    out = []
    for name, b in results.get("benchmarks", {}).items():
        s, e = b.get("load_avg_start") or [None], b.get("load_avg_end") or [None]
        extra = f", missing {', '.join(b['missing'])}" if b.get("missing") else ""
        out.append(f"- `{name}`: {b.get('status')} in {b.get('seconds')} s, load average (1 min) "
                   f"{s[0]} → {e[0]}{extra} — `{b.get('command')}`")
    return out


def markdown(results: dict[str, Any]) -> str:
    """latest.md: the table, the machine, the date, per-benchmark status and load."""
    return "\n".join([
        f"# Benchmark results ({results.get('mode')} run, {results.get('date')})", "",
        table(results), "",
        f"Machine: {machine_line(results)}.", "",
        f"Command: `{results.get('command')}` (total {results.get('total_s')} s).", "",
        *[f"Re-run on {r['date']}: `{r['command']}` ({', '.join(r['benchmarks'])})."
          for r in results.get("reruns", [])],
        *status_lines(results),
    ])


def failed(results: dict[str, Any]) -> list[str]:
    return [n for n, b in results.get("benchmarks", {}).items() if b.get("status") != "ok"]
