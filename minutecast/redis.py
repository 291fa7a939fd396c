"""Redis: the one module that opens connections (password always required)."""

from __future__ import annotations

import redis as redislib
import redis.asyncio as aioredis
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from minutecast.errors import ConfigError, ServiceUnavailable
from minutecast.settings import RedisSettings


def _options(rs: RedisSettings) -> dict[str, object]:
    """Connection options of both clients (one definition). Raises :class:`ConfigError` without a password."""
    if rs.password is None:
        raise ConfigError("Redis password missing: set MINUTECAST_REDIS_PASSWORD or run `minutecast infra up`")
    return {"host": rs.host, "port": rs.port, "db": rs.db, "password": rs.password.get_secret_value(),
            "socket_timeout": 10, "socket_connect_timeout": 5, "health_check_interval": 30}


def connect(rs: RedisSettings, **kwargs: object) -> redislib.Redis:
    """A client for ``rs``. Raises :class:`ConfigError` when no password is configured."""
    return redislib.Redis(**(_options(rs) | kwargs))  # type: ignore[arg-type]


def connect_async(rs: RedisSettings, **kwargs: object) -> redislib.asyncio.Redis:
    """An asyncio client for ``rs`` (the web server's), with the same settings as :func:`connect`."""

    return aioredis.Redis(**(_options(rs) | kwargs))  # type: ignore[arg-type]


def wait_for_redis(rs: RedisSettings, timeout_s: float = 30.0) -> redislib.Redis:
    """Block until Redis answers PING with our password, or raise :class:`ServiceUnavailable`."""
    client = connect(rs)
    try:
        for attempt in Retrying(stop=stop_after_delay(timeout_s), wait=wait_fixed(0.3), reraise=True,
                                retry=retry_if_exception(lambda e: isinstance(e, redislib.RedisError)
                                                         and not isinstance(e, redislib.AuthenticationError))):
            with attempt:
                client.ping()
    except redislib.AuthenticationError as exc:
        raise ConfigError(f"Redis at {rs.host}:{rs.port} refused our password") from exc
    except redislib.RedisError as exc:
        raise ServiceUnavailable(f"Redis at {rs.host}:{rs.port} did not answer within {timeout_s:.0f} s ({exc})") \
            from exc
    return client
