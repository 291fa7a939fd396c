"""The benchmark suite: every component benchmark in one run, each figure beside its same-run baseline and target.

    minutecast bench [--quick] [--only ingest,e2e] [--out benchmarks/results]
    python -m benchmarks.suite [--quick] ...                      # the same thing

Each benchmark runs as a subprocess ``python -m benchmarks.NAME [--quick]`` (from the repository root, with
a timeout each); its last stdout line is its JSON result. The suite records the load average at the start
and end of each one (the machine is shared: the numbers are only as quiet as the machine was), checks the
required names are there, puts each figure beside its baseline measured in the same run, the seed's number
where it measures the same thing, and its target with a met/not-met flag, adds a machine description and
the date, and writes ``<out>/latest.json`` and ``<out>/latest.md`` (each benchmark's full output goes to
``<out>/logs/NAME.log``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Bench:
    """One benchmark invocation of the suite. ``module`` is ``benchmarks.<module>``."""

    name: str
    module: str
    timeout_quick_s: int
    timeout_full_s: int
    full_args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ("--quick",)
    full_only: bool = False

    def argv(self, quick: bool) -> list[str]:
        return [sys.executable, "-m", f"benchmarks.{self.module}", *(self.quick_args if quick else self.full_args)]


# Order matters a little: the cheap ones first, so a broken service shows up within seconds.
BENCHES: tuple[Bench, ...] = (
    Bench("ingest", "ingest", 150, 600),
    Bench("state", "state", 150, 900),
    Bench("inference", "inference", 150, 300),
    Bench("e2e", "e2e", 300, 600),
    # The "no growing backlog at 10k bars/s replay": 90 accelerated minutes at 10k bars/s.
    Bench("e2e_10k", "e2e", 300, 600, full_args=("--bars-per-s", "10000"), full_only=True),
    Bench("training", "training", 300, 900),
    Bench("api", "api", 150, 300),
)

# The names each benchmark's JSON must carry (issue 9). ``gpu_epoch_s`` only matters on a GPU.
REQUIRED: dict[str, tuple[str, ...]] = {
    "ingest": ("bars_per_s", "baseline_bars_per_s", "speedup"),
    "state": ("bars_per_s", "redis_roundtrips_per_bar"),
    "inference": ("batch_ms_503", "per_ticker_loop_ms_503", "speedup"),
    "e2e": ("p50_ms", "p95_ms", "p99_ms", "tickers", "bars_per_s", "backlog_growing", "rss_peak_mb"),
    "training": ("samples_per_s_1rank", "samples_per_s_2ranks", "scaling", "gpu_epoch_s"),
}
REQUIRED["e2e_10k"] = REQUIRED["e2e"]
REQUIRED["api"] = ("forecast_one_p99_ms", "forecasts_all_p99_ms", "tickers", "sse_clients", "sse_p99_ms")

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
    baseline_key: str | None = None  # same benchmark, same run
    baseline_note: str = ""
    seed: str = ""  # the seed project's number, only where it measures the same thing
    target: tuple[str, float | bool] | None = None  # (op, value), op in >=, <=, <, ==
    extra: dict[str, str] = field(default_factory=dict)


FIGURES: tuple[Figure, ...] = (
    Figure("ingest, 1 producer process", "ingest", "bars_per_s", "bars/s", "baseline_bars_per_s",
           "naive produce+flush per bar", target=(">=", 100_000)),
    Figure("ingest speedup vs naive", "ingest", "speedup", "x", target=(">=", 20)),
    Figure("ingest, 2 producer processes", "ingest", "bars_per_s_2proc", "bars/s", "baseline_bars_per_s",
           "naive produce+flush per bar"),
    Figure("state: one Faust worker into Redis", "state", "bars_per_s", "bars/s", target=(">=", 20_000)),
    Figure("state: Redis round trips per bar", "state", "redis_roundtrips_per_bar", "", target=("<", 1)),
    Figure("inference: one batch of 503 windows", "inference", "batch_ms_503", "ms", "per_ticker_loop_ms_503",
           "one predict per ticker", seed="21,600 ms (500 stocks, one predict each)", target=("<=", 50)),
    Figure("inference speedup vs per-ticker loop", "inference", "speedup", "x"),
    Figure("e2e latency p50 (503 tickers)", "e2e", "p50_ms", "ms"),
    Figure("e2e latency p95", "e2e", "p95_ms", "ms"),
    Figure("e2e latency p99", "e2e", "p99_ms", "ms", target=("<", 1500)),
    Figure("e2e bars/s achieved", "e2e", "bars_per_s", "bars/s"),
    Figure("e2e backlog growing", "e2e", "backlog_growing", "", target=("==", False)),
    Figure("e2e at 10k bars/s: latency p99", "e2e_10k", "p99_ms", "ms"),
    Figure("e2e at 10k bars/s: bars/s achieved", "e2e_10k", "bars_per_s", "bars/s"),
    Figure("e2e at 10k bars/s: backlog growing", "e2e_10k", "backlog_growing", "", target=("==", False)),
    *(Figure(f"peak RSS during e2e: {RSS_LABELS[svc]}", "e2e", f"rss_peak_mb.{svc}", "MiB")
      for svc in RSS_SERVICES),
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
        if value is None:
            continue
        note = f.baseline_note
        if f.baseline_key == "per_ticker_loop_ms_503" and lookup(res, "per_ticker_loop_extrapolated"):
            note += f", timed on {lookup(res, 'per_ticker_loop_timed_tickers')} and extrapolated"
        rows.append({"figure": f.label, "bench": f.bench, "key": f.key, "unit": f.unit, "value": value,
                     "baseline": lookup(res, f.baseline_key) if f.baseline_key else None,
                     "baseline_note": note, "seed": f.seed,
                     "target": None if f.target is None else {"op": f.target[0], "value": f.target[1]},
                     "met": met(value, f.target)})
    return rows


def last_json(stdout: str) -> dict[str, Any] | None:
    """The last non-empty stdout line as a JSON object, or None."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        obj = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def missing_names(name: str, result: dict[str, Any] | None) -> list[str]:
    if result is None:
        return list(REQUIRED.get(name, ()))
    return [k for k in REQUIRED.get(name, ()) if k not in result]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_one(bench: Bench, quick: bool, log_dir: Path) -> dict[str, Any]:
    """Run one benchmark subprocess; never raises for a failing benchmark (its status says so)."""
    argv = bench.argv(quick)
    timeout = bench.timeout_quick_s if quick else bench.timeout_full_s
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{bench.name}.log"
    entry: dict[str, Any] = {"command": " ".join(["python", *argv[1:]]), "timeout_s": timeout,
                             "load_avg_start": _load(), "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    print(f"[bench] {bench.name}: {entry['command']} (timeout {timeout} s, load {entry['load_avg_start'][0]})",
          file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with open(log_path, "wb") as err:
        # Own session: on timeout the whole group goes, not the suite. stderr (progress) goes to the log.
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err, start_new_session=True)  # noqa: S603
        try:
            out, _ = proc.communicate(timeout=timeout)
            status = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            out, _ = proc.communicate()
            status = "timeout"
    stdout = out.decode(errors="replace")
    with open(log_path, "ab") as fh:
        fh.write(b"\n--- stdout ---\n" + out)
    result = last_json(stdout)
    missing = missing_names(bench.name, result)
    if status == "ok" and (result is None or missing):
        status = "incomplete"
    entry |= {"status": status, "returncode": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
              "load_avg_end": _load(), "missing": missing, "result": result, "log": str(log_path)}
    print(f"[bench] {bench.name}: {status} in {entry['seconds']} s (load {entry['load_avg_end'][0]})",
          file=sys.stderr, flush=True)
    return entry


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT first (the benchmarks clean their topics/keys/children in ``finally``), SIGKILL after 60 s."""
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on (no heavy imports: versions come from package metadata)."""
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem_gib: float | None = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        mem_gib = None
    try:
        from infra.jars import kafka_version

        kafka: str | None = kafka_version()
    except Exception:  # noqa: BLE001 - a description, not a requirement
        kafka = None
    gpu: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        res = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
        gpu = [ln.strip() for ln in res.stdout.splitlines() if ln.strip().startswith("GPU")]
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "memory_gib": mem_gib,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "tensorflow": _version("tensorflow-cpu", "tensorflow"), "pyspark": _version("pyspark"),
            "kafka_broker": kafka, "faust": _version("faust-streaming"), "horovod": _version("horovod"),
            "gpu": bool(gpu), "gpus": gpu}


def run_suite(quick: bool, only: list[str] | None = None, out: Path = DEFAULT_OUT,
              command: str | None = None) -> dict[str, Any]:
    """Run the selected benchmarks in order and write ``latest.json`` and ``latest.md`` under ``out``."""
    chosen = [b for b in BENCHES if (only and b.name in only) or (not only and not (quick and b.full_only))]
    unknown = sorted(set(only or ()) - {b.name for b in BENCHES})
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {[b.name for b in BENCHES]}")
    started = datetime.now(UTC)
    t0 = time.monotonic()
    benchmarks = {b.name: run_one(b, quick, out / "logs") for b in chosen}
    results = {
        "date": started.isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "command": command or ("minutecast bench" + (" --quick" if quick else "")
                               + (f" --only {','.join(only)}" if only else "")),
        "total_s": round(time.monotonic() - t0, 1),
        "machine": machine(),
        "benchmarks": benchmarks,
        "figures": figures(benchmarks),
    }
    write(results, out)
    return results


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
        *status_lines(results),
    ])


def failed(results: dict[str, Any]) -> list[str]:
    return [n for n, b in results.get("benchmarks", {}).items() if b.get("status") != "ok"]


def main(argv: list[str] | None = None) -> int:
    from benchmarks import cli

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
