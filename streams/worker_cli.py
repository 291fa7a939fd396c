"""Run the Faust worker keeping every ticker's newest bars (``window.RETAIN``) in Redis.

    minutecast stream [--web-port N] [--metrics-port N] [--loglevel info]

Scale out by starting more processes with the same ``MINUTECAST_NAMESPACE``: they join one consumer group
(``{app_id}-{namespace}``) and share the bar topic's partitions. Waits for Kafka and Redis (as long as they
are away, reported: :mod:`minutecast.dependency`), creates missing topics, rebuilds the windows from the bar
topic when Redis has none for the namespace, then runs until SIGTERM/SIGINT; a batch that finds Redis behind
the topic (it lost acknowledged writes) is preceded by a repair from Kafka (:mod:`streams.repair`).
"""

from __future__ import annotations

import argparse
import logging

from minutecast.flags import Flag, add_flags, settings_from
from minutecast.kafka import ensure_topics, wait_for_kafka
from minutecast.keys import Keys
from minutecast.metrics import serve
from minutecast.redis import wait_for_redis
from minutecast.settings import StreamSettings
from streams.batch import BatchProcessor, Metrics
from streams.faust_app import create_app
from streams.rebuild import rebuild, topic_has_data
from streams.repair import BarRepair
from streams.window_store import WindowStore

log = logging.getLogger(__name__)


# Field of StreamSettings -> its flag (minutecast.flags).
FLAGS = {
    "web_port": Flag("--web-port", int, "Faust web port (0: off); default settings"),
    "metrics_port": Flag("--metrics-port", int, "Prometheus port (0: off)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, FLAGS)
    parser.add_argument("--loglevel", default=None, help="worker log level (default MINUTECAST_LOG_LEVEL)")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the start-up rebuild check")
    parser.add_argument("--wait", type=float, default=None,
                        help="seconds to wait for Kafka/Redis to answer at start (default: no limit, reported)")


def run(args: argparse.Namespace) -> int:
    import faust

    settings = settings_from(StreamSettings, args, FLAGS)
    wait_for_kafka(settings.kafka, args.wait)
    # No waiting inside commands: a batch that finds Redis away is retried by the worker itself (streams.failures).
    client = wait_for_redis(settings.redis, args.wait, wait=False)
    ensure_topics(settings.kafka, settings.topic_specs())

    store = WindowStore(client, Keys(settings.namespace), settings.window_ttl_s)
    # An older layout's store (never read) counts as none: the rebuild drops it and says so in one line.
    if settings.startup_rebuild and not args.no_rebuild and not store.has_windows() and topic_has_data(settings):
        log.info("no windows in Redis for namespace %s but the bar topic has data: rebuilding first",
                 settings.namespace)
        rebuild(settings)
    elif store.legacy_keys():
        log.warning("window store: keys of an older layout (v3 ns:w3:*, v2 ns:win:*) are never read by this "
                    "version; run `minutecast rebuild` to rebuild them in the v4 layout")

    metrics = Metrics()
    serve(settings.metrics_host, settings.metrics_port, metrics.registry)
    # The applied record is checked and moved with every batch; state behind the topic is repaired first.
    app = create_app(settings, BatchProcessor(store, metrics, repair=BarRepair(settings, store)))
    worker = faust.Worker(app, loglevel=(args.loglevel or settings.log_level).lower())
    worker.execute_from_commandline()  # runs until a signal; raises SystemExit
    return 0
