"""The benchmark suite's own tests: each benchmark runs on a tiny input and emits its JSON with the required
names, and the suite/report logic works on canned JSON. No timing assertions (targets live in benchmarks/).

    /root/.cache/minutecast/venv/bin/python -m pytest tests/test_benchmarks.py

The ingest benchmark is already run on a tiny input by tests/test_producers_integration.py; here only its
required names are checked against that test's assertions, not re-run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import readme, report, suite
from minutecast.cli import main as minutecast_main
from minutecast.settings import InfraSettings

REPO = Path(__file__).resolve().parents[1]


def canned() -> dict[str, Any]:
    """What run_suite returns, for a run where every benchmark succeeded with made-up figures."""
    results = {
        "ingest": {"bars_per_s": 250_000, "baseline_bars_per_s": 2_000, "speedup": 125.0, "bars_per_s_2proc": 300_000},
        "state": {"bars_per_s": 9_400, "redis_roundtrips_per_bar": 0.0024},
        "inference": {"batch_ms_503": 30.0, "per_ticker_loop_ms_503": 23_300.0, "speedup": 776.7},
        "e2e": {"p50_ms": 3660.0, "p95_ms": 5380.0, "p99_ms": 5980.0, "tickers": 503, "bars_per_s": 503,
                "backlog_growing": False,
                "rss_peak_mb": {s: 100.0 for s in report.RSS_SERVICES}},
        "training": {"samples_per_s_1rank": 12_000.0, "samples_per_s_2ranks": 17_200.0, "scaling": 1.43,
                     "gpu_epoch_s": None},
    }
    benchmarks = {n: {"status": "ok", "seconds": 1.0, "load_avg_start": [1.0, 1.0, 1.0],
                      "load_avg_end": [2.0, 1.0, 1.0], "missing": [], "result": r, "command": f"python -m x.{n}"}
                  for n, r in results.items()}
    return {"date": "2026-11-22T03:00:00+00:00", "mode": "quick", "command": "minutecast bench --quick",
            "total_s": 5.0, "machine": {"cpus": 2, "cpu_model": "test cpu", "gpus": []},
            "benchmarks": benchmarks, "figures": report.figures(benchmarks)}


# --- suite and report logic on canned JSON (no services) -------------------------------------------------------

def test_last_json_takes_the_last_nonempty_line_only() -> None:
    assert suite.last_json('progress\n{"a": 1}\n{"b": 2}\n\n') == {"b": 2}
    assert suite.last_json('{"a": 1}\ntrailing text') is None
    assert suite.last_json("") is None
    assert suite.last_json("[1, 2]") is None


def test_missing_names_and_lookup() -> None:
    assert suite.missing_names("state", {"bars_per_s": 1}) == ["redis_roundtrips_per_bar"]
    assert suite.missing_names("inference", None) == list(suite.REQUIRED["inference"])
    assert report.lookup({"a": {"b": 3}}, "a.b") == 3
    assert report.lookup({"a": 1}, "a.b") is None


@pytest.mark.parametrize(("value", "target", "expected"), [
    (9_400, (">=", 20_000), False), (25_000, (">=", 20_000), True), (30.0, ("<=", 50), True),
    (5980.0, ("<", 1500), False), (False, ("==", False), True), (True, ("==", False), False),
    (1.0, None, None), (None, ("<", 1), None),
])
def test_met(value: Any, target: Any, expected: bool | None) -> None:
    assert report.met(value, target) is expected


def test_figures_put_baseline_seed_and_target_beside_ours() -> None:
    rows = {r["figure"]: r for r in canned()["figures"]}
    inf = rows["inference: one batch of 503 windows"]
    assert inf["value"] == 30.0 and inf["baseline"] == 23_300.0 and inf["met"] is True and "21,600" in inf["seed"]
    assert inf["baseline_note"] == "one predict per ticker"  # not extrapolated in the canned result
    assert rows["state: one Faust worker into Redis"]["met"] is False
    assert rows["e2e latency p99"]["met"] is False and rows["e2e backlog growing"]["met"] is True
    assert rows["training, 2 Horovod ranks"]["baseline"] == 12_000.0
    assert rows["training scaling 2 ranks / 1 rank"]["met"] is False
    assert all(f"peak RSS during e2e: {report.RSS_LABELS[s]}" in rows for s in report.RSS_SERVICES)
    # no GPU value -> no GPU row; a benchmark that did not run (e2e_10k) -> no row
    assert not any("GPU" in f or "10k" in f for f in rows)


def test_scale_out_figures_sit_beside_their_same_run_baselines_from_the_other_benchmark() -> None:
    benchmarks = canned()["benchmarks"]
    benchmarks["state_2workers"] = {"status": "ok", "result": {"bars_per_s": 15_040, "workers": 2}}
    benchmarks["e2e_standalone"] = {"status": "ok", "result": {"p50_ms": 4000.0, "p99_ms": 7000.0,
                                                                "spark_master": "spark://127.0.0.1:1"}}
    rows = {r["figure"]: r for r in report.figures(benchmarks)}
    two = rows["state: two Faust workers (one group) into Redis"]
    assert (two["value"], two["baseline"], two["baseline_note"]) == (15_040, 9_400, "1 worker")
    scaling = rows["state scaling 2 workers / 1 worker"]
    assert scaling["value"] == 1.6 and scaling["baseline"] is None and scaling["met"] is True  # 15,040 / 9,400
    for p, ours, local in (("p50", 4000.0, 3660.0), ("p99", 7000.0, 5980.0)):
        row = rows[f"e2e on Spark standalone (master + 2 workers): latency {p}"]
        assert (row["value"], row["baseline"], row["baseline_note"]) == (ours, local, "local[*], e2e")
    md = report.markdown(canned() | {"figures": list(rows.values())})
    assert "| state scaling 2 workers / 1 worker | 1.60x |  |  | ≥ 1.60x | yes |" in md
    # Without the 1-worker run (--only state_2workers): its own figure stays, with no baseline and no ratio.
    del benchmarks["state"]
    alone = {r["figure"]: r for r in report.figures(benchmarks)}
    assert alone["state: two Faust workers (one group) into Redis"]["baseline"] is None
    assert "state scaling 2 workers / 1 worker" not in alone
    assert suite.missing_names("e2e_standalone", {k: 1 for k in suite.REQUIRED["e2e"]}) == ["spark_master"]
    assert suite.missing_names("state_2workers", {"bars_per_s": 1, "redis_roundtrips_per_bar": 0}) == ["workers"]
    assert [b.argv(True)[3:] for b in suite.BENCHES if b.name in ("state_2workers", "e2e_standalone")] == [
        ["--quick", "--workers", "2"], ["--quick", "--standalone", "--minutes", "10"]]


def test_markdown_table_and_status_lines() -> None:
    md = report.markdown(canned())
    assert "| figure | ours | baseline (same run) | seed | target | met? |" in md
    assert "| inference: one batch of 503 windows | 30.0 ms | 23,300 ms (one predict per ticker) |" in md
    assert "**no**" in md and "| yes |" in md
    assert "load average (1 min) 1.0 → 2.0" in md and "test cpu" in md and "minutecast bench --quick" in md


def test_readme_render_replaces_only_the_marked_section(tmp_path: Path) -> None:
    before, after = "# Title\n\nintro\n\n", "\n\n## Later\n\ntext <!-- not a marker -->\n"
    text = before + readme.START + "\nold stuff\n" + readme.END + after
    out = readme.render(text, canned())
    assert out.startswith(before + readme.START + "\n# Performance\n") and out.endswith(readme.END + after)
    assert "old stuff" not in out and "quick" in out and "minutecast bench --quick" in out
    assert readme.render(out, canned()) == out  # idempotent
    with pytest.raises(ValueError, match="markers"):
        readme.render("# no markers\n", canned())
    results = tmp_path / "latest.json"
    results.write_text(json.dumps(canned()))
    target = tmp_path / "README.md"
    target.write_text(text)
    readme.update(results, target)
    assert target.read_text() == out


def test_run_one_records_status_load_and_a_non_json_output(tmp_path: Path) -> None:
    # `python -m benchmarks.readme --help` exits 0 but its last line is no JSON: "incomplete", not "ok".
    bench = suite.Bench("x", "readme", 60, 60, quick_args=("--help",))
    entry = suite.run_one(bench, True, tmp_path)
    assert entry["status"] == "incomplete" and entry["returncode"] == 0 and entry["result"] is None
    assert len(entry["load_avg_start"]) == 3 and len(entry["load_avg_end"]) == 3
    assert "usage" in Path(entry["log"]).read_text()


def test_write_and_unknown_benchmark(tmp_path: Path) -> None:
    report.write(canned(), tmp_path)
    assert json.loads((tmp_path / "latest.json").read_text())["mode"] == "quick"
    assert (tmp_path / "latest.md").read_text().startswith("# Benchmark results (quick run")
    assert minutecast_main(["bench", "--only", "nope", "--out", str(tmp_path / "x")]) == 1  # ConfigError
    assert not (tmp_path / "x").exists()


def test_a_rerun_with_keep_replaces_only_its_benchmarks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--only state --keep`` after a fix: state's entry is the new one, the others stay as the earlier run left
    them, the figures are recomputed and the re-run is listed (in latest.md and the docs section too)."""
    report.write(canned(), tmp_path)
    new = {"status": "ok", "seconds": 2.0, "load_avg_start": [0.5] * 3, "load_avg_end": [0.5] * 3, "missing": [],
           "result": {"bars_per_s": 31_000, "redis_roundtrips_per_bar": 0.001}, "command": "python -m x.state"}
    monkeypatch.setattr(suite, "run_one", lambda bench, quick, log_dir: new)
    got = suite.run_suite(True, ["state"], tmp_path, command="minutecast bench --only state --keep", keep=True)
    old = canned()
    assert got["benchmarks"] == old["benchmarks"] | {"state": new} and got["date"] == old["date"]
    assert [r["benchmarks"] for r in got["reruns"]] == [["state"]]
    assert next(f for f in got["figures"] if f["key"] == "bars_per_s" and f["bench"] == "state")["value"] == 31_000
    assert "Re-run on" in (tmp_path / "latest.md").read_text() and "Re-run on" in readme.section(got)
    alone = suite.run_suite(True, ["state"], tmp_path / "fresh", command="x", keep=True)  # nothing earlier
    assert list(alone["benchmarks"]) == ["state"] and "reruns" not in alone


def test_machine_description_without_heavy_imports() -> None:
    m = suite.machine()
    assert m["cpus"] and m["python"] and isinstance(m["gpu"], bool)
    assert m["tensorflow"] and m["pyspark"] and m["kafka_broker"]
    # Versions come from package metadata: checked in a fresh interpreter, since other tests in this
    # session may have imported TensorFlow already.
    code = ("import sys; from benchmarks import suite; suite.machine(); "
            "assert 'tensorflow' not in sys.modules and 'pyspark' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_ingest_names_are_checked_by_the_producers_test() -> None:
    text = (REPO / "tests" / "test_producers_integration.py").read_text()
    assert "benchmarks.ingest" in text
    assert all(f'result["{k}"]' in text for k in suite.REQUIRED["ingest"])


# --- each benchmark on a tiny input against the real services ----------------------------------------------------

def bench_json(args: list[str], timeout: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                         env=env, check=False)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    result = suite.last_json(res.stdout)
    assert result is not None, res.stdout[-2000:]
    return result


@pytest.mark.integration
def test_state_benchmark_quick(services: InfraSettings, shared_data: Path) -> None:
    r = bench_json(["benchmarks.state", "--quick", "--timeout", "240"], 300,
                   os.environ | {"MINUTECAST_SHARED_DATA": str(shared_data)})
    assert not suite.missing_names("state", r)
    assert r["bars"] > 0 and r["bars_per_s"] > 0 and r["redis_roundtrips_per_bar"] > 0


def test_inference_benchmark_quick() -> None:
    r = bench_json(["benchmarks.inference", "--quick", "--repeats", "3"], 300)
    assert not suite.missing_names("inference", r)
    assert r["tickers"] == 503 and r["batch_ms_503"] > 0 and r["per_ticker_loop_ms_503"] > 0


@pytest.mark.integration
@pytest.mark.spark
def test_e2e_benchmark_tiny_reports_latency_and_memory(services: InfraSettings) -> None:
    r = bench_json(["benchmarks.e2e", "--tickers", "10", "--minutes", "3", "--warm-bursts", "1", "--persistence"], 600)
    assert not suite.missing_names("e2e", r)
    assert r["tickers"] == 10 and r["forecasts"] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    # the warm-up burst is reported apart and not timed: the timed forecasts are those of the 3 timed minutes
    assert r["warm_up_bursts"] == 1 and len(r["warm_up_p50_ms_by_minute"]) == 1
    assert r["forecasts"] == r["expected"] == 30 and len(r["p50_ms_by_minute"]) == 3
    assert isinstance(r["backlog_growing"], bool)
    assert set(r["rss_peak_mb"]) == set(report.RSS_SERVICES) and all(v > 0 for v in r["rss_peak_mb"].values())
    # Where the time goes (benchmarks.stages): every main stage measured for the forecasts.
    assert {"producer_to_broker", "broker_to_window_ready", "ready_to_batch_start", "batch_start_to_model_out",
            "model_out_to_kafka", "total"} <= set(r["stages"]) and r["stages"]["total"]["n"] == r["forecasts"]


@pytest.mark.integration
@pytest.mark.spark
def test_spark_floor_benchmark_tiny(services: InfraSettings) -> None:
    # 3 s apart: a batch on a loaded CI machine took over 1.5 s, and bursts then shared batches
    r = bench_json(["benchmarks.spark_floor", "--events", "40", "--bursts", "5", "--every-s", "3"], 300)
    assert not suite.missing_names("spark_floor", r)
    # Bursts reached the idle body whole and their batches were timed (a split one is counted, not timed).
    assert r["events"] == 40 and r["bursts"] >= 1 and r["split_batches"] >= 0
    assert 0 < r["add_batch_p50_ms"] <= r["trigger_execution_p50_ms"]


@pytest.mark.horovod
def test_training_benchmark_tiny() -> None:
    r = bench_json(["benchmarks.training", "--tiny"], 400)
    assert not suite.missing_names("training", r)
    assert r["samples_per_s_1rank"] > 0 and r["samples_per_s_2ranks"] > 0 and r["scaling"] > 0
    assert [run["ranks"] for run in r["runs"]] == [1, 2]
