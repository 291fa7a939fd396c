"""Rebuild every ticker's window in Redis from the bar topic (after a Redis loss or a flush).

    minutecast rebuild            # or automatically at ``minutecast stream`` start-up

Reads every partition of the bar topic from its beginning up to a snapshot of the end offsets taken at
the start (what was written before the rebuild began; the worker covers the rest) and applies the bars
with the same :class:`streams.window_store.WindowStore` code as the Faust app, in batches. The store keeps each
ticker's newest ``RETAIN`` bars (a count, so they may span the overnight gap or a weekend), whatever the
order and duplication of what it is given, so the result equals the worker's state.
Invalid messages (the same decoder and ticker allowlist as the worker: :func:`parse_bar_record`) are
skipped and counted per reason, not dead-lettered again (the worker already did that); no record can
stop a rebuild. No ready events
are published: the worker announces the newest ready window on its next bar.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from minutecast.errors import Rejected, ServiceUnavailable
from minutecast.kafka import make_consumer, watermarks
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Bar, parse_bar_record
from minutecast.settings import StreamSettings
from minutecast.topics import Topics
from minutecast.universe import allowlist
from streams.window_store import WindowStore

log = logging.getLogger(__name__)


@dataclass
class RebuildReport:
    messages: int = 0
    bars: int = 0
    invalid: int = 0
    late: int = 0
    conflicts: int = 0
    tickers: int = 0
    seconds: float = 0.0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> invalid messages skipped


def topic_has_data(settings: StreamSettings) -> bool:
    """True when the bar topic holds at least one record."""
    consumer = make_consumer(settings.kafka, group=f"{settings.app_id}-{settings.namespace}-probe")
    try:
        return any(high > low for low, high in watermarks(consumer, Topics(settings.namespace).bars).values())
    finally:
        consumer.close()


def rebuild(settings: StreamSettings, *, idle_timeout_s: float = 30.0) -> RebuildReport:
    """Replay the bar topic into the window store. Raises ServiceUnavailable if Kafka stops answering."""
    t0 = time.monotonic()
    topic = Topics(settings.namespace).bars
    # view=0: the rebuild announces nothing, so the script returns no rows (less to send and decode).
    store = WindowStore(connect(settings.redis), Keys(settings.namespace), settings.window_ttl_s,
                        view=0, counters="rebuild_")
    # A throw-away group: rebuild assigns partitions itself and never commits.
    consumer = make_consumer(settings.kafka, group=f"{settings.app_id}-{settings.namespace}-rebuild",
                             **{"fetch.max.bytes": 64 * 1024 * 1024})
    report = RebuildReport()
    tickers: set[str] = set()
    try:
        ranges = watermarks(consumer, topic)
        todo = {p: high for p, (low, high) in ranges.items() if high > low}
        if not todo:
            return report
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        pending: list[Bar] = []
        allowed = allowlist(settings)
        last_progress = time.monotonic()
        now = time.time()
        while todo:
            msgs = consumer.consume(num_messages=settings.rebuild_batch, timeout=1.0)
            if not msgs:
                if time.monotonic() - last_progress > idle_timeout_s:
                    raise ServiceUnavailable(f"rebuild stalled: no records from {topic} for {idle_timeout_s:.0f} s")
                continue
            last_progress = time.monotonic()
            for m in msgs:
                if m.error() is not None:
                    continue
                p, off = m.partition(), m.offset()
                if p not in todo or off is None or off >= todo[p]:
                    continue
                report.messages += 1
                try:
                    pending.append(parse_bar_record(m.key(), m.value(), now, allowed))
                except Rejected as exc:
                    report.invalid += 1
                    report.rejected[exc.reason] = report.rejected.get(exc.reason, 0) + 1
                except Exception:  # noqa: BLE001 - decoders only reject (fuzzed); a bug must not stop a rebuild
                    report.invalid += 1
                    report.rejected["unparseable"] = report.rejected.get("unparseable", 0) + 1
            # Done with a partition once its position reaches the snapshot (robust to gaps in offsets).
            for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                if tp.offset >= todo[tp.partition]:
                    del todo[tp.partition]
                    consumer.pause([TopicPartition(topic, tp.partition)])
            if len(pending) >= settings.rebuild_batch or (not todo and pending):
                _flush(store, pending, report, tickers)
                pending = []
        if pending:
            _flush(store, pending, report, tickers)
    finally:
        consumer.close()
    report.tickers = len(tickers)
    report.seconds = time.monotonic() - t0
    log.info("rebuild of %s: %s", topic, report)
    return report


def _flush(store: WindowStore, bars: list[Bar], report: RebuildReport, tickers: set[str]) -> None:
    results, late, conflicts = store.apply(bars)
    report.bars += len(bars)
    report.late += len(late)
    report.conflicts += len(conflicts)
    tickers.update(results)
