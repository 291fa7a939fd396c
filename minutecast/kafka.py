"""Kafka: the one module that builds client configs and clients (confluent-kafka, Spark, Faust).

Every client config is derived from :class:`minutecast.settings.KafkaSettings` here, so SASL and
bootstrap settings are spelled once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from tenacity import Retrying, retry_if_exception, retry_if_exception_type, stop_after_delay, wait_fixed

from minutecast import dependency
from minutecast.errors import ServiceUnavailable
from minutecast.settings import KafkaSettings, ProducerSettings
from minutecast.topics import Topics, TopicSpec, replication


def client_config(ks: KafkaSettings) -> dict[str, Any]:
    """librdkafka settings shared by producers, consumers and the admin client."""
    conf: dict[str, Any] = {"bootstrap.servers": ks.bootstrap, "security.protocol": ks.security_protocol}
    if ks.security_protocol.startswith("SASL"):
        assert ks.sasl_password is not None  # checked by KafkaSettings
        conf |= {
            "sasl.mechanism": ks.sasl_mechanism,
            "sasl.username": ks.sasl_username,
            "sasl.password": ks.sasl_password.get_secret_value(),
        }
    return conf


# Spark's Kafka source and sink ride out a broker outage instead of failing the query (a failed query costs a
# restart of the job: a Spark session and TensorFlow again, a minute on two cores). Each is a wait, never a
# skip: the sink's producer blocks for metadata and retries a delivery (its defaults, 60 s and 120 s, failed
# the batch: "Topic ... not present in metadata after 60000 ms"), the source retries its offset requests and
# polls. Source options are ignored by the sink and the sink's client properties by the source's consumers.
OUTAGE_MS = 7 * 24 * 3600 * 1000
SPARK_RIDE_OUT = {
    "kafka.max.block.ms": str(OUTAGE_MS),
    "kafka.delivery.timeout.ms": str(2**31 - 1),  # an int: the longest librdkafka's Java cousin takes (~24 days)
    "fetchOffset.numRetries": str(1_000_000),
    "fetchOffset.retryIntervalMs": "1000",
    "kafkaConsumer.pollTimeoutMs": str(OUTAGE_MS),
}


def spark_options(ks: KafkaSettings) -> dict[str, str]:
    """Options for Spark's Kafka source and sink (``kafka.``-prefixed client properties, and the waits that
    ride out a broker outage: :data:`SPARK_RIDE_OUT`)."""
    opts = {"kafka.bootstrap.servers": ks.bootstrap, "kafka.security.protocol": ks.security_protocol,
            **SPARK_RIDE_OUT}
    if ks.security_protocol.startswith("SASL"):
        assert ks.sasl_password is not None
        module = ("org.apache.kafka.common.security.plain.PlainLoginModule" if ks.sasl_mechanism == "PLAIN"
                  else "org.apache.kafka.common.security.scram.ScramLoginModule")
        pw = ks.sasl_password.get_secret_value().replace('"', '\\"')
        opts |= {
            "kafka.sasl.mechanism": ks.sasl_mechanism,
            "kafka.sasl.jaas.config": f'{module} required username="{ks.sasl_username}" password="{pw}";',
        }
    return opts


def make_producer(ks: KafkaSettings, **overrides: Any) -> Producer:
    """An idempotent producer (acks=all, ordered per partition, no duplicates on retry)."""
    conf = client_config(ks) | {
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": ProducerSettings.model_fields["linger_ms"].default,  # the producers' own
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # Retry through broker restarts for up to 5 minutes before reporting a failed delivery.
        "delivery.timeout.ms": 300_000,
    }
    conf |= overrides
    conf.setdefault("error_cb", _report_broker_errors)
    return Producer(conf)


def _report_broker_errors(err: KafkaError) -> None:
    """librdkafka's client-level errors: "all brokers down" means Kafka is away (the client keeps retrying and
    buffers; :mod:`minutecast.dependency` reports the wait until a delivery succeeds again)."""
    if err.code() == KafkaError._ALL_BROKERS_DOWN:
        dependency.mark_down("kafka", err.str())


def make_consumer(ks: KafkaSettings, group: str, **overrides: Any) -> Consumer:
    """A consumer in ``group`` that starts at the earliest offset and commits only when told."""
    conf = client_config(ks) | {
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    }
    conf |= overrides
    return Consumer(conf)


def make_admin(ks: KafkaSettings, **overrides: Any) -> AdminClient:
    return AdminClient(client_config(ks) | overrides)


def wait_for_kafka(ks: KafkaSettings, timeout_s: float | None = None) -> None:
    """Block until a broker answers a metadata request, or raise :class:`ServiceUnavailable` after
    ``timeout_s`` (None: ``MINUTECAST_DEPENDENCY_WAIT_S``, by default no limit: a service waits the outage
    out, reported by :mod:`minutecast.dependency`)."""
    admin = make_admin(ks, log_level=0)  # quiet: "connection refused" is expected while it is away
    try:
        dependency.wait("kafka", lambda: admin.list_topics(timeout=5.0),
                        lambda e: isinstance(e, KafkaException), timeout_s)
    except KafkaException as exc:
        raise ServiceUnavailable(f"Kafka at {ks.bootstrap} did not answer within "
                                 f"{dependency.limit_of(timeout_s):.0f} s ({exc})") from exc


def ensure_topics(ks: KafkaSettings, specs: Iterable[TopicSpec], timeout_s: float = 30.0) -> list[str]:
    """Create missing topics (idempotent). Returns the names created now."""
    admin = make_admin(ks)
    specs = list(specs)
    md = admin.list_topics(timeout=timeout_s)
    todo = [s for s in specs if s.name not in md.topics]
    if not todo:
        return []
    if len(md.brokers) < ks.min_brokers:
        md = _wait_for_brokers(admin, ks, max(timeout_s, 120.0))  # brokers of a cluster start one by one
    # Replicated as far as the cluster allows (RF 3 with 2 in sync from three brokers, no unclean election).
    rf, isr = replication(len(md.brokers))
    durability = {"min.insync.replicas": str(isr), "unclean.leader.election.enable": "false"}
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, replication_factor=rf, config=s.config() | durability)
         for s in todo],
        operation_timeout=timeout_s,
    )
    created = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    _wait_for_metadata(admin, ks, set(created), timeout_s, present=True)
    return created


def delete_namespace_topics(ks: KafkaSettings, namespace: str, timeout_s: float = 30.0) -> list[str]:
    """Delete every topic of ``namespace`` on the broker (a test's or a benchmark's uuid one); returns the
    names deleted. Leftover topics are not harmless: 660 of them (1,955 partitions) kept a local broker at
    ~13% of a core while idle, and the e2e benchmark's p50 went from 516-752 ms in the runs before their removal
    to 349-377 ms in those after it (2 cores, 2026-12-07)."""
    admin = make_admin(ks)  # kept referenced until the futures resolve
    names = [t for t in admin.list_topics(timeout=timeout_s).topics if Topics(namespace).owns(t)]
    if not names:
        return []
    deleted = []
    for name, fut in admin.delete_topics(names, operation_timeout=timeout_s).items():
        try:
            fut.result()
            deleted.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:  # gone already is what we wanted
                raise
    _wait_for_metadata(admin, ks, set(names), timeout_s, present=False)
    return deleted


def _wait_for_metadata(admin: AdminClient, ks: KafkaSettings, names: set[str], timeout_s: float,
                       present: bool) -> None:
    """Wait until the broker's metadata shows ``names`` with a leader for every partition (``present``) or
    shows none of them: a create or delete is acknowledged by the controller before the brokers' metadata
    has it, and a client that came next saw NOT_LEADER_FOR_PARTITION, or the deleted topics still listed
    (CI, 2026-12-07). ServiceUnavailable after ``timeout_s``."""

    def pending() -> set[str]:
        topics = admin.list_topics(timeout=10).topics
        if not present:
            return names & set(topics)
        return {n for n in names if n not in topics or topics[n].error is not None
                or any(p.leader < 0 for p in topics[n].partitions.values())}

    try:
        for attempt in Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.2),
                                retry=retry_if_exception_type(_NotYet), reraise=True):
            with attempt:
                if left := pending():
                    raise _NotYet(sorted(left))
    except _NotYet as exc:
        state = "without a leader" if present else "still listed"
        raise ServiceUnavailable(f"Kafka at {ks.bootstrap}: topics {exc.args[0]} {state} after "
                                 f"{timeout_s:.0f} s") from exc


def _wait_for_brokers(admin: AdminClient, ks: KafkaSettings, timeout_s: float) -> Any:
    """Cluster metadata once ``ks.min_brokers`` brokers are registered; ServiceUnavailable after ``timeout_s``."""
    try:
        for attempt in Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(1.0),
                                retry=retry_if_exception_type(_TooFewBrokers), reraise=True):
            with attempt:
                md = admin.list_topics(timeout=10)
                if len(md.brokers) < ks.min_brokers:
                    raise _TooFewBrokers(len(md.brokers))
    except _TooFewBrokers as exc:
        raise ServiceUnavailable(f"Kafka at {ks.bootstrap}: {exc.args[0]} of the {ks.min_brokers} brokers "
                                 f"(MINUTECAST_KAFKA_MIN_BROKERS) registered after {timeout_s:.0f} s; "
                                 "topics not created") from exc
    return md


class _TooFewBrokers(Exception):
    pass


class _NotYet(Exception):
    pass


# A partition between leaders: just after its topic was created, or while a broker of a cluster restarts.
_LEADERLESS = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART)


def watermarks(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> dict[int, tuple[int, int]]:
    """{partition: (low, high)} watermarks of ``topic`` through an open consumer; {} if it does not exist.
    A partition without a leader is asked again for up to ``timeout_s``, then ServiceUnavailable."""

    md = consumer.list_topics(topic, timeout=timeout_s)
    if topic not in md.topics or md.topics[topic].error is not None:
        return {}

    def marks(p: int) -> tuple[int, int]:
        try:
            for attempt in Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.2), reraise=True,
                                    retry=retry_if_exception(_leaderless)):
                with attempt:
                    return consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        except KafkaException as exc:
            if _leaderless(exc):
                raise ServiceUnavailable(f"{topic}[{p}] had no leader for {timeout_s:.0f} s ({exc})") from exc
            raise
        raise AssertionError("unreachable: Retrying returns or raises")

    return {p: marks(p) for p in sorted(md.topics[topic].partitions)}


def _leaderless(exc: BaseException) -> bool:
    return isinstance(exc, KafkaException) and exc.args[0].code() in _LEADERLESS


def end_offsets(ks: KafkaSettings, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark per partition of ``topic``: a snapshot of "everything written so far"."""
    consumer = make_consumer(ks, group="minutecast-offsets-probe")
    try:
        return {p: high for p, (_, high) in watermarks(consumer, topic, timeout_s).items()}
    finally:
        consumer.close()
