"""``GET /api/forecasts`` (latest of every ticker) and ``GET /api/forecasts/{ticker}`` (one, with history)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam

from web import data, models
from web.deps import HistoryDep, StateDep

router = APIRouter(prefix="/api", tags=["forecasts"])
Ticker = Annotated[str, PathParam(description="e.g. AAPL, BRK-B (checked against minutecast.schemas.TICKER_RE)",
                                   examples=["AAPL"])]


@router.get("/forecasts", responses={200: {"model": models.ForecastList}}, summary="latest forecast of every ticker")
async def forecasts(st: StateDep,
                    tickers: Annotated[str | None, Query(description="comma-separated filter")] = None) -> Response:
    wanted = data.parse_tickers(tickers)
    if not st.tickers:
        await st.refresh_tickers()
    names = sorted(wanted if wanted is not None else st.tickers)
    body = await data.latest_many(st.redis, st.keys, names, st.latest)
    return Response(body, media_type="application/json")


@router.get("/forecasts/{ticker}", responses={200: {"model": models.TickerForecasts}, 404: {"model": models.Error}},
            summary="latest forecast of one ticker, its history and chart series")
async def forecast(st: StateDep, ticker: Ticker, history: HistoryDep) -> Response:
    t = data.check_ticker(ticker)
    if not history:  # the hot path: the cached encoding of the stored JSON, no re-validation
        body = await data.latest_one_encoded(st.redis, st.keys, t, st.latest)
        return Response(b'{"ticker":"%s","latest":%s}' % (t.encode(), body), media_type="application/json")
    latest = await data.latest_one(st.redis, st.keys, t)
    out: dict[str, Any] = {"ticker": t, "latest": latest}
    hist = await data.history(st.redis, st.keys, t, history)
    out |= {"history": hist, "chart": data.chart(hist)}
    return Response(json.dumps(out, separators=(",", ":")), media_type="application/json")
