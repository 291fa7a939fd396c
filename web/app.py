"""The HTTP API and dashboard of ``minutecast serve`` (FastAPI; run by uvicorn in :mod:`web.cli`).

    minutecast serve                                   # http://127.0.0.1:8080/  (docs: /docs)
    uvicorn --factory web.app:create_app --port 8080   # the same app, for other ASGI servers

Routes (one router per resource in ``web/routes/``): ``/`` the dashboard (static files under ``web/static``),
``GET /api/forecasts``, ``GET /api/forecasts/{ticker}?history=N``, ``GET /api/status``, ``GET /api/coverage``,
``GET /api/stream`` (Server-Sent Events), ``/reports/...`` (the trainer's reports and plots), ``/healthz``,
``/metrics``, OpenAPI at ``/docs``. What they share is in :mod:`web.deps`.
Everything is read-only (GET). When bound off loopback every data route needs the bearer token
``MINUTECAST_SERVE_TOKEN`` (``Authorization: Bearer ...``, or ``?access_token=`` for EventSource and links).
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from minutecast.errors import Rejected
from minutecast.settings import WebSettings
from web import data
from web.deps import State, require_token
from web.routes import coverage, forecasts, health, pages, reports, status, stream

log = logging.getLogger(__name__)


def create_app(s: WebSettings | None = None) -> FastAPI:
    """The app: shared state from the settings, the error handlers, then every router (guarded off loopback)."""
    st = State(s or WebSettings())
    app = FastAPI(title="minutecast", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Read-only API of the 5-minute-ahead forecasts: latest per ticker, history, "
                              "pipeline status and a Server-Sent-Events stream of the forecasts topic.")
    app.state.st = st
    app.add_middleware(_Wrap, wrap=st.metrics.middleware)
    app.add_exception_handler(Rejected, _bad_input)  # type: ignore[arg-type]
    app.add_exception_handler(data.UnknownTicker, _unknown)  # type: ignore[arg-type]
    # On loopback there is no token: no dependency at all (it would cost every request its resolution).
    guarded: list[Any] = [Depends(require_token)] if st.token is not None else []
    for router in (forecasts.router, status.router, coverage.router, stream.router, reports.router,
                   health.metrics_router):
        app.include_router(router, dependencies=guarded)
    app.include_router(health.health_router)
    app.include_router(pages.router)
    if not (pages.VENDOR / "uPlot.iife.min.js").is_file():
        log.warning("%s is missing: run `make setup` (npm ci) for the chart library", pages.VENDOR)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    _document_history_bound(app, st.s.serve_history_max)
    return app


def _document_history_bound(app: FastAPI, most: int) -> None:
    """``?history=N``'s bound is a setting, checked at run time (:func:`web.deps.history_count`): the OpenAPI
    schema states it as ``maximum``, as FastAPI's ``le=`` would."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for op in base()["paths"].values():
                for param in op.get("get", {}).get("parameters", []):
                    if param["name"] == "history":
                        param["schema"]["maximum"] = most
        return base()

    app.openapi = openapi  # type: ignore[method-assign]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The SSE consumer and the ticker-list refresher run while the server does; Redis closes after."""
    st: State = app.state.st
    st.broadcaster.start(asyncio.get_running_loop())
    task = asyncio.create_task(st.refresher())
    yield
    task.cancel()
    st.broadcaster.stop()
    await st.redis.aclose()


async def _bad_input(_request: Request, exc: Rejected) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "reason": exc.reason}, status_code=422)


async def _unknown(_request: Request, exc: data.UnknownTicker) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


class _Wrap:
    """Adapts a ``wrap(app) -> asgi`` function to Starlette's middleware interface."""

    def __init__(self, app: Any, wrap: Any) -> None:
        self.asgi = wrap(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)
