"""Rebuild every ticker's window in Redis from the bar topic (after a Redis loss or a flush).

    minutecast rebuild            # or automatically at ``minutecast stream`` start-up

Reads every partition of the bar topic from its beginning up to a snapshot of the end offsets taken at
the start (what was written before the rebuild began; the worker covers the rest) and applies the bars
with the same :class:`streams.window_store.WindowStore` code as the Faust app, in batches. The store keeps each
ticker's newest ``RETAIN`` bars (a count, so they may span the overnight gap or a weekend), whatever the
order and duplication of what it is given, so the result equals the worker's state.
Invalid messages (the same decoder and ticker allowlist as the worker: :func:`parse_bar_record`) are
skipped and counted per reason, not dead-lettered again (the worker already did that); no record can
stop a rebuild. No ready events are published: the worker announces the newest ready window on its next
bar. A full rebuild then moves the applied record (``ns:stream:applied``) up to the snapshot; the worker's
repair (:mod:`streams.repair`) reuses this code for just the offsets Redis lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


def bar_watermarks(settings: StreamSettings) -> dict[int, tuple[int, int]]:
    """{partition: (low, high)} of the bar topic now."""
    consumer = make_consumer(settings.kafka, group=f"{settings.app_id}-{settings.namespace}-probe")
    try:
        return watermarks(consumer, Topics(settings.namespace).bars)
    finally:
        consumer.close()


def upgrade(store: WindowStore) -> int:
    """Drop a window store of an older layout (it is never read) before a full rebuild writes the current one;
    says so in one line. Returns how many tickers it held."""
    old = store.drop_legacy()
    if old:
        log.warning("window store: %d tickers in an older layout (v3 ns:w3:*, v2 ns:win:*) dropped; rebuilding "
                    "them from the bar topic in the v4 layout", old)
    return old


def topic_has_data(settings: StreamSettings) -> bool:
    """True when the bar topic holds at least one record."""
    return any(high > low for low, high in bar_watermarks(settings).values())


def rebuild(settings: StreamSettings, *, idle_timeout_s: float = 30.0,
            ranges: Mapping[int, tuple[int | None, int]] | None = None, counters: str = "rebuild_") -> RebuildReport:
    """Replay the bar topic into the window store. Raises ServiceUnavailable if Kafka stops answering.

    ``ranges``: {partition: (start offset or None for the beginning, end offset (exclusive))}, for a repair
    (:mod:`streams.repair`); default every partition from its beginning to its end now, after which the
    applied record (``ns:stream:applied``) is moved up to those ends. ``counters``: the prefix of the
    store's counters in ``ns:stats``."""
    t0 = time.monotonic()
    topic = Topics(settings.namespace).bars
    store = WindowStore(connect(settings.redis), Keys(settings.namespace), settings.window_ttl_s, counters=counters)
    if ranges is None:
        upgrade(store)
    # A throw-away group: rebuild assigns partitions itself and never commits.
    consumer = make_consumer(settings.kafka, group=f"{settings.app_id}-{settings.namespace}-rebuild",
                             **{"fetch.max.bytes": 64 * 1024 * 1024})
    report = RebuildReport()
    tickers: set[str] = set()
    try:
        marks = watermarks(consumer, topic)
        if ranges is None:
            wanted: dict[int, tuple[int | None, int]] = {p: (None, high) for p, (low, high) in marks.items()}
        else:
            wanted = dict(ranges)
        todo = {p: end for p, (start, end) in wanted.items()
                if p in marks and end > max(marks[p][0], start or 0)}
        if todo:
            starts = {p: wanted[p][0] for p in todo}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING if a is None else a) for p, a in starts.items()])
            _replay(consumer, topic, todo, store, settings, report, tickers, idle_timeout_s)
        if ranges is None:
            store.mark_applied({p: high - 1 for p, (_, high) in marks.items() if high > 0})
    finally:
        consumer.close()
    report.tickers = len(tickers)
    report.seconds = time.monotonic() - t0
    log.info("rebuild of %s %s: %s", topic, "" if ranges is None else dict(ranges), report)
    return report


def _replay(consumer: Any, topic: str, todo: dict[int, int], store: WindowStore, settings: StreamSettings,
            report: RebuildReport, tickers: set[str], idle_timeout_s: float) -> None:
    """Consume the assigned partitions up to ``todo[partition]`` (exclusive), applying bars in batches."""
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


def _flush(store: WindowStore, bars: list[Bar], report: RebuildReport, tickers: set[str]) -> None:
    results, late, conflicts = store.apply(bars)
    report.bars += len(bars)
    report.late += len(late)
    report.conflicts += len(conflicts)
    tickers.update(results)
