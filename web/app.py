"""The HTTP API and dashboard of ``minutecast serve`` (FastAPI; run by uvicorn in :mod:`web.cli`).

    minutecast serve                                   # http://127.0.0.1:8080/  (docs: /docs)
    uvicorn --factory web.app:create_app --port 8080   # the same app, for other ASGI servers

Routes: ``/`` the dashboard (static files under ``web/static``), ``GET /api/forecasts``,
``GET /api/forecasts/{ticker}?history=N``, ``GET /api/status``, ``GET /api/stream`` (Server-Sent Events),
``/reports/...`` (the trainer's reports and plots), ``/healthz``, ``/metrics``, OpenAPI at ``/docs``.
Everything is read-only (GET). When bound off loopback every data route needs the bearer token
``MINUTECAST_SERVE_TOKEN`` (``Authorization: Bearer ...``, or ``?access_token=`` for EventSource and links).
"""

import asyncio
import contextlib
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from redis.exceptions import RedisError

from minutecast.errors import Rejected
from minutecast.keys import Keys
from minutecast.redis import connect_async
from minutecast.settings import InfraSettings, WebSettings
from minutecast.topics import Topics
from ops import status
from web import coverage, data, models
from web.metrics import Metrics
from web.stream import Broadcaster, events

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"


class State:
    """What the routes share: settings, the async Redis client, the SSE fan-out, caches."""

    def __init__(self, s: WebSettings) -> None:
        self.s, self.keys = s, Keys(s.namespace)
        self.redis = connect_async(s.redis)
        self.metrics = Metrics()
        self.tickers: set[str] = set()
        self.tickers_at = 0.0
        self.latest = data.LatestCache()
        self.broadcaster = Broadcaster(s.kafka, Topics(s.namespace).forecasts, s.serve_sse_queue,
                                       on_tickers=self.tickers.update)
        self.status: tuple[float, dict[str, Any]] | None = None
        self.status_lock = asyncio.Lock()
        self.coverage: tuple[float, dict[str, Any]] | None = None
        self.coverage_lock = asyncio.Lock()

    async def refresh_tickers(self) -> None:
        prefix = self.keys.forecast("")
        found = {k[len(prefix):].decode() async for k in self.redis.scan_iter(match=self.keys.forecast_pattern(),
                                                                                count=1000)}
        self.tickers.update(found)
        self.tickers_at = time.monotonic()

    async def refresher(self) -> None:
        while True:
            try:
                await self.refresh_tickers()
            except Exception:  # noqa: BLE001 - Redis away for a moment: keep the last list
                log.warning("could not refresh the ticker list", exc_info=True)
            await asyncio.sleep(self.s.serve_tickers_refresh_s)


def create_app(s: WebSettings | None = None) -> FastAPI:
    s = s or WebSettings()
    st = State(s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        st.broadcaster.start(asyncio.get_running_loop())
        task = asyncio.create_task(st.refresher())
        yield
        task.cancel()
        st.broadcaster.stop()
        await st.redis.aclose()

    app = FastAPI(title="minutecast", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Read-only API of the 5-minute-ahead forecasts: latest per ticker, history, "
                              "pipeline status and a Server-Sent-Events stream of the forecasts topic.")
    app.state.st = st
    bearer = HTTPBearer(auto_error=False, description="MINUTECAST_SERVE_TOKEN (required off loopback)")
    token = s.serve_token.get_secret_value().encode() if s.serve_token is not None else None

    def auth(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if token is None:
            return
        got = cred.credentials if cred is not None else request.query_params.get("access_token", "")
        if not hmac.compare_digest(got.encode(), token):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    app.add_middleware(_Wrap, wrap=st.metrics.middleware)

    @app.exception_handler(Rejected)
    async def _bad_input(_request: Request, exc: Rejected) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "reason": exc.reason}, status_code=422)

    @app.exception_handler(data.UnknownTicker)
    async def _unknown(_request: Request, exc: data.UnknownTicker) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    # On loopback there is no token: no dependency at all (it would cost every request its resolution).
    guarded: list[Any] = [Depends(auth)] if token is not None else []
    api = APIRouter(prefix="/api", dependencies=guarded, tags=["forecasts"])
    Ticker = Annotated[str, PathParam(description="e.g. AAPL, BRK-B (checked against minutecast.schemas.TICKER_RE)",
                                       examples=["AAPL"])]

    @api.get("/forecasts", responses={200: {"model": models.ForecastList}}, summary="latest forecast of every ticker")
    async def forecasts(tickers: Annotated[str | None, Query(description="comma-separated filter")] = None
                        ) -> Response:
        wanted = data.parse_tickers(tickers)
        if not st.tickers:
            await st.refresh_tickers()
        names = sorted(wanted if wanted is not None else st.tickers)
        body = await data.latest_many(st.redis, st.keys, names, st.latest)
        return Response(body, media_type="application/json")

    @api.get("/forecasts/{ticker}", responses={200: {"model": models.TickerForecasts}, 404: {"model": models.Error}},
             summary="latest forecast of one ticker, its history and chart series")
    async def forecast(ticker: Ticker,
                       history: Annotated[int, Query(ge=0, le=s.serve_history_max,
                                                     description="newest N forecasts (oldest first)")] = 0
                       ) -> Response:
        t = data.check_ticker(ticker)
        if not history:  # the hot path: the cached encoding of the stored JSON, no re-validation
            body = await data.latest_one_encoded(st.redis, st.keys, t, st.latest)
            return Response(b'{"ticker":"%s","latest":%s}' % (t.encode(), body), media_type="application/json")
        latest = await data.latest_one(st.redis, st.keys, t)
        out: dict[str, Any] = {"ticker": t, "latest": latest}
        if history:
            hist = await data.history(st.redis, st.keys, t, history)
            out |= {"history": hist, "chart": data.chart(hist)}
        return Response(json.dumps(out, separators=(",", ":")), media_type="application/json")

    @api.get("/status", responses={200: {"model": models.Status}}, summary="what `minutecast status` shows")
    async def status() -> JSONResponse:
        return JSONResponse(await pipeline_status())

    @api.get("/coverage", summary="live coverage of the served 80% intervals, today, all tickers")
    async def live_coverage() -> JSONResponse:
        async with st.coverage_lock:  # every ticker's history: computed at most once per cache period
            if st.coverage is None or time.monotonic() - st.coverage[0] > coverage.CACHE_S:
                st.coverage = (time.monotonic(), await coverage.live_coverage(st.redis, st.keys, set(st.tickers)))
        return JSONResponse(st.coverage[1])

    @api.get("/stream", summary="Server-Sent Events: every forecast from the forecasts topic",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "`event: forecast` lines with Forecast JSON"}})
    async def stream(tickers: Annotated[str | None, Query(description="comma-separated filter")] = None
                     ) -> StreamingResponse:
        sub = st.broadcaster.subscribe(data.parse_tickers(tickers))
        st.metrics.sse_clients.inc()

        async def body() -> Any:
            try:
                async for chunk in events(sub, s.serve_sse_keepalive_s):
                    yield chunk
            finally:
                st.broadcaster.unsubscribe(sub)
                st.metrics.sse_clients.dec()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def pipeline_status() -> dict[str, Any]:
        async with st.status_lock:
            if st.status is None or time.monotonic() - st.status[0] > s.serve_status_cache_s:
                st.status = (time.monotonic(), await asyncio.to_thread(collect_status, s))
        out = dict(st.status[1])
        replay = await st.redis.hgetall(st.keys.replay_state())
        out["replay"] = {_text(k): _text(v) for k, v in replay.items()}
        out["web"] = {"sse_clients": len(st.broadcaster.subscribers), "stream_ready": st.broadcaster.ready.is_set(),
                      "tickers": len(st.tickers)}
        return out

    app.include_router(api)

    @app.get("/reports/{path:path}", dependencies=guarded, tags=["reports"],
             summary="the trainer's reports and plots (report.md, report.json, *.png)")
    async def reports(path: str) -> FileResponse:
        root = s.reports.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise HTTPException(404, f"no report file {path!r}")
        media = "text/plain; charset=utf-8" if target.suffix in (".md", ".txt") else None
        return FileResponse(target, media_type=media)

    @app.get("/healthz", tags=["ops"], summary="Redis answers and the SSE consumer is reading")
    async def healthz() -> JSONResponse:
        try:
            redis_ok = bool(await asyncio.wait_for(st.redis.ping(), 2))
        except Exception:  # noqa: BLE001 - any failure: not healthy
            redis_ok = False
        ok = redis_ok and st.broadcaster.ready.is_set()
        return JSONResponse({"ok": ok, "redis": redis_ok, "stream": st.broadcaster.ready.is_set(),
                             "namespace": s.namespace}, status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=guarded, tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        st.metrics.sse_delivered.set(st.broadcaster.delivered)
        st.metrics.sse_dropped.set(st.broadcaster.dropped_clients)
        with contextlib.suppress(RedisError):  # Redis down: the memory gauges keep their last value
            mem = await st.redis.info("memory")
            st.metrics.redis_used.set(int(mem.get("used_memory", 0)))
            st.metrics.redis_max.set(int(mem.get("maxmemory", 0)))
        body, ctype = st.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:  # Swagger UI from the vendored files: nothing from a CDN
        return get_swagger_ui_html(openapi_url="/openapi.json", title="minutecast API",
                                   swagger_js_url="/static/vendor/swagger-ui-bundle.js",
                                   swagger_css_url="/static/vendor/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    if not (VENDOR / "uPlot.iife.min.js").is_file():
        log.warning("%s is missing: run `make setup` (npm ci) for the chart library", VENDOR)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


class _Wrap:
    """Adapts a ``wrap(app) -> asgi`` function to Starlette's middleware interface."""

    def __init__(self, app: Any, wrap: Any) -> None:
        self.asgi = wrap(app)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.asgi(scope, receive, send)


def collect_status(s: WebSettings) -> dict[str, Any]:
    """`minutecast status`'s dict plus the links to the served model's report and to the latest report."""

    out = status.collect(sample_s=0.5, s=InfraSettings(namespace=s.namespace, home=s.home, kafka=s.kafka,
                                                       redis=s.redis))
    out["report"] = report_links(s.reports, str(out.get("model_version", "")))
    out["latest_report"] = report_links(s.reports, "")  # the newest evaluation, promoted or not
    return out


def report_links(root: Path, version: str) -> dict[str, Any] | None:
    """Links to the report of ``version`` (else the latest report): Markdown, JSON and plots."""
    for name in (version, "latest"):
        folder = root / name
        if name and (folder / "report.md").is_file():
            files = sorted(p.name for p in folder.iterdir() if p.is_file())
            return {"version": folder.resolve().name, "report": f"/reports/{name}/report.md",
                    "files": [f"/reports/{name}/{f}" for f in files]}
    return None
