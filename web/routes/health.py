"""``GET /healthz`` (for probes: no token) and ``GET /metrics`` (Prometheus; guarded like the data routes)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from web.deps import StateDep

health_router = APIRouter(tags=["ops"])
metrics_router = APIRouter(tags=["ops"])


@health_router.get("/healthz", summary="Redis answers and the SSE consumer is reading")
async def healthz(st: StateDep) -> JSONResponse:
    try:
        redis_ok = bool(await asyncio.wait_for(st.redis.ping(), 2))
    except Exception:  # noqa: BLE001 - any failure: not healthy
        redis_ok = False
    ok = redis_ok and st.broadcaster.ready.is_set()
    return JSONResponse({"ok": ok, "redis": redis_ok, "stream": st.broadcaster.ready.is_set(),
                         "namespace": st.s.namespace}, status_code=200 if ok else 503)


@metrics_router.get("/metrics", summary="Prometheus metrics")
async def metrics(st: StateDep) -> Response:
    st.metrics.sse_delivered.set(st.broadcaster.delivered)
    st.metrics.sse_dropped.set(st.broadcaster.dropped_clients)
    with contextlib.suppress(RedisError):  # Redis down: the memory gauges keep their last value
        mem = await st.redis.info("memory")
        st.metrics.redis_used.set(int(mem.get("used_memory", 0)))
        st.metrics.redis_max.set(int(mem.get("maxmemory", 0)))
    body, ctype = st.metrics.render()
    return Response(body, media_type=ctype)
