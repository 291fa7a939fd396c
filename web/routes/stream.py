"""``GET /api/stream``: Server-Sent Events, every forecast from the forecasts topic (:mod:`web.stream`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from web import data
from web.deps import StateDep
from web.stream import events

router = APIRouter(prefix="/api", tags=["forecasts"])


@router.get("/stream", summary="Server-Sent Events: every forecast from the forecasts topic",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`event: forecast` lines with Forecast JSON"}})
async def stream(st: StateDep, tickers: Annotated[str | None, Query(description="comma-separated filter")] = None
                 ) -> StreamingResponse:
    sub = st.broadcaster.subscribe(data.parse_tickers(tickers))
    st.metrics.sse_clients.inc()

    async def body() -> Any:
        try:
            async for chunk in events(sub, st.s.serve_sse_keepalive_s):
                yield chunk
        finally:
            st.broadcaster.unsubscribe(sub)
            st.metrics.sse_clients.dec()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
