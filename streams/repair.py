"""Repair of Redis state that fell behind Kafka (Redis lost acknowledged writes).

Redis fsyncs its AOF once a second (``appendfsync everysec``); after a machine crash it comes back without
the last second of writes, while Kafka already holds the offsets the Faust worker committed for them.
Two records make that loss impossible to miss, and both are repaired from Kafka, the source of truth:

* **windows** (:class:`BarRepair`): the window store's script records, in the same call as the bars, the
  newest offset applied per bar-topic partition (``ns:stream:applied``). Redis restores a prefix of the
  commands it executed, so the record and the windows are lost together. A batch that starts past
  ``record + 1`` (or finds no record at all) writes nothing; the worker re-applies the missing records
  ``[record + 1, first)`` (or the whole partition) with the rebuild code, moves the record and retries
  the batch. Re-applying is idempotent (first value wins, retention is a count), so the windows end equal
  to those of a run without the fault; window-ready events that were lost with their meta are announced
  again and consumers dedupe them on (ticker, minute, checksum).
* **forecasts** (:func:`restore_forecasts`, run by the Spark job's driver): its progress record
  (``ns:infer:progress``) carries the ``run_id`` of the Redis it was written to. Another ``run_id`` means
  Redis restarted since; the forecasts published to Kafka since the record's time (less a margin) are
  written back with the serving write itself (:meth:`minutecast.forecast_store.ForecastStore.write_now`:
  history first value or newer correction, latest forward only, each JSON kept byte for byte), so history
  and latest equal what was served; each ticker's calibration state catches up from that history on its
  next forecast. The first check of a process also converts a store of forecast layout v1 (an upgrade:
  :meth:`~minutecast.forecast_store.ForecastStore.migrate`), saying so in one line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis as redislib
from confluent_kafka import TopicPartition

from minutecast.errors import Rejected, ServiceUnavailable
from minutecast.forecast_migrate import migrate
from minutecast.forecast_store import WRITTEN, ForecastStore
from minutecast.kafka import make_consumer, watermarks
from minutecast.keys import Keys
from minutecast.redis import text
from minutecast.schemas import Forecast
from minutecast.settings import KafkaSettings, StreamSettings
from minutecast.topics import Topics
from streams.rebuild import bar_watermarks, rebuild
from streams.window_store import Gap, WindowStore

log = logging.getLogger("streams.repair")

RESTORE_MARGIN_S = 30.0  # forecasts restored from this long before the surviving progress record (s)
_MIGRATED: set[str] = set()  # namespaces whose forecast layout this process has checked (once per process)


class BarRepair:
    """The worker's repair of windows behind the bar topic (see the module docstring)."""

    def __init__(self, settings: StreamSettings, store: WindowStore) -> None:
        self.settings = settings
        self.store = store

    def __call__(self, gaps: list[Gap]) -> int:
        """Re-apply each gap's missing records, move the applied record to ``first - 1``; returns how many
        partitions really were behind (a partition without a record whose batch starts at the beginning of
        the log is a first start, not a loss)."""
        starts = {p: low for p, (low, _) in bar_watermarks(self.settings).items()} \
            if any(g.applied is None for g in gaps) else {}
        behind = [g for g in gaps if g.applied is not None or g.first > starts.get(g.partition, 0)]
        if behind:
            ranges = {g.partition: (None if g.applied is None else g.applied + 1, g.first) for g in behind}
            log.warning("window state behind the bar topic (Redis lost acknowledged writes?): re-applying %s",
                        {p: f"{'start' if a is None else a}..{b - 1}" for p, (a, b) in ranges.items()})
            report = rebuild(self.settings, ranges=ranges, counters="repair_")
            self.store.client.hincrby(self.store.keys.stats(), "stream_repairs", len(behind))
            log.warning("repaired from the bar topic: %d records re-applied (%d bars) in %.1f s",
                        report.messages, report.bars, report.seconds)
        self.store.mark_applied({g.partition: g.first - 1 for g in gaps})
        return len(behind)

def restore_forecasts(kafka: KafkaSettings, namespace: str, since: float, write: Callable[[list[bytes]], int],
                      *, batch: int = 2000, idle_timeout_s: float = 30.0) -> int:
    """Read the forecasts topic from ``since`` (epoch s, by record timestamp) to its end now and hand the
    values in topic order to ``write`` (which writes them with the serving script), ``batch`` at a time.
    Returns how many records were read."""
    topic = Topics(namespace).forecasts
    consumer = make_consumer(kafka, group=f"minutecast-{namespace}-restore")
    n = 0
    try:
        ends = {p: high for p, (low, high) in watermarks(consumer, topic).items() if high > low}
        if not ends:
            return 0
        starts = consumer.offsets_for_times([TopicPartition(topic, p, int(since * 1000)) for p in ends], timeout=10)
        todo = {tp.partition: ends[tp.partition] for tp in starts if 0 <= tp.offset < ends[tp.partition]}
        if not todo:
            return 0
        consumer.assign([tp for tp in starts if tp.partition in todo])
        pending: list[bytes] = []
        last = time.monotonic()
        while todo:
            msgs = consumer.consume(num_messages=batch, timeout=1.0)
            if not msgs and time.monotonic() - last > idle_timeout_s:
                raise ServiceUnavailable(f"forecast restore stalled: no records from {topic}")
            for m in msgs:
                last = time.monotonic()
                part, off, value = m.partition(), m.offset(), m.value()
                if m.error() is None and part in todo and off is not None and off < todo[part] and value:
                    pending.append(value)
            for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset >= todo[tp.partition]:
                    del todo[tp.partition]
            if len(pending) >= batch or (not todo and pending):
                n += write(pending)
                pending = []
    finally:
        consumer.close()
    return n


def repair_forecasts(client: redislib.Redis, kafka: KafkaSettings, namespace: str, history_len: int,
                     ttl_s: int) -> str:
    """The Spark driver's check before each micro-batch; returns the Redis ``run_id`` to record in its
    progress. When the progress record names another Redis process (Redis restarted since) or is missing
    (Redis lost it, or a first start), the forecasts published since the record's time less
    :data:`RESTORE_MARGIN_S` (all of them without a record) are written back first; the record then names
    this Redis, so one restart restores once. One round trip when nothing happened."""
    keys = Keys(namespace)
    if namespace not in _MIGRATED:
        migrate_forecasts(client, ForecastStore(keys, history_len, ttl_s))
        _MIGRATED.add(namespace)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.infer_progress())
    pipe.info("server")
    raw, info = pipe.execute()
    progress = {text(k): text(v) for k, v in raw.items()}
    run_id = str(info["run_id"])
    if progress.get("redis_run_id") == run_id:
        return run_id
    try:
        since = float(progress["at"]) - RESTORE_MARGIN_S
    except (KeyError, ValueError):
        since = 0.0
    t0 = time.monotonic()
    counts: dict[str, int] = {}

    def write(values: list[bytes]) -> int:
        for k, v in write_forecasts(client, keys, values, history_len, ttl_s).items():
            counts[k] = counts.get(k, 0) + v
        return len(values)

    n = restore_forecasts(kafka, namespace, since, write)
    client.hset(keys.infer_progress(), "redis_run_id", run_id)
    if n:
        client.hincrby(keys.stats(), "infer_restored", counts.get("forecasts", 0) + counts.get("corrections", 0))
        log.warning("Redis %s since the last progress record: %d forecasts read back from Kafka (since %s): %s "
                    "in %.1f s", "restarted" if progress else "has no progress record", n,
                    time.strftime("%H:%M:%S", time.gmtime(since)) if since else "the start", counts,
                    time.monotonic() - t0)
    return run_id


def migrate_forecasts(client: redislib.Redis, store: ForecastStore) -> dict[str, int]:
    """Convert forecast layouts v2 and v1 to the store's (:mod:`minutecast.forecast_migrate`); one log line
    when there was anything to convert."""
    t0 = time.monotonic()
    counts = migrate(store, client)
    if counts["tickers"]:
        log.warning("forecast store upgraded: %d tickers converted to layout v3 (%d forecasts, %d unreadable "
                    "dropped) in %.1f s", counts["tickers"], counts["forecasts"], counts["dropped"],
                    time.monotonic() - t0)
    return counts


def write_forecasts(client: redislib.Redis, keys: Keys, values: list[bytes], history_len: int, ttl_s: int,
                    ) -> dict[str, int]:
    """Write Forecast JSON values (as the forecasts topic holds them) back with the serving write, in one
    pipelined round trip: {"forecasts": written, "corrections": replaced, "replayed": already stored}.
    The calibration state is left alone: it catches up from the history."""
    items = []
    for v in values:
        try:
            items.append((Forecast.from_json(v), bytes(v)))
        except Rejected:
            continue  # not ours: the topic's writer is the serving job itself
    counts = {"forecasts": 0, "corrections": 0, "replayed": 0}
    for new, _ in ForecastStore(keys, history_len, ttl_s).write_now(client, items):
        counts[WRITTEN[new]] += 1
    return counts
