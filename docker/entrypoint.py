#!/usr/bin/env python3
"""Entry point of the minutecast image: wait for Kafka and Redis, then become ``minutecast ARGS``.

    docker run --rm minutecast:0.1.0 --help            # -> minutecast --help (waits for nothing)
    docker compose run --rm stream                     # -> minutecast stream, once Kafka and Redis answer
    docker compose run --rm infer forecast AAPL        # -> minutecast forecast AAPL

podman-compose does not run healthchecks, so ``depends_on: condition: service_healthy`` may not hold a
service back: every subcommand that talks to Kafka or Redis waits for both here first (up to
``WAIT_S``; on timeout it exits 1 and the restart policy tries again), whatever engine started it.
Connection settings are the service's own ``MINUTECAST_KAFKA_*`` / ``MINUTECAST_REDIS_*`` variables.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from minutecast.cli import SUBCOMMANDS, subcommand
from minutecast.errors import MinutecastError
from minutecast.kafka import wait_for_kafka
from minutecast.redis import wait_for_redis
from minutecast.settings import CommonSettings

WAIT_S = 300.0  # a cold KRaft broker on a small machine takes about a minute

log = logging.getLogger("minutecast.entrypoint")


def needs_services(argv: Sequence[str]) -> bool:
    """Whether ``minutecast ARGV`` talks to Kafka/Redis (the one list: ``minutecast.cli.SUBCOMMANDS``)."""
    spec = SUBCOMMANDS.get(subcommand(argv) or "")
    return spec is not None and spec.needs_services and not {"-h", "--help"} & set(argv)


def wait_for_services(timeout_s: float = WAIT_S) -> None:
    """Block until Kafka and Redis answer with this service's settings (raises after ``timeout_s``)."""

    s = CommonSettings()
    log.info("waiting for Kafka at %s and Redis at %s:%s", s.kafka.bootstrap, s.redis.host, s.redis.port)
    wait_for_kafka(s.kafka, timeout_s)
    wait_for_redis(s.redis, timeout_s).close()


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if needs_services(argv):
        try:
            wait_for_services()
        except MinutecastError as exc:
            print(f"minutecast-entrypoint: {exc}", file=sys.stderr)
            return 1
    os.execvp("minutecast", ["minutecast", *argv])  # noqa: S606 - replaces this process, no shell
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
