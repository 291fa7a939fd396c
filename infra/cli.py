"""Start, stop and check the local Kafka broker (KRaft, Maven jars) and Redis (password, AOF).

    minutecast infra up        # idempotent: a second `up` only checks both answer
    minutecast infra status
    minutecast infra down
    minutecast infra fetch     # only download the Maven jars (Kafka broker, Spark connector)
    minutecast infra topics    # only create missing topics on MINUTECAST_KAFKA_BOOTSTRAP (any broker)
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "status", "fetch", "topics"])


def run(args: argparse.Namespace) -> int:
    from infra import jars, services
    from minutecast.settings import InfraSettings

    s = InfraSettings()
    if args.action == "fetch":
        print(jars.kafka_libs(s.cache))
        for j in jars.spark_kafka_jars(s.cache):
            print(j)
        return 0
    if args.action == "topics":
        from minutecast.kafka import ensure_topics, wait_for_kafka

        wait_for_kafka(s.kafka, s.start_timeout_s)
        made = ensure_topics(s.kafka, s.topic_specs())
        print("topics created: " + (", ".join(made) if made else "none, all existed"))
        return 0
    if args.action == "down":
        stopped = services.down(s)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    rows = services.up(s) if args.action == "up" else services.status(s)
    for row in rows:
        print(row.line())
    return 0 if all(r.up for r in rows) else 1
