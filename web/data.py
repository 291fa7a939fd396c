"""What the API reads from Redis: the latest forecast of every ticker, one ticker's history and its chart.

Everything is read through :class:`minutecast.forecast_store.ForecastStore` (the only code that knows the
stored bytes), which gives back the ``Forecast`` JSON the Spark job served, byte for byte; each is validated
with :meth:`minutecast.schemas.Forecast.from_dict`. v2 fields (``q05`` .. ``q95``, ``sigma``,
``interval_kind``) are passed through when a forecast has them and read with ``.get()``, so v1 works.
"""

from __future__ import annotations

import json
import time
from typing import Any

from minutecast.errors import MinutecastError, Rejected
from minutecast.forecast_store import NEWEST_LUA, ForecastStore
from minutecast.keys import Keys
from minutecast.schemas import TICKER_RE, Forecast

FLAT_BP = 0.5  # a move smaller than this (basis points) counts as "no move" for the direction rule


class UnknownTicker(MinutecastError):
    """No forecast in Redis for this ticker."""


def check_ticker(ticker: str) -> str:
    """``ticker`` upper-cased if it is a valid ticker, else :class:`Rejected` (``bad_ticker``)."""
    t = ticker.strip().upper()
    if not TICKER_RE.match(t):
        raise Rejected("bad_ticker", f"{ticker[:20]!r} is not a ticker (e.g. AAPL, BRK-B)")
    return t


def parse_tickers(arg: str | None) -> frozenset[str] | None:
    """``"AAPL,msft"`` -> {"AAPL", "MSFT"}; None or empty: all tickers."""
    if not arg or not arg.strip():
        return None
    return frozenset(check_ticker(t) for t in arg.split(",") if t.strip())


def decorate(d: dict[str, Any]) -> dict[str, Any]:
    """A stored forecast dict, validated, with ``move_bp`` and the 80%/90% interval when present."""
    f = Forecast.from_dict(d)
    out = dict(d)
    out["move_bp"] = round((f.predicted_close / f.last_close - 1) * 1e4, 3)
    if d.get("q10") is not None and d.get("q90") is not None:
        out["interval80"] = [d["q10"], d["q90"]]
    if d.get("q05") is not None and d.get("q95") is not None:
        out["interval90"] = [d["q05"], d["q95"]]
    return out


class LatestCache:
    """Serialized latest forecasts per ticker, re-encoded only when Redis holds a new one.

    ``GET /api/forecasts`` for 503 tickers is one round trip (the store's newest-records script) plus byte
    joins: each item is decoded, validated and encoded once per new stored record, and ``age_s`` is
    appended per request.
    """

    def __init__(self) -> None:
        self._items: dict[str, tuple[Any, bytes, float]] = {}  # ticker -> (stored part, encoded w/o "}", forecast_at)
        self._script: Any = None

    def script(self, redis: Any) -> Any:
        """The store's :data:`~minutecast.forecast_store.NEWEST_LUA` registered on ``redis`` (EVALSHA,
        reloaded by redis-py if Redis lost it)."""
        if self._script is None:
            self._script = redis.register_script(NEWEST_LUA)
        return self._script

    def item(self, ticker: str, part: Any) -> tuple[bytes, float]:
        """``part``: the ticker's undecoded newest record (:meth:`ForecastStore.split_newest`)."""
        hit = self._items.get(ticker)
        if hit is not None and hit[0] == part:
            return hit[1], hit[2]
        d = decorate(json.loads(ForecastStore.decode_part(ticker, part)[-1][1]))
        enc = json.dumps(d, separators=(",", ":")).encode()[:-1]
        self._items[ticker] = (part, enc, float(d["forecast_at"]))
        return enc, float(d["forecast_at"])

    def encode(self, ticker: str, part: Any, now: float) -> bytes:
        enc, at = self.item(ticker, part)
        return enc + b',"age_s":%.3f}' % (now - at)


async def _newest(redis: Any, keys: Keys, tickers: list[str], n: int, cache: LatestCache | None = None,
                  ) -> dict[str, Any]:
    """The newest ``n`` stored records of each of ``tickers``, undecoded (tickers without any left out)."""
    script = (cache or LatestCache()).script(redis)
    k, a = ForecastStore(keys).newest_args(tickers, n)
    return ForecastStore.split_newest(tickers, await script(keys=k, args=a))


async def latest_many(redis: Any, keys: Keys, tickers: list[str], cache: LatestCache) -> bytes:
    """``{"now":..,"count":..,"forecasts":[...]}`` for ``tickers`` (those without a forecast are left out)."""
    parts = await _newest(redis, keys, tickers, 1, cache) if tickers else {}
    now = time.time()
    out = []
    for t in tickers:
        if t in parts:
            try:
                out.append(cache.encode(t, parts[t], now))
            except (MinutecastError, ValueError, KeyError, TypeError):
                continue  # a value that fails the schema is not served
    return b'{"now":%.3f,"count":%d,"forecasts":[' % (now, len(out)) + b",".join(out) + b"]}"


async def latest_one(redis: Any, keys: Keys, ticker: str) -> dict[str, Any]:
    parts = await _newest(redis, keys, [ticker], 1)
    if ticker not in parts:
        raise UnknownTicker(f"no forecast for {ticker}")
    out = decorate(json.loads(ForecastStore.decode_part(ticker, parts[ticker])[-1][1]))
    out["age_s"] = round(time.time() - float(out["forecast_at"]), 3)
    return out


async def latest_one_encoded(redis: Any, keys: Keys, ticker: str, cache: LatestCache) -> bytes:
    """:func:`latest_one` as JSON bytes through ``cache`` (validated and encoded once per new forecast)."""
    parts = await _newest(redis, keys, [ticker], 1, cache)
    if ticker not in parts:
        raise UnknownTicker(f"no forecast for {ticker}")
    return cache.encode(ticker, parts[ticker], time.time())


async def history(redis: Any, keys: Keys, ticker: str, n: int) -> list[dict[str, Any]]:
    """The newest ``n`` forecasts of ``ticker`` from its history, oldest first."""
    if n <= 0:
        return []
    parts = await _newest(redis, keys, [ticker], n)
    return decode_history(ticker, parts.get(ticker))


async def newest_parts(redis: Any, keys: Keys, tickers: list[str], n: int) -> dict[str, Any]:
    """The newest ``n`` stored forecasts of each of ``tickers``, undecoded (one script call; for
    :func:`decode_history`, which a caller may run in a thread)."""
    return await _newest(redis, keys, tickers, n) if tickers else {}


def decode_history(ticker: str, part: Any) -> list[dict[str, Any]]:
    """A ticker's undecoded newest records (:func:`newest_parts`) as decorated forecasts, oldest first; a value
    that fails the schema is left out."""
    out = []
    for _, js in ForecastStore.decode_part(ticker, part) if part is not None else []:
        try:
            out.append(decorate(json.loads(js)))
        except (MinutecastError, ValueError, KeyError, TypeError):
            continue
    return out


def hit(made: dict[str, Any], actual: float) -> tuple[bool, str]:
    """Whether the realised close ``actual`` confirms the forecast ``made`` five minutes before, and the rule.

    With an 80% interval (v2): the close lies inside [q10, q90]. Without (v1): the direction was right
    (a flat forecast, such as persistence, is right when the close moved less than ``FLAT_BP``).
    """
    if made.get("q10") is not None and made.get("q90") is not None:
        return bool(made["q10"] <= actual <= made["q90"]), "interval80"
    last = float(made["last_close"])
    real = (actual / last - 1) * 1e4
    pred = (float(made["predicted_close"]) / last - 1) * 1e4

    def sign(bp: float) -> int:
        return 0 if abs(bp) < FLAT_BP else (1 if bp > 0 else -1)

    return sign(real) == sign(pred), "direction"


def chart(forecasts: list[dict[str, Any]]) -> dict[str, Any]:
    """Points for the ticker chart: the actual close at every as-of minute, the forecast for that minute
    made ``horizon`` minutes earlier (with its bands and hit/miss), then the forecasts still pending."""
    by_target = {int(f["as_of"]) + 60 * int(f["horizon_min"]): f for f in forecasts}
    points: list[dict[str, Any]] = []
    last_seen = max((int(f["as_of"]) for f in forecasts), default=0)
    hits = misses = 0
    for f in forecasts:
        t, actual = int(f["as_of"]), float(f["last_close"])
        p: dict[str, Any] = {"t": t, "actual": actual}
        made = by_target.get(t)
        if made is not None:
            p |= _forecast_point(made)
            p["hit"], p["rule"] = hit(made, actual)
            hits, misses = hits + p["hit"], misses + (not p["hit"])
        points.append(p)
    pending = [{"t": t} | _forecast_point(f) for t, f in sorted(by_target.items()) if t > last_seen]
    return {"points": points, "pending": pending, "hits": hits, "misses": misses}


def _forecast_point(f: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = {"forecast": float(f["predicted_close"]), "made_at": int(f["as_of"])}
    for q in ("q05", "q10", "q90", "q95"):
        if f.get(q) is not None:
            p[q] = float(f[q])
    return p
