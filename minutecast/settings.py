"""Settings: one pydantic ``Settings`` class per service, all read from ``MINUTECAST_*`` env vars.

Connection blocks (Kafka, Redis) are shared classes with their own prefixes
(``MINUTECAST_KAFKA_*``, ``MINUTECAST_REDIS_*``) so every service spells them the same way.
``MINUTECAST_NAMESPACE`` prefixes every topic name and Redis key (tests use a uuid namespace).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Where local service data, models, checkpoints and logs live (``MINUTECAST_HOME``)."""
    return Path(os.environ.get("MINUTECAST_HOME", Path.home() / ".minutecast")).expanduser()


def default_cache() -> Path:
    """Downloads that can be rebuilt (venv, Maven jars): ``MINUTECAST_CACHE``."""
    base = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(os.environ.get("MINUTECAST_CACHE", Path(base) / "minutecast")).expanduser()


class KafkaSettings(BaseSettings):
    """How every client reaches the brokers (``MINUTECAST_KAFKA_*``)."""

    model_config = SettingsConfigDict(env_prefix="MINUTECAST_KAFKA_", extra="ignore")

    bootstrap: str = "127.0.0.1:9092"  # host:port[,host:port]
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError("SASL needs MINUTECAST_KAFKA_SASL_USERNAME and MINUTECAST_KAFKA_SASL_PASSWORD")
        return self


class RedisSettings(BaseSettings):
    """How every client reaches Redis (``MINUTECAST_REDIS_*``). A password is always required."""

    model_config = SettingsConfigDict(env_prefix="MINUTECAST_REDIS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    # Falls back to the file `minutecast infra up` writes (mode 0600) when the env var is unset.
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _password_from_file(self) -> RedisSettings:
        if self.password is None:
            path = default_home() / "secrets" / "redis-password"
            if path.exists():
                self.password = SecretStr(path.read_text().strip())
        return self


class CommonSettings(BaseSettings):
    """Fields every service has."""

    model_config = SettingsConfigDict(env_prefix="MINUTECAST_", extra="ignore")

    namespace: str = "minutecast"  # prefix of every topic and Redis key
    home: Path = Field(default_factory=default_home)
    log_level: str = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"


class InfraSettings(CommonSettings):
    """`minutecast infra`: the local Kafka broker and Redis server."""

    cache: Path = Field(default_factory=default_cache)
    # The broker listens where MINUTECAST_KAFKA_BOOTSTRAP points; its KRaft controller one port above.
    kafka_heap: str = "1G"  # JVM -Xmx of the local broker
    start_timeout_s: float = 90.0
    bar_partitions: int = 6  # partitions of the bar topic: the unit of Faust/Spark/Horovod parallelism
    bar_retention_days: int = 45  # history kept for training (Yahoo itself keeps 30 days of 1m bars)


class ProducerSettings(CommonSettings):
    """`minutecast produce`."""

    linger_ms: int = 20  # batch up to 20 ms of bars per partition before sending
    batch_bytes: int = 1_000_000
    compression: Literal["lz4", "zstd", "snappy", "gzip", "none"] = "lz4"
    flush_timeout_s: float = 60.0
    metrics_port: int = 9101


class StreamSettings(CommonSettings):
    """`minutecast stream`: the Faust worker."""

    app_id: str = "minutecast-windows"
    take_max: int = 2000  # bars per batch taken from the stream
    take_within_s: float = 0.05  # longest wait to fill a batch
    window_ttl_s: int = 3 * 24 * 3600  # window keys of delisted tickers vanish after this
    web_port: int = 6066
    metrics_port: int = 9102


class InferenceSettings(CommonSettings):
    """`minutecast infer`: the Spark structured-streaming job."""

    master: str = "local[*]"
    trigger_ms: int = 200  # micro-batch trigger interval
    checkpoint_dir: Path | None = None  # default: <home>/checkpoints/infer
    history_len: int = 120  # forecasts kept per ticker in Redis history
    metrics_port: int = 9103

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_dir or self.home / "checkpoints" / "infer"


class TrainingSettings(CommonSettings):
    """`minutecast train`."""

    preset: str = "default"
    every: str | None = None  # e.g. "1h": retrain periodically
    reports_dir: Path | None = None  # default: <home>/reports
    metrics_port: int = 9104

    @property
    def reports(self) -> Path:
        return self.reports_dir or self.home / "reports"


def env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a Settings class reads, nested connection blocks included."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        ann: Any = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseSettings):
            names |= env_names(ann)
        else:
            names.add((prefix + name).upper())
    return names
