"""One base exception for the project; every error we raise derives from it."""

from __future__ import annotations


class MinutecastError(Exception):
    """Base of every error minutecast raises on purpose. An entry point prints it as one line
    (:func:`minutecast.entry.run_main`): the message, then ``hint`` (what to do) when the message lacks it."""

    hint: str = ""


class ConfigError(MinutecastError):
    """Settings are missing or inconsistent."""


class ServiceUnavailable(MinutecastError):
    """A dependency (Kafka, Redis, Spark) did not answer in time."""

    hint = "is it running? `minutecast infra up` starts the local Kafka and Redis, `minutecast status` checks them"


class InfraError(MinutecastError):
    """Local services could not be set up or started (port taken, Java missing, ...)."""

    hint = "`minutecast infra status` shows the local services; their logs are in ~/.minutecast/logs (MINUTECAST_HOME)"


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
