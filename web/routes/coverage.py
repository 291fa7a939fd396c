"""``GET /api/coverage``: today's live coverage of the served 80% intervals (:mod:`web.coverage`)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from web import coverage
from web.deps import StateDep

router = APIRouter(prefix="/api", tags=["forecasts"])


@router.get("/coverage", summary="live coverage of the served 80% intervals, today, all tickers")
async def live_coverage(st: StateDep) -> JSONResponse:
    async with st.coverage_lock:  # every ticker's history: computed at most once per cache period
        if st.coverage is None or time.monotonic() - st.coverage[0] > coverage.CACHE_S:
            st.coverage = (time.monotonic(), await coverage.live_coverage(st.redis, st.keys, set(st.tickers)))
    return JSONResponse(st.coverage[1])
