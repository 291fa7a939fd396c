"""One screen on the whole pipeline: services, consumer lag, bar rate, forecasts, model, dead letters.

    minutecast status
    minutecast status --json      # the same as one JSON object (last line)

:func:`collect` gathers the data (one dict); :func:`render` turns it into the text screen. ``minutecast
serve`` returns the same dict as ``GET /api/status``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--sample-s", type=float, default=1.0, help="seconds between two offset samples (bars/s)")


def _topic_end(consumer: Any, topic: str) -> dict[int, int]:
    from minutecast.kafka import watermarks

    return {p: high for p, (_, high) in watermarks(consumer, topic).items()}


def _group_lag(admin: Any, ends: dict[str, dict[int, int]]) -> dict[str, int]:
    """Lag (messages) of every consumer group that reads one of our topics."""
    from confluent_kafka import ConsumerGroupTopicPartitions

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


def _spark_lag(checkpoint: Path, ends: dict[int, int], topic: str) -> int | None:
    """Lag of the Spark job from its checkpoint's newest offsets file (Spark commits no group offsets)."""
    offsets = checkpoint / "offsets"
    files = sorted((f for f in offsets.glob("[0-9]*") if f.name.isdigit()), key=lambda f: int(f.name))
    if not files:
        return None
    for line in reversed(files[-1].read_text().splitlines()):
        if line.startswith("{") and topic in line:
            done = json.loads(line).get(topic, {})
            return sum(max(0, e - int(done.get(str(p), 0))) for p, e in ends.items())
    return None


def _reachable(s: Any, name: str) -> bool:
    """Whether Kafka/Redis answer with these settings (brokers not started by `minutecast infra`: compose)."""
    from minutecast.errors import MinutecastError

    try:
        if name == "kafka":
            from minutecast.kafka import make_admin

            make_admin(s.kafka, log_level=0).list_topics(timeout=2)
        else:
            from minutecast.redis import connect

            connect(s.redis).ping()
    except (MinutecastError, Exception):  # noqa: BLE001 - any failure means: not reachable
        return False
    return True


def collect(sample_s: float = 1.0, s: Any = None) -> dict[str, Any]:
    """Everything `minutecast status` shows, as one JSON-ready dict (``s``: settings, default InfraSettings)."""
    from infra.services import status as infra_status
    from minutecast.kafka import make_admin, make_consumer
    from minutecast.keys import Keys
    from minutecast.redis import connect
    from minutecast.settings import InferenceSettings, InfraSettings
    from minutecast.topics import Topics
    from ops.forecast import forecast_times
    from ops.supervisor import service_pids

    s = s or InfraSettings()
    topics, keys = Topics(s.namespace), Keys(s.namespace)
    out: dict[str, Any] = {"namespace": s.namespace, "services": {}}
    for row in infra_status(s):
        up = row.up or _reachable(s, row.name)
        out["services"][row.name] = {"up": up, "version": row.version, "address": row.address}
    for name, pid in service_pids(s.home / "run", s.namespace).items():  # this namespace's `minutecast run`
        out["services"][name] = {"up": pid is not None}
    if not out["services"]["kafka"]["up"]:
        return out
    consumer = make_consumer(s.kafka, group="minutecast-status")
    try:
        names = [topics.bars, topics.ready, topics.forecasts, topics.deadletter]
        first = {t: _topic_end(consumer, t) for t in names}
        time.sleep(sample_s)
        ends = {t: _topic_end(consumer, t) for t in names}
        out["bars_total"] = sum(ends[topics.bars].values())
        out["bars_per_s"] = round((out["bars_total"] - sum(first[topics.bars].values())) / sample_s, 1)
        out["forecasts_total"] = sum(ends[topics.forecasts].values())
        out["consumer_lag"] = _group_lag(make_admin(s.kafka), ends)
        spark = _spark_lag(InferenceSettings().checkpoint, ends[topics.ready], topics.ready)
        if spark is not None:
            out["consumer_lag"]["spark-infer (checkpoint)"] = spark
        out["dead_letters"] = _dead_letters(consumer, topics.deadletter, ends[topics.deadletter])
    finally:
        consumer.close()
    if out["services"]["redis"]["up"]:
        client = connect(s.redis, decode_responses=True)
        stamps = forecast_times(client, keys)
        out["tickers_with_forecast"] = len(stamps)
        out["last_forecast_age_s"] = round(time.time() - max(stamps), 1) if stamps else None
        out["windows"] = sum(1 for _ in client.scan_iter(match=keys.window_pattern(), count=1000))
        # A Faust worker that retries (Redis/Kafka unavailable) or stopped on a fatal error says so here.
        since, reason, fatal = client.hmget(keys.stats(), "stream_stalled_since", "stream_stall_reason",
                                            "stream_fatal")
        stalled = float(since or 0)
        out["stream_stalled_s"] = round(time.time() - stalled, 1) if stalled > 0 else None
        out["stream_stall_reason"] = reason if stalled > 0 else None
        out["stream_fatal"] = fatal or None
    from minutecast.registry import Registry

    out["model_version"] = Registry(s.models_dir).current_version() or "persistence (no model promoted)"
    return out


def _dead_letters(consumer: Any, topic: str, ends: dict[int, int], last: int = 5000) -> dict[str, Any]:
    """Total dead letters and the reasons of the newest ``last`` of them."""
    from confluent_kafka import TopicPartition

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


def render(out: dict[str, Any]) -> str:
    """The text screen of :func:`collect`'s dict."""
    lines = [f"namespace {out['namespace']}"]
    for name, svc in out["services"].items():
        extra = f" {svc.get('version', '')} {svc.get('address', '')}".rstrip()
        lines.append(f"  {name:<10} {'up' if svc['up'] else 'DOWN'}{extra}")
    if "bars_total" in out:
        lines.append(f"bars in topic   {out['bars_total']:,}  ({out['bars_per_s']:,} bars/s now)")
        lines.append(f"forecasts       {out['forecasts_total']:,} on the topic")
        for group, lag in sorted(out["consumer_lag"].items()):
            lines.append(f"  lag {group:<40} {lag:,}")
        dl = out["dead_letters"]
        lines.append(f"dead letters    {dl['total']:,}  " + ", ".join(f"{k}={v}" for k, v in dl["by_reason"].items()))
    if "tickers_with_forecast" in out:
        lines.append(f"tickers         {out['windows']} windows, {out['tickers_with_forecast']} with a forecast; "
                     f"newest forecast {out['last_forecast_age_s']} s old")
    if out.get("stream_stalled_s") is not None:
        lines.append(f"STALLED         Faust worker retrying for {out['stream_stalled_s']} s: "
                     f"{out['stream_stall_reason']}")
    if out.get("stream_fatal"):
        lines.append(f"FATAL           Faust worker stopped: {out['stream_fatal']}")
    lines.append(f"model           {out['model_version']}")
    return "\n".join(lines)


def healthy(out: dict[str, Any]) -> bool:
    return all(v["up"] for v in out["services"].values()) and out.get("stream_stalled_s") is None \
        and not out.get("stream_fatal")


def run(args: argparse.Namespace) -> int:
    out = collect(args.sample_s)
    print(json.dumps(out) if args.json else render(out))
    if args.json:
        return 0
    return 0 if healthy(out) else 1
