"""Redis: the one module that opens connections (password always required)."""

from __future__ import annotations

import redis as redislib
import redis.asyncio as aioredis

from minutecast import dependency
from minutecast.errors import ConfigError, ServiceUnavailable
from minutecast.settings import RedisSettings


def text(x: bytes | str) -> str:
    """A Redis reply as text: clients without ``decode_responses`` hand back bytes (UTF-8), others str."""
    return x.decode() if isinstance(x, bytes) else x


def _options(rs: RedisSettings) -> dict[str, object]:
    """Connection options of both clients (one definition). Raises :class:`ConfigError` without a password."""
    if rs.password is None:
        raise ConfigError("Redis password missing: set MINUTECAST_REDIS_PASSWORD or run `minutecast infra up`")
    return {"host": rs.host, "port": rs.port, "db": rs.db, "password": rs.password.get_secret_value(),
            "socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 30}


def connect(rs: RedisSettings, *, wait: bool | None = None, **kwargs: object) -> redislib.Redis:
    """A client for ``rs``. Raises :class:`ConfigError` when no password is configured.

    ``wait``: every command waits out a Redis outage (retried with back-off for as long as Redis is away, and
    reported: :mod:`minutecast.dependency`) instead of raising ConnectionError after redis-py's few retries.
    The services' clients wait; tools that must answer at once (`status`) do not. Default: ``rs.wait``
    (``MINUTECAST_REDIS_WAIT``), which the services' entry points turn on and which travels with the
    settings to Spark's executors."""
    options = _options(rs)
    if rs.wait if wait is None else wait:
        options["retry"] = dependency.WaitingRetry(dependency.DependencySettings().dependency_backoff_max_s)
    return redislib.Redis(**(options | kwargs))  # type: ignore[arg-type]


def connect_async(rs: RedisSettings, **kwargs: object) -> redislib.asyncio.Redis:
    """An asyncio client for ``rs`` (the web server's), with the same settings as :func:`connect`."""

    return aioredis.Redis(**(_options(rs) | kwargs))  # type: ignore[arg-type]


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, redislib.RedisError) and not isinstance(exc, redislib.AuthenticationError)


def wait_for_redis(rs: RedisSettings, timeout_s: float | None = None, *, wait: bool | None = None) -> redislib.Redis:
    """Block until Redis answers PING with our password, or raise :class:`ServiceUnavailable` after
    ``timeout_s`` (None: ``MINUTECAST_DEPENDENCY_WAIT_S``, by default no limit: a service waits the outage
    out, reported by :mod:`minutecast.dependency`). Returns the client (``wait``: as :func:`connect`)."""
    client = connect(rs, wait=wait)
    probe = connect(rs, wait=False)  # one ping per try: the back-off and the report are dependency.wait's
    try:
        dependency.wait("redis", probe.ping, _retryable, timeout_s)
    except redislib.AuthenticationError as exc:
        raise ConfigError(f"Redis at {rs.host}:{rs.port} refused our password") from exc
    except redislib.RedisError as exc:
        raise ServiceUnavailable(f"Redis at {rs.host}:{rs.port} did not answer within "
                                 f"{dependency.limit_of(timeout_s):.0f} s ({exc})") from exc
    finally:
        probe.close()
    return client
