"""Rebuild every ticker's window in Redis from the bar topic (the Faust worker does it at start-up on empty state).

    minutecast rebuild
    minutecast rebuild --timeout 120     # seconds to wait for Kafka and Redis first
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from minutecast.kafka import wait_for_kafka
from minutecast.redis import wait_for_redis
from minutecast.settings import StreamSettings
from streams.rebuild import rebuild


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for Kafka/Redis")


def run(args: argparse.Namespace) -> int:
    settings = StreamSettings()
    wait_for_kafka(settings.kafka, args.timeout)
    wait_for_redis(settings.redis, args.timeout)
    print(json.dumps(asdict(rebuild(settings))))
    return 0
