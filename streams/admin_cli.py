"""Window-state maintenance.

    minutecast streams rebuild     # rebuild every ticker's window in Redis from the bar topic
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    rb = sub.add_parser("rebuild", help="rebuild every ticker's window in Redis from the bar topic")
    rb.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for Kafka/Redis")


def run(args: argparse.Namespace) -> int:
    from minutecast.kafka import wait_for_kafka
    from minutecast.redis import wait_for_redis
    from minutecast.settings import StreamSettings
    from streams.rebuild import rebuild

    settings = StreamSettings()
    if args.action == "rebuild":
        wait_for_kafka(settings.kafka, args.timeout)
        wait_for_redis(settings.redis, args.timeout)
        report = rebuild(settings)
        print(json.dumps(asdict(report)))
        return 0
    return 2
