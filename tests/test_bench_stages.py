"""The e2e benchmark's latency split (benchmarks/stages.py) on synthetic timestamps, its README rendering, and
the benchmark's ticker list beyond the S&P 500. Pure: no services.

    /root/.cache/minutecast/venv/bin/python -m pytest tests/test_bench_stages.py
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from benchmarks import e2e, readme, stages
from benchmarks.stages import Batch, Trace
from minutecast.schemas import Bar, parse_bar_record
from minutecast.universe import sp500

T0 = 1_790_000_000.0  # an epoch second; every timestamp below is T0 + a few seconds


def stats_line(batch_id: int, started: float, duration_ms: float, events: int = 3, **extra: float) -> dict[str, Any]:
    return {"batch_id": batch_id, "started_at": T0 + started, "duration_ms": duration_ms, "events": events,
            "redis_read_ms": 10.0, "build_ms": 5.0, "model_load_ms": 0.5, "model_ms": 30.0, "write_ms": 20.0,
            **extra}


ENGINE = {"latestOffset": 15, "walCommit": 40, "getBatch": 1, "queryPlanning": 14, "addBatch": 300,
          "commitOffsets": 50, "triggerExecution": 420}


def test_parse_batches_joins_the_engine_line_and_skips_empty_batches() -> None:
    lines = [stats_line(2, 2.0, 300.0), {"progress_batch_id": 2, "engine_ms": ENGINE},
             stats_line(1, 1.0, 200.0, superseded_batch=2, superseded_state=1),
             stats_line(3, 3.0, 5.0, events=0), {"progress_batch_id": 3, "engine_ms": {"triggerExecution": 5}}]
    got = stages.parse_batches(lines)
    assert [b.batch_id for b in got] == [1, 2]  # by start time; the empty batch 3 is left out
    assert got[0].engine is None and got[1].engine == ENGINE  # batch 1's progress line never came
    assert got[0].superseded == 3 and got[1].phases["model_ms"] == 30.0
    assert got[1].end == pytest.approx(T0 + 2.3)


def test_batch_for_finds_the_batch_running_at_a_time() -> None:
    batches = stages.parse_batches([stats_line(1, 1.0, 200.0), stats_line(2, 2.0, 300.0)])
    assert stages.batch_for(batches, T0 + 1.1) is batches[0]
    assert stages.batch_for(batches, T0 + 2.3) is batches[1]  # its last instant
    assert stages.batch_for(batches, T0 + 1.5) is None  # between the two
    assert stages.batch_for(batches, T0 + 0.5) is None and stages.batch_for([], T0) is None


def one_forecast() -> tuple[Trace, list[Batch]]:
    """A bar published at T0, acked 30 ms later, window ready at +250 ms, batch start at +700 ms (its engine
    took 70 ms before foreachBatch), model output at +900 ms, forecast on Kafka at +950 ms."""
    batches = stages.parse_batches([stats_line(7, 0.7, 300.0), {"progress_batch_id": 7, "engine_ms": ENGINE}])
    return Trace(T0, 0.030, T0 + 0.250, T0 + 0.900, T0 + 0.950), batches


def test_split_telescopes_to_the_total_on_kafka() -> None:
    trace, batches = one_forecast()
    values, unmatched = stages.split([trace], batches)
    one = {k: v[0] for k, v in values.items() if v}
    assert unmatched == 0
    assert one["producer_to_broker"] == pytest.approx(30)
    assert one["broker_to_window_ready"] == pytest.approx(220)
    assert one["ready_to_batch_start"] == pytest.approx(450)
    assert one["engine_before_batch"] == pytest.approx(70)  # latestOffset + walCommit + getBatch + queryPlanning
    assert one["trigger_wait"] == pytest.approx(380)
    assert one["batch_start_to_model_out"] == pytest.approx(200)
    assert one["model_out_to_kafka"] == pytest.approx(50)
    assert one["total"] == pytest.approx(900) and one["total_to_kafka"] == pytest.approx(950)
    main = ("producer_to_broker", "broker_to_window_ready", "ready_to_batch_start", "batch_start_to_model_out",
            "model_out_to_kafka")
    assert sum(one[k] for k in main) == pytest.approx(one["total_to_kafka"])
    assert one["engine_before_batch"] + one["trigger_wait"] == pytest.approx(one["ready_to_batch_start"])
    # Per-batch figures, counted for the forecast: phases summed over partitions, Spark's durationMs.
    assert one["redis_read_build"] == 15 and one["model"] == 30.5 and one["redis_write"] == 20
    assert one["micro_batch"] == 300 and one["engine_commitOffsets"] == 50 and one["engine_triggerExecution"] == 420


def test_split_leaves_out_what_was_not_observed() -> None:
    trace, batches = one_forecast()
    no_ack = Trace(trace.published_at, None, trace.ready_at, trace.forecast_at, None)
    values, _ = stages.split([no_ack], batches)
    assert not values["producer_to_broker"] and not values["broker_to_window_ready"]
    assert not values["model_out_to_kafka"] and not values["total_to_kafka"] and values["total"] == [pytest.approx(900)]
    no_engine = [Batch(b.batch_id, b.started_at, b.duration_ms, b.events, b.superseded, b.phases, None)
                 for b in batches]
    values, _ = stages.split([trace], no_engine)
    assert values["ready_to_batch_start"] and not values["trigger_wait"] and not values["engine_addBatch"]
    late = Trace(T0 + 5, 0.01, T0 + 5.2, T0 + 5.5, T0 + 5.6)  # no batch ran then
    values, unmatched = stages.split([late], batches)
    assert unmatched == 1 and not values["ready_to_batch_start"] and values["model_out_to_kafka"]


def test_summarize_gives_percentiles_per_stage_in_table_order() -> None:
    batches = stages.parse_batches([stats_line(1, 0.0, 10_000.0)])
    traces = [Trace(T0, 0.01, T0 + 0.1, T0 + 0.1 + i / 1000, None) for i in range(1, 101)]  # 1 .. 100 ms later
    out = stages.summarize(traces, batches)
    assert out["unmatched"] == 0
    s = out["stages"]
    assert list(s) == [k for k, _ in stages.STAGES if k in s]
    assert "total_to_kafka" not in s and "trigger_wait" not in s  # never observed: left out
    b2m = s["batch_start_to_model_out"]
    assert b2m["n"] == 100 and b2m["p50_ms"] == pytest.approx(150.5) and b2m["p99_ms"] == pytest.approx(199, abs=0.1)
    assert s["producer_to_broker"] == {"p50_ms": 10.0, "p95_ms": 10.0, "p99_ms": 10.0, "n": 100}


def test_batch_means_are_per_batch() -> None:
    batches = stages.parse_batches([stats_line(1, 0.0, 100.0, events=2), stats_line(2, 1.0, 300.0, events=4),
                                    {"progress_batch_id": 2, "engine_ms": ENGINE}])
    m = stages.batch_means(batches)
    assert m["micro_batches"] == 2 and m["micro_batch_p50_ms"] == 200.0 and m["events_per_batch_mean"] == 3.0
    assert m["model_mean_ms"] == 30.0 and m["engine_walCommit_mean_ms"] == 40.0  # over the batches that have one
    assert stages.batch_means([])["micro_batch_p50_ms"] is None


def test_table_labels_of_which_rows_and_unknown_keys() -> None:
    s = {"total": {"p50_ms": 1234.5, "p95_ms": 2000.0, "p99_ms": 2500.0, "n": 10},
         "model": {"p50_ms": 31.25, "p95_ms": 40.0, "p99_ms": 45.0, "n": 10},
         "engine_newPart": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "n": 10}}
    lines = stages.table(s).splitlines()
    assert lines[0] == "| stage | p50 ms | p95 ms | p99 ms | forecasts |"
    assert lines[2].startswith("| &nbsp;&nbsp;of which: model (summed over partitions) | 31.2 | 40.0 | 45.0 | 10 |")
    assert lines[3].startswith("| total: bar published -> forecast_at") and "| 1,234 | 2,000 | 2,500 | 10 |" in lines[3]
    assert lines[4] == "| engine_newPart | 1.0 | 2.0 | 3.0 | 10 |"  # a key this checkout does not know yet


def results_with(e2e_result: dict[str, Any]) -> dict[str, Any]:
    bench = {"status": "ok", "seconds": 1.0, "load_avg_start": [1.0], "load_avg_end": [1.0], "missing": [],
             "command": "python -m benchmarks.e2e", "result": e2e_result}
    return {"date": "2026-11-22", "mode": "quick", "command": "minutecast bench --quick", "machine": {},
            "benchmarks": {"e2e": bench}}


def test_readme_shows_where_the_time_goes_when_the_result_has_stages() -> None:
    trace, batches = one_forecast()
    res = {"p50_ms": 900.0, "tickers": 5000, "target_bars_per_s": 5000.0,
           "stages": stages.summarize([trace], batches)["stages"]}
    text = readme.section(results_with(res))
    assert "## Where the time goes: `e2e` (5000 tickers, 5,000 bars/s)" in text
    assert stages.table(res["stages"]) in text
    assert "Where the time goes" not in readme.section(results_with({"p50_ms": 900.0}))  # older results


def test_tickers_beyond_the_sp500_are_generated_valid_and_distinct() -> None:
    assert e2e.tickers(10) == sp500()[:10]
    names = e2e.tickers(5000)
    assert len(names) == len(set(names)) == 5000 and names[:len(sp500())] == sp500()
    for t in names[len(sp500()):][::500]:  # the worker (allowlist off, as the benchmark runs it) admits them
        bar = Bar(t, 1_790_000_040, 10.0, 10.0, 10.0, 10.0, 1.0, "bench", published_at=time.time())
        assert parse_bar_record(t.encode(), bar.to_json()).ticker == t
