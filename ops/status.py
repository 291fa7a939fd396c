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
import time
from collections import Counter
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from infra import horovod_build
from infra.services import status as infra_status
from minutecast import dependency
from minutecast.errors import MinutecastError
from minutecast.kafka import make_admin, make_consumer, watermarks
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.registry import Registry
from minutecast.settings import InfraSettings
from minutecast.topics import Topics
from ops.forecast import forecast_times
from ops.supervisor import service_states


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--sample-s", type=float, default=1.0, help="seconds between two offset samples (bars/s)")


def _topic_end(consumer: Any, topic: str) -> dict[int, int]:
    return {p: high for p, (_, high) in watermarks(consumer, topic).items()}


def _group_lag(admin: Any, ends: dict[str, dict[int, int]]) -> dict[str, int]:
    """Lag (messages) of every consumer group that reads one of our topics."""

    lags: dict[str, int] = {}
    groups = admin.list_consumer_groups(request_timeout=10).result().valid
    for g in groups:
        try:
            res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g.group_id)])
            parts = res[g.group_id].result().topic_partitions
        except Exception:  # noqa: BLE001, S112 - a group that vanished meanwhile
            continue
        lag, ours = 0, False
        for tp in parts:
            if tp.topic in ends and tp.offset >= 0:
                ours = True
                lag += max(0, ends[tp.topic].get(tp.partition, 0) - tp.offset)
        if ours:
            lags[g.group_id] = lag
    return lags


def _spark(client: Any, keys: Keys, ends: dict[int, int]) -> dict[str, Any] | None:
    """The Spark job's own progress record (``Keys.infer_progress``): its lag behind the window-ready topic's
    end, the age of its newest finished micro-batch, and that batch's id (Spark commits no group offsets)."""
    rec = client.hgetall(keys.infer_progress())
    if not rec:
        return None
    try:
        done = {int(p): int(o) for p, o in json.loads(rec.get("ready_offsets") or "{}").items()}
        at, batch_id = float(rec["at"]), int(rec["batch_id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return {"unreadable": True}
    return {"lag": sum(max(0, e - done.get(p, 0)) for p, e in ends.items()), "age_s": round(time.time() - at, 1),
            "batch_id": batch_id}


MEMORY_ALERT = 0.8  # share of Redis's maxmemory from which `status` warns (past maxmemory, writes fail)


def redis_memory(client: Any) -> dict[str, Any]:
    """Redis's used memory against its ``maxmemory`` (0: no limit) and whether it is past the alert level."""
    info = client.info("memory")
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    share = used / limit if limit else None
    return {"used_bytes": used, "max_bytes": limit, "share": None if share is None else round(share, 4),
            "policy": info.get("maxmemory_policy"), "alert": share is not None and share >= MEMORY_ALERT}


def _reachable(s: Any, name: str) -> bool:
    """Whether Kafka/Redis answer with these settings (brokers not started by `minutecast infra`: compose)."""

    try:
        if name == "kafka":
            make_admin(s.kafka, log_level=0).list_topics(timeout=2)
        else:
            connect(s.redis, wait=False).ping()
    except (MinutecastError, Exception):  # noqa: BLE001 - any failure means: not reachable
        return False
    return True


def collect(sample_s: float = 1.0, s: Any = None) -> dict[str, Any]:
    """Everything `minutecast status` shows, as one JSON-ready dict (``s``: settings, default InfraSettings)."""

    s = s or InfraSettings()
    topics, keys = Topics(s.namespace), Keys(s.namespace)
    out: dict[str, Any] = {"namespace": s.namespace, "services": {}}
    for row in infra_status(s):
        up = row.up or _reachable(s, row.name)
        out["services"][row.name] = {"up": up, "version": row.version, "address": row.address}
    # This namespace's `minutecast run` services; "done": a one-shot replay that finished (not DOWN).
    for name, state in service_states(s.home / "run", s.namespace).items():
        out["services"][name] = {"up": state != "down"} | ({"state": state} if state == "done" else {})
    # What services wait for while Kafka or Redis is away (minutecast.dependency): {service: {dep: since}}.
    out["waiting"] = dependency.waiting(s.home / "run", s.namespace)
    for name, deps in out["waiting"].items():
        if name in out["services"]:
            out["services"][name] |= {"state": "waiting", "waiting_for": deps, "detail": dependency.describe(deps)}
    out["model_version"] = Registry(s.models_dir).current_version() or "persistence (no model promoted)"
    if not out["services"]["kafka"]["up"]:
        return out
    consumer = make_consumer(s.kafka, group="minutecast-status")
    try:
        names = [topics.bars, topics.ready, topics.forecasts, topics.deadletter]
        first = {t: _topic_end(consumer, t) for t in names}
        time.sleep(sample_s)
        ends = {t: _topic_end(consumer, t) for t in names}
        ready_ends = ends[topics.ready]
        out["bars_total"] = sum(ends[topics.bars].values())
        out["bars_per_s"] = round((out["bars_total"] - sum(first[topics.bars].values())) / sample_s, 1)
        out["forecasts_total"] = sum(ends[topics.forecasts].values())
        out["consumer_lag"] = _group_lag(make_admin(s.kafka), ends)
        out["dead_letters"] = _dead_letters(consumer, topics.deadletter, ends[topics.deadletter])
    finally:
        consumer.close()
    if out["services"]["redis"]["up"]:
        client = connect(s.redis, wait=False, decode_responses=True)
        stamps = forecast_times(client, keys)
        out["tickers_with_forecast"] = len(stamps)
        out["last_forecast_age_s"] = round(time.time() - max(stamps), 1) if stamps else None
        out["windows"] = sum(1 for _ in client.scan_iter(match=keys.window_pattern(), count=1000))
        # A Faust worker that retries (Redis/Kafka unavailable) or stopped on a fatal error says so here.
        since, reason, fatal, repairs, restored = client.hmget(
            keys.stats(), "stream_stalled_since", "stream_stall_reason", "stream_fatal", "stream_repairs",
            "infer_restored")
        # Redis lost acknowledged writes (a crash before its fsync) and the services repaired from Kafka.
        out["redis_repairs"] = {"window_partitions": int(repairs or 0), "forecasts_restored": int(restored or 0)}
        stalled = float(since or 0)
        out["stream_stalled_s"] = round(time.time() - stalled, 1) if stalled > 0 else None
        out["stream_stall_reason"] = reason if stalled > 0 else None
        out["stream_fatal"] = fatal or None
        out["redis_memory"] = redis_memory(client)
        if "consumer_lag" in out:
            out["spark"] = _spark(client, keys, ready_ends)
            if out["spark"] and "lag" in out["spark"]:
                out["consumer_lag"]["spark-infer"] = out["spark"]["lag"]

    out["horovod"] = horovod_build.state()  # #26: built in the background by `make run`; the trainer waits
    return out


def _dead_letters(consumer: Any, topic: str, ends: dict[int, int], last: int = 5000) -> dict[str, Any]:
    """Total dead letters and the reasons of the newest ``last`` of them."""

    total = sum(ends.values())
    reasons: Counter[str] = Counter()
    if total:
        consumer.assign([TopicPartition(topic, p, max(0, e - last)) for p, e in ends.items()])
        want, seen = min(total, last * len(ends)), 0
        deadline = time.monotonic() + 10
        while seen < want and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is None:
                    seen += 1
                    try:
                        reasons[json.loads(msg.value())["reason"]] += 1
                    except (ValueError, KeyError, TypeError):
                        reasons["unreadable"] += 1
        consumer.unassign()
    return {"total": total, "by_reason": dict(reasons.most_common())}


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
