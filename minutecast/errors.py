"""One base exception for the project; every error we raise derives from it."""

from __future__ import annotations


class MinutecastError(Exception):
    """Base of every error minutecast raises on purpose."""


class ConfigError(MinutecastError):
    """Settings are missing or inconsistent."""


class ServiceUnavailable(MinutecastError):
    """A dependency (Kafka, Redis, Spark) did not answer in time."""


class InfraError(MinutecastError):
    """Local services could not be set up or started (port taken, Java missing, ...)."""


class Rejected(MinutecastError):
    """A message failed its schema. ``reason`` is a stable machine-readable code for dead letters
    (one of :data:`minutecast.schemas.REASONS`). Every decoder raises only this (or returns a value)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DeliveryError(MinutecastError):
    """Kafka reported that some messages were not delivered."""


class ModelError(MinutecastError):
    """A model directory is corrupt, incompatible or refused by the promotion gate."""
