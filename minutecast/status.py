"""The pipeline's status as one JSON-ready dict: what `minutecast status` prints (``ops/status.py`` renders it)
and what ``GET /api/status`` returns (``web/routes/status.py``). No rendering here, no process probing.

:func:`collect` reads Kafka (topic ends, the bar rate over ``sample_s``, consumer lag, dead letters) and Redis
(forecasts, windows, the Faust worker's stall record, repairs, memory, the Spark job's progress). What only
this machine knows (its Kafka/Redis processes, the services of `minutecast run`, the horovod build) the caller
probes and passes in as :class:`Local` (``infra/runstate.py`` :func:`~infra.runstate.local`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from minutecast import dependency
from minutecast.errors import MinutecastError
from minutecast.forecast_store import ForecastStore
from minutecast.kafka import make_admin, make_consumer, watermarks
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.registry import Registry
from minutecast.schemas import Forecast
from minutecast.topics import Topics

MEMORY_ALERT = 0.8  # share of Redis's maxmemory from which `status` warns (past maxmemory, writes fail)


@dataclass(frozen=True)
class Local:
    """What the local machine's processes say (probed by the caller, not by this module)."""

    # kafka node(s) and redis started by `minutecast infra`: name -> {"up", "version", "address"}
    infra: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)  # `minutecast run` services: name -> up / done / down
    horovod: str = "ready"  # the background horovod build: ready / building / failed / missing (#26)


def collect(s: Any, local: Local, sample_s: float = 1.0) -> dict[str, Any]:
    """Everything `minutecast status` shows, as one dict (``s``: settings with namespace, home, kafka, redis,
    models_dir, e.g. InfraSettings)."""
    out: dict[str, Any] = {"namespace": s.namespace, "services": services(s, local)}
    out["waiting"] = waiting(s, out["services"])
    out["model_version"] = Registry(s.models_dir).current_version() or "persistence (no model promoted)"
    if not out["services"]["kafka"]["up"]:
        return out
    ready_ends = kafka_numbers(s, sample_s, out)
    if out["services"]["redis"]["up"]:
        redis_numbers(s, ready_ends, out)
    out["horovod"] = local.horovod  # #26: built in the background by `make run`; the trainer waits
    return out


def services(s: Any, local: Local) -> dict[str, dict[str, Any]]:
    """Kafka and Redis (up if ours runs or they answer: compose, remote), then this namespace's run services
    ("done": a one-shot replay that finished, not DOWN)."""
    out = {name: row | {"up": row["up"] or _reachable(s, name)} for name, row in local.infra.items()}
    for name, state in local.runs.items():
        out[name] = {"up": state != "down"} | ({"state": state} if state == "done" else {})
    return out


def waiting(s: Any, services: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """What services wait for while Kafka or Redis is away (:mod:`minutecast.dependency`): {service: {dep: since}};
    a waiting service's row says so."""
    found = dependency.waiting(s.home / "run", s.namespace)
    for name, deps in found.items():
        if name in services:
            services[name] |= {"state": "waiting", "waiting_for": deps, "detail": dependency.describe(deps)}
    return found


def kafka_numbers(s: Any, sample_s: float, out: dict[str, Any]) -> dict[int, int]:
    """Bars and forecasts on the topics, the bar rate, consumer lag, dead letters (into ``out``); returns the
    window-ready topic's ends (the Spark job's lag is measured against them)."""
    topics = Topics(s.namespace)
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
        out["dead_letters"] = _dead_letters(consumer, topics.deadletter, ends[topics.deadletter])
    finally:
        consumer.close()
    return ends[topics.ready]


def redis_numbers(s: Any, ready_ends: dict[int, int], out: dict[str, Any]) -> None:
    """Forecasts and windows in Redis, the Faust worker's stall/fatal record, repairs, memory, the Spark job."""
    keys = Keys(s.namespace)
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


def forecast_times(client: Any, keys: Any) -> list[float]:
    """``forecast_at`` of every ticker's latest forecast in the namespace (one round trip after the scan)."""
    prefix = keys.forecast("")
    tickers = [(k.decode() if isinstance(k, bytes) else k)[len(prefix):]
               for k in client.scan_iter(match=keys.forecast_pattern(), count=1000)]
    got = ForecastStore(keys).newest_now(client, tickers)
    return [Forecast.from_json(v[-1][1]).forecast_at for v in got.values() if v]


def redis_memory(client: Any) -> dict[str, Any]:
    """Redis's used memory against its ``maxmemory`` (0: no limit) and whether it is past the alert level."""
    info = client.info("memory")
    used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    share = used / limit if limit else None
    return {"used_bytes": used, "max_bytes": limit, "share": None if share is None else round(share, 4),
            "policy": info.get("maxmemory_policy"), "alert": share is not None and share >= MEMORY_ALERT}


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
