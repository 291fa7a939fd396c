"""What the routes of ``minutecast serve`` share, as FastAPI dependencies (:mod:`web.app` builds it once).

:class:`State` holds the settings, the async Redis client, the SSE fan-out and the caches; a route takes it as
``st: StateDep``. :func:`require_token` is the bearer-token check that :func:`web.app.create_app` puts on the
data routers when the server is bound off loopback (on loopback they carry no dependency at all).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from minutecast.keys import Keys
from minutecast.redis import connect_async
from minutecast.settings import WebSettings
from minutecast.topics import Topics
from web import data
from web.metrics import Metrics
from web.stream import Broadcaster

log = logging.getLogger(__name__)


class State:
    """What the routes share: settings, the async Redis client, the SSE fan-out, caches."""

    def __init__(self, s: WebSettings) -> None:
        self.s, self.keys = s, Keys(s.namespace)
        self.token = s.serve_token.get_secret_value().encode() if s.serve_token is not None else None
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


def get_state(request: Request) -> State:
    return request.app.state.st  # type: ignore[no-any-return]


StateDep = Annotated[State, Depends(get_state)]
bearer = HTTPBearer(auto_error=False, description="MINUTECAST_SERVE_TOKEN (required off loopback)")


def require_token(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """The bearer token, or ``?access_token=`` (EventSource and links cannot send headers)."""
    token = get_state(request).token
    if token is None:
        return
    got = cred.credentials if cred is not None else request.query_params.get("access_token", "")
    if not hmac.compare_digest(got.encode(), token):
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})


def history_count(request: Request, history: Annotated[int, Query(
        ge=0, description="newest N forecasts (oldest first)")] = 0) -> int:
    """``?history=N``, at most ``serve_history_max`` (a setting: checked here, as FastAPI's ``le=`` would, since
    a module-level route cannot know it when declared)."""
    most = get_state(request).s.serve_history_max
    if history > most:
        raise RequestValidationError([{
            "type": "less_than_equal", "loc": ("query", "history"), "msg": f"Input should be less than or equal "
            f"to {most}", "input": request.query_params.get("history", str(history)), "ctx": {"le": most}}])
    return history


HistoryDep = Annotated[int, Depends(history_count)]
