"""Redis: the one module that opens connections (password always required)."""

from __future__ import annotations

import time

import redis as redislib

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
    import redis.asyncio as aioredis

    return aioredis.Redis(**(_options(rs) | kwargs))  # type: ignore[arg-type]


def wait_for_redis(rs: RedisSettings, timeout_s: float = 30.0) -> redislib.Redis:
    """Block until Redis answers PING with our password, or raise :class:`ServiceUnavailable`."""
    deadline = time.monotonic() + timeout_s
    client = connect(rs)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.ping()
            return client
        except redislib.AuthenticationError as exc:
            raise ConfigError(f"Redis at {rs.host}:{rs.port} refused our password") from exc
        except redislib.RedisError as exc:
            last = exc
            time.sleep(0.3)
    raise ServiceUnavailable(f"Redis at {rs.host}:{rs.port} did not answer within {timeout_s:.0f} s ({last})")
