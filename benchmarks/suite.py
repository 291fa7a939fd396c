"""The benchmark suite: every component benchmark in one run, each figure beside its same-run baseline and target.

    minutecast bench [--quick] [--only ingest,e2e [--keep]] [--out benchmarks/results] [--readme]
    python -m benchmarks.suite [--quick] ...                      # the same thing

Each benchmark runs as a subprocess ``python -m benchmarks.NAME [--quick]`` (from the repository root, with
a timeout each); its last stdout line is its JSON result. The suite records the load average at the start
and end of each one (the machine is shared: the numbers are only as quiet as the machine was), checks the
required names are there, puts each figure beside its baseline measured in the same run, the seed's number
where it measures the same thing, and its target with a met/not-met flag, adds a machine description and
the date, and writes ``<out>/latest.json`` and ``<out>/latest.md`` (each benchmark's full output goes to
``<out>/logs/NAME.log``). ``--only NAMES --keep`` re-runs some benchmarks of an earlier run (after a fix) and
keeps the others' entries of ``<out>/latest.json``; the results then list the re-run under ``reruns`` (each
entry keeps its own start time and load). The figures and the Markdown are :mod:`benchmarks.report`'s;
``minutecast bench`` (:mod:`benchmarks.cli`) is :func:`add_arguments` and :func:`run` of this module.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import readme
from benchmarks.report import DEFAULT_OUT, REPO, failed, figures, markdown, write
from infra.jars import kafka_version
from minutecast.errors import ConfigError

try:
    import psutil
except ImportError:  # pragma: no cover - comes with the dependencies; the description then has no memory size
    psutil = None  # type: ignore[assignment]


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
    # Issue 24: one worker when every bar is another ticker (the real shape of a minute), 5,000 of them.
    Bench("state_5000", "state", 150, 600, full_args=("--tickers", "5000", "--minutes", "20"),
          quick_args=("--tickers", "500", "--minutes", "10")),
    # Issue 16's scale-out: the same backfill shared by 2 workers of one consumer group (target >= 1.6x one).
    Bench("state_2workers", "state", 150, 900, full_args=("--workers", "2"), quick_args=("--quick", "--workers", "2")),
    Bench("inference", "inference", 150, 300),
    # What a Spark micro-batch costs before any of our work (the e2e latencies' floor on this machine).
    Bench("spark_floor", "spark_floor", 150, 300),
    # Burst mode (the real shape: every bar of a minute together, a minute every 10 s) beside the 60x stress.
    Bench("e2e", "e2e", 300, 900, full_args=("--minutes", "40"), quick_args=("--quick", "--minutes", "10")),
    Bench("e2e_stress", "e2e", 300, 600, full_args=("--minute-s", "1"), quick_args=("--quick", "--minute-s", "1")),
    # The Spark job on a standalone master + 2 workers beside local[*] (e2e): 30 minutes are enough for
    # p50/p99 (the cluster and its executors start before the timed minutes).
    Bench("e2e_standalone", "e2e", 420, 900, full_args=("--standalone", "--minutes", "30"),
          quick_args=("--quick", "--standalone", "--minutes", "10")),
    # The "no growing backlog at 10k bars/s replay": 90 accelerated minutes at 10k bars/s.
    Bench("e2e_10k", "e2e", 300, 600, full_args=("--bars-per-s", "10000"), full_only=True),
    # 5,000 and 8,000 tickers (the S&P 500 names, then generated ones) in bursts, and 5,000 at 5,000 bars/s.
    Bench("e2e_5000", "e2e", 300, 900, full_args=("--tickers", "5000", "--minutes", "20"), full_only=True),
    Bench("e2e_5000_stress", "e2e", 300, 900, full_only=True,
          full_args=("--tickers", "5000", "--bars-per-s", "5000", "--minutes", "20")),
    Bench("e2e_8000", "e2e", 300, 900, full_args=("--tickers", "8000", "--minutes", "15"), full_only=True),
    # Redis bytes per ticker with full retention (RETAIN bars, the history bound of forecasts) at 8,000 tickers.
    Bench("redis_memory", "redis_memory", 150, 600, full_args=("--tickers", "8000"), quick_args=("--tickers", "500")),
    Bench("training", "training", 300, 900),
    Bench("api", "api", 150, 300),
    # 60x for 30 minutes at 503 tickers: RSS and Redis memory slope per service (`minutecast bench --only soak`).
    Bench("soak", "soak", 300, 2700, full_args=("--minutes", "30"), quick_args=("--minutes", "3"), full_only=True),
)

# The names each benchmark's JSON must carry (issue 9). ``gpu_epoch_s`` only matters on a GPU.
REQUIRED: dict[str, tuple[str, ...]] = {
    "ingest": ("bars_per_s", "baseline_bars_per_s", "speedup"),
    "state": ("bars_per_s", "redis_roundtrips_per_bar"),
    "inference": ("batch_ms_503", "per_ticker_loop_ms_503", "speedup"),
    "e2e": ("p50_ms", "p95_ms", "p99_ms", "tickers", "bars_per_s", "backlog_growing", "rss_peak_mb"),
    "training": ("samples_per_s_1rank", "samples_per_s_2ranks", "scaling", "gpu_epoch_s"),
}
for _name in ("e2e_10k", "e2e_5000", "e2e_stress", "e2e_5000_stress", "e2e_8000"):
    REQUIRED[_name] = (*REQUIRED["e2e"], "pace")
REQUIRED["state_5000"] = (*REQUIRED["state"], "pace")
REQUIRED["spark_floor"] = ("add_batch_p50_ms", "trigger_execution_p50_ms", "events", "pace")
REQUIRED["redis_memory"] = ("bytes_per_ticker", "tickers")
REQUIRED["soak"] = ("minutes", "rss_growth_second_half_pct", "redis_used_memory_growth_second_half_pct")
REQUIRED["e2e_standalone"] = (*REQUIRED["e2e"], "spark_master")  # no master URL: it ran on local[*]
REQUIRED["state_2workers"] = (*REQUIRED["state"], "workers")
REQUIRED["api"] = ("forecast_one_p99_ms", "forecasts_all_p99_ms", "tickers", "sse_clients", "sse_p99_ms")


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
    mem_gib = round(psutil.virtual_memory().total / 2**30, 1) if psutil is not None else None
    try:
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
              command: str | None = None, keep: bool = False) -> dict[str, Any]:
    """Run the selected benchmarks in order and write ``latest.json`` and ``latest.md`` under ``out``
    (``keep``: merged into the earlier ``latest.json``, whose date, mode and command stay)."""
    chosen = [b for b in BENCHES if (only and b.name in only) or (not only and not (quick and b.full_only))]
    unknown = sorted(set(only or ()) - {b.name for b in BENCHES})
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {unknown}; known: {[b.name for b in BENCHES]}")
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
    earlier = out / "latest.json"
    if keep and earlier.exists():
        old = json.loads(earlier.read_text())
        merged = old["benchmarks"] | benchmarks
        rerun = {"date": results["date"], "command": results["command"], "benchmarks": list(benchmarks)}
        results = old | {"benchmarks": merged, "figures": figures(merged), "machine": results["machine"],
                         "reruns": [*old.get("reruns", []), rerun]}
    write(results, out)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="small inputs: the whole suite in under 5 minutes")
    parser.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help=f"comma-separated subset of: {', '.join(b.name for b in BENCHES)}")
    parser.add_argument("--keep", action="store_true",
                        help="with --only: keep the other benchmarks of the earlier <out>/latest.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default %(default)s)")
    parser.add_argument("--readme", action="store_true",
                        help="regenerate the docs' Performance page (docs/performance.md) from the new latest.json")


def run(args: argparse.Namespace) -> int:
    argv = ["minutecast", "bench", *sys.argv[2:]] if sys.argv[1:2] == ["bench"] else None
    results = run_suite(args.quick, args.only, args.out, command=" ".join(argv) if argv else None,
                        keep=args.keep and bool(args.only))
    print(markdown(results))
    print(f"\nwrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    if args.readme:
        path = readme.update(args.out / "latest.json")
        print(f"updated the Performance section of {path}")
    bad = failed(results)
    if bad:
        print(f"benchmarks that did not complete: {', '.join(bad)} (logs under {args.out / 'logs'})",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
