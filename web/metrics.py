"""Prometheus metrics of the web server, in its own registry (served at ``/metrics``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("minutecast_web_requests_total", "HTTP requests", ["route", "status"],
                                registry=self.registry)
        self.latency = Histogram("minutecast_web_request_seconds", "time to the response headers", ["route"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5),
                                 registry=self.registry)
        self.sse_clients = Gauge("minutecast_web_sse_clients", "connected /api/stream clients",
                                 registry=self.registry)
        self.sse_delivered = Gauge("minutecast_web_sse_events", "forecasts queued to SSE clients since start",
                                   registry=self.registry)
        # Redis refuses writes past maxmemory (noeviction): alert on used / max (`status` warns from 80%).
        self.redis_used = Gauge("minutecast_redis_used_memory_bytes", "Redis used_memory", registry=self.registry)
        self.redis_max = Gauge("minutecast_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)",
                               registry=self.registry)
        self.sse_dropped = Gauge("minutecast_web_sse_dropped_clients", "SSE clients dropped for reading too slowly",
                                 registry=self.registry)

    def middleware(self, app: Any) -> Callable[..., Awaitable[None]]:
        """Plain ASGI middleware (no extra task or stream per request, so SSE chunks pass straight through):
        counts each response and times it to its headers, by route template."""

        async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            t0 = time.perf_counter()

            async def timed_send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    name = getattr(scope.get("route"), "path", "other")
                    self.requests.labels(name, str(message["status"])).inc()
                    self.latency.labels(name).observe(time.perf_counter() - t0)
                await send(message)

            await app(scope, receive, timed_send)

        return wrapped

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
