"""One screen on the whole pipeline: services, consumer lag, bar rate, forecasts, model, dead letters.

    minutecast status
    minutecast status --json      # the same as one JSON object (last line)

A service waiting for Kafka or Redis (an outage it rides out) shows as ``waiting for Redis since 14:45:02``
(JSON: ``services.<name>.waiting_for`` and ``waiting``: {service: {dependency: epoch s since}}).

:func:`collect` gathers the data (one dict); :func:`render` turns it into the text screen. ``minutecast
serve`` returns the same dict as ``GET /api/status``.
"""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from infra import horovod_build
from infra.runstate import local
from minutecast import status as core
from minutecast.settings import InfraSettings

# Their old home: tests/test_bounds.py imports them from here.
from minutecast.status import MEMORY_ALERT as MEMORY_ALERT  # noqa: F401
from minutecast.status import redis_memory as redis_memory  # noqa: F401


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--sample-s", type=float, default=1.0, help="seconds between two offset samples (bars/s)")


def collect(sample_s: float = 1.0, s: Any = None) -> dict[str, Any]:
    """Everything `minutecast status` shows, as one JSON-ready dict (``s``: settings, default InfraSettings):
    :func:`minutecast.status.collect` over this machine's processes (:func:`infra.runstate.local`)."""
    s = s or InfraSettings()
    return core.collect(s, local(s), sample_s)


def screen(out: dict[str, Any]) -> Group:
    """:func:`collect`'s dict as a rich renderable: a services table, then the pipeline's numbers."""
    services = Table(title=f"minutecast status: namespace {out['namespace']}", title_justify="left")
    for col in ("service", "state", "version", "address"):
        services.add_column(col)
    for name, svc in out["services"].items():
        state = svc.get("detail") or svc.get("state") or ("up" if svc["up"] else "DOWN")
        style = "bold yellow" if svc.get("waiting_for") else "green" if svc["up"] else "bold red"
        services.add_row(name, Text(state if state != "down" else "DOWN", style=style),
                         str(svc.get("version", "")), str(svc.get("address", "")))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    if "bars_total" in out:
        facts.add_row("bars in topic", f"{out['bars_total']:,}  ({out['bars_per_s']:,} bars/s now)")
        facts.add_row("forecasts", f"{out['forecasts_total']:,} on the topic")
        for group, lag in sorted(out["consumer_lag"].items()):
            facts.add_row(f"  lag {group}", f"{lag:,}")
        dl = out["dead_letters"]
        facts.add_row("dead letters", f"{dl['total']:,}  " + ", ".join(f"{k}={v}" for k, v in dl["by_reason"].items()))
    spark = out.get("spark")
    if spark:
        facts.add_row("spark job", "progress record unreadable" if spark.get("unreadable") else
                      f"batch {spark['batch_id']} finished {spark['age_s']} s ago, {spark['lag']:,} events behind")
    if "tickers_with_forecast" in out:
        facts.add_row("tickers", f"{out['windows']} windows, {out['tickers_with_forecast']} with a forecast; "
                      f"newest forecast {out['last_forecast_age_s']} s old")
    if out.get("stream_stalled_s") is not None:
        facts.add_row(Text("STALLED", style="bold red"),
                      f"Faust worker retrying for {out['stream_stalled_s']} s: {out['stream_stall_reason']}")
    if out.get("stream_fatal"):
        facts.add_row(Text("FATAL", style="bold red"), f"Faust worker stopped: {out['stream_fatal']}")
    rep = out.get("redis_repairs")
    if rep and (rep["window_partitions"] or rep["forecasts_restored"]):
        facts.add_row("redis repairs", f"{rep['window_partitions']} partitions of windows re-applied, "
                      f"{rep['forecasts_restored']} forecasts restored from Kafka (Redis lost writes)")
    mem = out.get("redis_memory")
    if mem:
        limit = f"{mem['max_bytes'] / 2**20:,.0f} MiB" if mem["max_bytes"] else "no limit"
        facts.add_row(Text("MEMORY", style="bold red") if mem["alert"] else "redis memory",
                      f"{mem['used_bytes'] / 2**20:,.1f} MiB of {limit} ({mem['policy']})")
    facts.add_row("model", str(out["model_version"]))
    if out.get("horovod", "ready") != "ready":  # #26
        facts.add_row("trainer", horovod_build.waiting_text())
    return Group(services, facts)


def render(out: dict[str, Any], width: int = 120) -> str:
    """The screen as plain text (what `minutecast status` prints where stdout is not a terminal)."""
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(screen(out))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


def healthy(out: dict[str, Any]) -> bool:
    return all(v["up"] for v in out["services"].values()) and out.get("stream_stalled_s") is None \
        and not out.get("stream_fatal") and not (out.get("redis_memory") or {}).get("alert")


def run(args: argparse.Namespace) -> int:
    out = collect(args.sample_s)
    if args.json:
        print(json.dumps(out))
    else:
        Console().print(screen(out))
    if args.json:
        return 0
    return 0 if healthy(out) else 1
