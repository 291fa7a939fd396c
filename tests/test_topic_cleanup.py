"""A namespace's topics are deleted whole, and only its own (the cleanup behind every test and benchmark).

    ~/.cache/minutecast/venv/bin/python -m pytest tests/test_topic_cleanup.py -q
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import NewTopic

from minutecast.kafka import delete_namespace_topics, ensure_topics, make_admin
from minutecast.settings import KafkaSettings
from minutecast.topics import Topics

pytestmark = pytest.mark.integration


def test_every_topic_of_the_namespace_goes_and_no_other(kafka: KafkaSettings) -> None:
    ns = f"t{uuid.uuid4().hex[:12]}"
    other = f"{ns}x"  # shares the prefix but not the "<namespace>." one: not ours
    for name in (ns, other):
        ensure_topics(kafka, Topics(name).specs(bar_partitions=1))
    admin = make_admin(kafka)
    extra = f"{ns}.made-by-a-subprocess"  # not in Topics.specs(): found by its name
    admin.create_topics([NewTopic(extra, 1, 1)])[extra].result()

    deleted = delete_namespace_topics(kafka, ns)

    assert sorted(deleted) == sorted([s.name for s in Topics(ns).specs()] + [extra])
    left = set(admin.list_topics(timeout=10).topics)
    assert not {t for t in left if Topics(ns).owns(t)}
    assert {s.name for s in Topics(other).specs()} <= left
    assert delete_namespace_topics(kafka, ns) == []  # nothing left: a second call is a no-op
    assert len(delete_namespace_topics(kafka, other)) == 4


def test_owns_only_names_under_the_namespace() -> None:
    t = Topics("tabc")
    assert t.owns(t.bars) and t.owns(t.ready) and t.owns("tabc.anything")
    assert not t.owns("tabcd.bars.1m") and not t.owns("tabc") and not t.owns("minutecast.bars.1m")
