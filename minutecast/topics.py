"""Kafka topic names and their layout: the one place producers, streams and training read them from."""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers``: RF 3 with 2 in sync from three
    brokers (an acknowledged bar is on two machines, so one broker may die), else RF = brokers, 1 in sync."""
    rf = min(3, brokers)
    return rf, 2 if rf >= 3 else 1


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int  # -1 keeps forever
    compaction: bool = False

    def config(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": "compact" if self.compaction else "delete",
            # Bars are tiny JSON: compress at the producer and keep it that way on disk.
            "compression.type": "producer",
        }


@dataclass(frozen=True)
class Topics:
    """Topic names under a namespace (``MINUTECAST_NAMESPACE``; tests use a uuid one)."""

    namespace: str = "minutecast"

    @property
    def bars(self) -> str:
        """1-minute bars, key = ticker, value = :class:`minutecast.schemas.Bar` JSON."""
        return f"{self.namespace}.bars.1m"

    @property
    def ready(self) -> str:
        """Window-ready events from the Faust app, key = ticker, value = ``WindowReady`` JSON."""
        return f"{self.namespace}.windows.ready"

    @property
    def forecasts(self) -> str:
        """Forecasts for subscribers, key = ticker, value = ``Forecast`` JSON."""
        return f"{self.namespace}.forecasts.5m"

    @property
    def deadletter(self) -> str:
        """Rejected input with a machine-readable reason, value = ``DeadLetter`` JSON."""
        return f"{self.namespace}.deadletter"

    def owns(self, topic: str) -> bool:
        """Whether ``topic`` is one of this namespace's (every name above starts with ``<namespace>.``)."""
        return topic.startswith(f"{self.namespace}.")

    def specs(self, bar_partitions: int = 6, bar_retention_days: int = 45) -> list[TopicSpec]:
        """Every topic with its partitions and retention. The bar topic keeps history for training."""
        return [
            TopicSpec(self.bars, bar_partitions, bar_retention_days * DAY_MS),
            TopicSpec(self.ready, bar_partitions, 2 * DAY_MS),
            TopicSpec(self.forecasts, bar_partitions, 7 * DAY_MS),
            TopicSpec(self.deadletter, 1, 30 * DAY_MS),
        ]
