"""Live coverage: the share of served 80% intervals that held, over today's forecasts whose outcome is known.

"Known" is what the chart shows (:func:`web.data.chart`): a forecast made at minute t - 5 whose target minute t
has a forecast of its own in the ticker's history, whose ``last_close`` is the realised close. "Held" is that
close inside the forecast's [q10, q90] (v1 forecasts carry no interval and are left out). "Today" is the New
York date of the newest as-of minute of all tickers (market time: the replay's shifted date too). The history
is decoded as the chart's is, :func:`web.data.decode_history` (the newest :data:`HISTORY` forecasts per ticker), so
this is today's coverage within that window: about the last two market hours.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable
from typing import Any

from minutecast.intervals import LEVELS
from minutecast.keys import Keys
from minutecast.window import SESSION_TZ
from web import data

HISTORY = 120  # forecasts per ticker read (what Redis keeps)
CHUNK = 100  # tickers per read (one script call: ~1.2 MB of records at 120 forecasts of 102 B)
# /api/coverage is recomputed at most this often: 1.6-3 s of CPU at 503 tickers x 120 (2 cores, load 3.3).
CACHE_S = 30.0
NOMINAL80 = LEVELS[0]  # the 80% interval's nominal coverage, 0.8


def market_date(epoch: float) -> dt.date:
    return dt.datetime.fromtimestamp(epoch, SESSION_TZ).date()


def summarise(histories: Iterable[list[dict[str, Any]]]) -> dict[str, Any]:
    """``{"day", "held", "known", "coverage", "nominal"}`` over the histories (one list per ticker)."""
    histories = [h for h in histories if h]
    newest = max((int(f["as_of"]) for h in histories for f in h), default=None)
    if newest is None:
        return {"day": None, "held": 0, "known": 0, "coverage": None, "nominal": NOMINAL80}
    day = market_date(newest)
    held = known = 0
    for h in histories:
        for p in data.chart(h)["points"]:
            if p.get("rule") == "interval80" and market_date(p["t"]) == day:
                known += 1
                held += bool(p["hit"])
    return {"day": day.isoformat(), "held": held, "known": known,
            "coverage": round(held / known, 4) if known else None, "nominal": NOMINAL80}


async def live_coverage(redis: Any, keys: Keys, tickers: Iterable[str]) -> dict[str, Any]:
    """:func:`summarise` over every ticker's history in Redis: one read per CHUNK tickers, the decoding in a
    thread (about 60k forecasts at 503 tickers: the event loop keeps serving the stream meanwhile)."""
    names = sorted(tickers)
    parts: dict[str, Any] = {}
    for i in range(0, len(names), CHUNK):
        parts |= await data.newest_parts(redis, keys, names[i:i + CHUNK], HISTORY)
    return await asyncio.to_thread(lambda: summarise(data.decode_history(t, p) for t, p in parts.items()))
