"""Settings: one pydantic ``Settings`` class per service, all read from ``MINUTECAST_*`` env vars.

Connection blocks (Kafka, Redis) are shared classes with their own prefixes
(``MINUTECAST_KAFKA_*``, ``MINUTECAST_REDIS_*``) so every service spells them the same way.
``MINUTECAST_NAMESPACE`` prefixes every topic name and Redis key (tests use a uuid namespace).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from minutecast.schemas import TICKER_RE
from minutecast.topics import Topics, TopicSpec


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
    # Topics are created only once this many brokers are registered: a three-broker cluster sets 3, so no
    # topic is created with a smaller replication factor while its brokers are still starting.
    min_brokers: int = Field(default=1, ge=1, le=9)

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
    # Clients wait out a Redis outage inside every command instead of failing (minutecast.redis.connect): the
    # services turn it on (their entry points, `minutecast run`); tools that must answer at once leave it off.
    wait: bool = False

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
    # Address the Prometheus endpoint binds to: loopback locally; 0.0.0.0 in containers (compose).
    metrics_host: str = "127.0.0.1"
    # Every service creates missing topics with these (whichever starts first), so all read them here.
    bar_partitions: int = 6  # partitions of the bar topic: the unit of Faust/Spark/Horovod parallelism
    bar_retention_days: int = 45  # history kept for training (Yahoo itself keeps 30 days of 1m bars)
    # The market ticker whose same-minute window is every forecast's market context (serving and training).
    market_ticker: str = "SPY"
    # Bars of tickers outside the allowlist are dead-lettered ("unknown_ticker") by the Faust worker and
    # skipped by rebuild and training (minutecast/universe.py). Off locally (synthetic and benchmark
    # tickers), on in docker-compose.yml; the file defaults to the packaged S&P 500 list.
    ticker_allowlist: bool = False
    ticker_allowlist_file: Path | None = None
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)

    @field_validator("market_ticker")
    @classmethod
    def _market_ticker_is_a_ticker(cls, v: str) -> str:
        if not TICKER_RE.fullmatch(v):
            raise ValueError(f"MINUTECAST_MARKET_TICKER={v!r} is not a ticker (yfinance spelling, e.g. SPY)")
        return v

    def topic_specs(self) -> list[TopicSpec]:
        """This namespace's topics with their partitions and retention."""
        return Topics(self.namespace).specs(self.bar_partitions, self.bar_retention_days)

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
    # Local brokers `minutecast infra up` runs: 1, or 3 (every topic on three brokers, two in sync: one may
    # die without losing an acknowledged bar). Clients of three list them all in MINUTECAST_KAFKA_BOOTSTRAP.
    kafka_brokers: int = Field(default=1, ge=1, le=9)
    # Redis refuses writes past this (noeviction: never silently drops state; `status` warns from 80%).
    # Windows of 503 tickers take ~30 MB; 5,000 tickers ~300 MB.
    redis_maxmemory: str = "1gb"
    start_timeout_s: float = 90.0


class RunSettings(InfraSettings):
    """`minutecast run`: the local infrastructure plus how its supervisor restarts and stops services."""

    restart_max: int = 5  # crashes in a row before a service is given up on (and the run fails)
    restart_healthy_s: float = 600.0  # a service up this long has a fresh restart budget at its next crash
    stop_grace_s: float = 30.0  # SIGTERM -> SIGKILL of a service when the run stops (or its supervisor dies)


class ProducerSettings(CommonSettings):
    """`minutecast produce`."""

    model_config = SettingsConfigDict(env_prefix="MINUTECAST_", extra="ignore", populate_by_name=True)

    # Batch up to this long (ms) of bars per partition before sending: every bar waits it before the broker has
    # it (the e2e benchmark's first stage was ~21 ms at 20). 5 is librdkafka's and Kafka 4's default; a backfill
    # still fills whole batches, as the queue builds up behind the requests in flight.
    linger_ms: int = 5
    batch_bytes: int = 1_000_000
    compression: Literal["lz4", "zstd", "snappy", "gzip", "none"] = "lz4"
    flush_timeout_s: float = 60.0
    # MINUTECAST_PRODUCER_METRICS_PORT wins over this one, which every service reads (under `minutecast run`
    # setting it gives them all one port, and the first to bind keeps it)
    metrics_port: int = Field(default=9101, validation_alias=AliasChoices("MINUTECAST_PRODUCER_METRICS_PORT",
                                                                          "MINUTECAST_METRICS_PORT"))
    connect_timeout_s: float = 20.0  # how long to wait for a broker at start before failing (0: no limit)
    poll_every: int = 2000  # serve delivery reports every N produced messages (poll(0))
    yf_batch_size: int = 100  # tickers per yf.download call (yfinance threads fetch them in parallel)
    yf_min_interval_s: float = 2.0  # least time between two yf.download calls, across all processes
    yf_max_backoff_s: float = 300.0  # cap of the exponential backoff after a rate limit or network error
    yf_max_retries: int = 8  # attempts per batch before giving up on it (the watermark makes it retried later)
    # Wait this long after a minute closes before polling; a minute is published only when it ended at least
    # this long before the request (Yahoo's lag: never a bar still forming).
    live_delay_s: float = 5.0
    live_lookback_min: int = 30  # each poll re-fetches this trailing window and publishes minutes not yet published


class StreamSettings(CommonSettings):
    """`minutecast stream`: the Faust worker."""

    app_id: str = "minutecast-windows"
    take_max: int = 2000  # bars per batch taken from the stream
    take_within_s: float = 0.05  # longest wait to fill a batch (from its first bar; streams.faust_take)
    # A batch also ends after this long without a new bar (s): a minute's burst is one batch, not cut by a
    # clock tick (0: Faust's own take_events, which yields every take_within_s)
    take_quiet_s: float = 0.01
    # Window keys of delisted tickers vanish after this; 5 days outlast a long weekend (Fri 20:00 -> Tue
    # 04:00 New York is 80 h), so the first window of the week still reaches back into Friday.
    window_ttl_s: int = 5 * 24 * 3600
    web_port: int = 6066  # Faust's web server (0 disables it)
    metrics_port: int = 9102  # Prometheus /metrics (0 disables it)
    max_poll_records: int = 5000  # records per Kafka poll (aiokafka max_poll_records)
    # Events Faust queues ahead of the agent. Measured (250k-bar backfill, 4 runs each): 8000 -> 32768 took
    # the worker from ~7.1k to ~9.2k bars/s (the fetcher pauses less, fewer records block on a full queue)
    # at +18 MB RSS; Faust's suggested 131072 measured the same rate for +75 MB.
    stream_buffer_maxsize: int = 32768
    # The worker's event loop: uvloop runs Faust's per-record tasks and futures in C (asyncio: the stock loop).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Faust's opt-in Cython fast path: the stream takes records already queued without awaiting the channel
    # (measured: ~8% less worker CPU per bar, 6 paired runs).
    cython_optimizations: bool = True
    # Hand each fetched record to Faust's conductor directly when that does not block (the usual case),
    # instead of Faust's four tasks per record; a record that would block (full queue, rebalance) still
    # takes Faust's way, which abandons it when the flow is suspended (streams.faust_patches.lean_drain).
    lean_drain: bool = True
    commit_interval_s: float = 1.0  # how often Faust commits acked offsets
    retry_s: float = 1.0  # first back-off while Redis/Kafka are unavailable (the batch is retried, never skipped)
    retry_max_s: float = 30.0  # cap of the exponential back-off (with jitter) while they stay unavailable
    startup_rebuild: bool = True  # rebuild windows from the bar topic when Redis has none for the namespace
    rebuild_batch: int = 20_000  # bars per store call during a rebuild
    session_timeout_s: float = 15.0  # a worker silent this long (crashed) loses its partitions to the others


class InferenceSettings(CommonSettings):
    """`minutecast infer`: the Spark structured-streaming job."""

    master: str = "local[*]"
    # Micro-batch trigger interval. 100 by measurement (e2e, 503-ticker bursts, 20 minutes each, p50/p99 ms):
    # 200 made each burst wait for the next tick (424/602, 475/682); 50 cut bursts in two more often
    # (345/823, 323/927); 100 gave 346/480 and 351/492. An idle job costs 1-2% of a core at any of them.
    trigger_ms: int = 100
    checkpoint_dir: Path | None = None  # default: <home>/checkpoints/infer
    history_len: int = 120  # forecasts kept per ticker in Redis history
    # Latest/history/calibration keys of a ticker expire this long after its last forecast (a delisted or
    # renamed ticker's keys vanish); 5 days outlast a long weekend, like the window keys.
    forecast_ttl_s: int = 5 * 24 * 3600
    metrics_port: int = 9103  # 0 disables the Prometheus endpoint (tests, benchmarks)
    # Partitions of one micro-batch after the shuffle by ticker: one model call (and one Redis round
    # trip) per partition. Few and large is the point; local[*] on 2 cores wants 2.
    partitions: int = 2
    # False (default): coalesce the Kafka partitions (no shuffle stage, ~18% faster micro-batches here);
    # exact, because window-ready events are keyed by ticker so one ticker's events share a partition,
    # and an unkeyed stray could only cost a redundant forecast, never a wrong one. True: shuffle each
    # micro-batch by ticker (exact newest-per-ticker even for unkeyed events).
    shuffle_by_ticker: bool = False
    max_offsets_per_trigger: int = 50_000  # window-ready events per micro-batch (catch-up bound)
    # fetch.max.wait.ms of the executors' cached Kafka consumers (ms). Each poll leaves a prefetch in flight at
    # the partition's end; the next batch's seek waits for it, and with Kafka's 500 ms default that held every
    # task's first rows back ~0.5 s per topic partition (measured: first input 0.94 -> 0.11 s, batch p50
    # 1.76 -> 1.04 s at 503 tickers). An idle consumer sends nothing: the prefetch is only sent by a poll.
    source_fetch_wait_ms: int = Field(default=5, ge=0)
    # Spark's asynchronous progress tracking: each batch's offset and commit log writes run beside the next
    # batch instead of before/after its job (~230 ms a batch here); --available-now runs without it.
    async_progress: bool = True
    spark_ui: bool = False  # the Spark web UI costs memory and a port; on for debugging only
    spark_log_level: str = "WARN"  # log level of Spark's JVM side
    # Comma-separated jars of Spark's Kafka source/sink (minus those pyspark ships); empty: `minutecast infer`
    # resolves them from the jar cache (infra/jars.py, fetched from Maven Central by `make setup`).
    spark_jars: str = ""

    @property
    def checkpoint(self) -> Path:
        return self.checkpoint_dir or self.home / "checkpoints" / "infer"


class TrainingSettings(CommonSettings):
    """`minutecast train`, `minutecast evaluate` and `python -m training.train` (also under horovodrun): the one
    source of every training hyperparameter and run option. Each entry point builds it once from the
    environment; a command-line flag given overrides its field (training/config.py: ``--epochs 0`` is a value)."""

    # -- the run (`minutecast train` reads these; the child `python -m training.train` gets the rest)
    every: str | None = None  # retrain period (90s, 30m, 1h, 1d): a service that retrains; None: train once
    np: int = Field(default=1, ge=1)  # Horovod ranks `minutecast train` starts here (horovodrun -np N when N > 1)
    # Preset used while no model is promoted yet (e.g. "first": a short run gives serving a model fast).
    first_preset: str | None = None
    bars: Path | None = None  # recorded bar files (directory or file) to train on instead of the Kafka bar topic
    tickers: str | None = None  # comma-separated subset of tickers to train on (with `bars` only); None: all
    promote: bool = True  # run the promotion gate and promote a model that passes; False: evaluate and save only
    # -- model and optimisation; None: the preset's value (minutecast.model.PRESETS)
    preset: str = "default"  # architecture and training defaults: default, gaussian, first, tiny
    epochs: int | None = Field(default=None, ge=0)  # passes over the training samples; 0 keeps the untrained model
    batch_size: int | None = Field(default=None, ge=1)  # samples per step PER RANK (global: x ranks)
    # Adam learning rate of ONE rank; training multiplies it by the ranks (the same step size per sample).
    learning_rate: float | None = Field(default=None, gt=0)
    # Cap on training (and, per rank, validation) samples, all ranks together: a random subset, time order kept.
    max_samples: int | None = Field(default=None, ge=1)
    seed: int = 0  # initial weights and shuffling (rank 0's weights are broadcast anyway)
    # -- the split by New York trading date (train < validation < test dates)
    val_frac: float = Field(default=0.15, gt=0, lt=1)  # share of dates just before the test dates: validation
    test_frac: float = Field(default=0.15, gt=0, lt=1)  # share of dates at the end: test report and promotion gate
    # -- Horovod and TensorFlow
    threads_per_rank: int = Field(default=0, ge=0)  # TensorFlow intra/inter-op threads per rank (0: TF decides)
    fp16_allreduce: bool = False  # compress gradients to float16 for the allreduce (halves the bytes exchanged)
    backward_passes: int = Field(default=1, ge=1)  # local gradient accumulation steps per allreduce (fewer rounds)
    # -- outputs
    keep_checkpoints: int = 2  # per-epoch checkpoints kept per run under <home>/checkpoints/train (at least 1)
    # Runs kept after each run: the newest N of <home>/runs/<id> and of <home>/checkpoints/train/<id>
    # (the run in progress and CURRENT's run always stay; training/cleanup.py).
    keep_runs: int = Field(default=5, ge=1)
    # Model versions kept in the registry: the newest N (about 1 MB each) and always CURRENT; the reports
    # of removed versions go with them.
    keep_versions: int = Field(default=10, ge=1)
    reports_dir: Path | None = None  # default: <home>/reports
    metrics_port: int = 9104  # Prometheus /metrics of the periodic trainer (`every`); 0 disables it

    @property
    def reports(self) -> Path:
        return self.reports_dir or self.home / "reports"


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class WebSettings(CommonSettings):
    """`minutecast serve`: the HTTP API and dashboard (``MINUTECAST_SERVE_*``; ``MINUTECAST_WEB_PORT`` is Faust's)."""

    serve_host: str = "127.0.0.1"  # loopback by default; any other address requires serve_token
    serve_port: int = 8080
    # Read-only bearer token for /api, /metrics and /reports; required when serve_host is not loopback.
    serve_token: SecretStr | None = None
    serve_history_max: int = 120  # most forecasts one /api/forecasts/{ticker}?history=N returns (Redis keeps 120)
    serve_tickers_refresh_s: float = 5.0  # how often the set of tickers with a forecast is re-read (SCAN)
    serve_status_cache_s: float = 3.0  # /api/status is computed at most this often (it samples for bars/s)
    serve_sse_keepalive_s: float = 15.0  # comment line on idle SSE connections (proxies drop silent ones)
    serve_sse_queue: int = 2000  # events buffered per SSE client; a client that falls this far behind is dropped
    reports_dir: Path | None = None  # default: <home>/reports (the trainer's, see TrainingSettings)

    @property
    def reports(self) -> Path:
        return self.reports_dir or self.home / "reports"

    @property
    def loopback(self) -> bool:
        if self.serve_host in LOOPBACK_HOSTS:
            return True
        try:
            return ipaddress.ip_address(self.serve_host).is_loopback
        except ValueError:
            return False

    @model_validator(mode="after")
    def _token_off_loopback(self) -> WebSettings:
        if not self.loopback and self.serve_token is None:
            raise ValueError(f"serving on {self.serve_host} (not loopback) needs MINUTECAST_SERVE_TOKEN, a "
                             "read-only bearer token")
        return self

    def url(self) -> str:
        host = self.serve_host if self.loopback else "127.0.0.1" if self.serve_host == "0.0.0.0" else self.serve_host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.serve_port}/"


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
