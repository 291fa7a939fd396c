"""Redis keys: the one place every service builds them.

Layout (``ns`` = ``MINUTECAST_NAMESPACE``; ``{T}`` = ticker):

=============================  =======  =============================================================
key                            type     content
=============================  =======  =============================================================
``ns:win:{T}``                 hash     field = bar minute (epoch seconds), value = ``"o h l c v p"``
                                        (open high low close volume published-at); last
                                        ``window.RETAIN`` minutes; TTL ``window_ttl_s``
``ns:winmeta:{T}``             hash     ``max`` newest minute, ``ready`` last minute announced ready,
                                        ``sum`` its checksum; same TTL as ``ns:win:{T}``
``ns:fc:{T}``                  hash     the latest forecast (Forecast fields); only moves forward
``ns:fchist:{T}``              hash     field = as-of minute, value = Forecast JSON; bounded
``ns:stats``                   hash     counters (bars in, late, dead-lettered, ...); the window store
                                        writes ``stream_bars``, ``stream_new``, ``stream_dup``,
                                        ``stream_late``, ``stream_conflict``, ``stream_roundtrips``,
                                        ``stream_messages`` (a rebuild: the same as ``rebuild_*``)
``ns:producer:wm:{T}``         string   the newest minute the yfinance producer published
=============================  =======  =============================================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    namespace: str = "minutecast"

    def window(self, ticker: str) -> str:
        return f"{self.namespace}:win:{ticker}"

    def window_meta(self, ticker: str) -> str:
        return f"{self.namespace}:winmeta:{ticker}"

    def forecast(self, ticker: str) -> str:
        return f"{self.namespace}:fc:{ticker}"

    def forecast_history(self, ticker: str) -> str:
        return f"{self.namespace}:fchist:{ticker}"

    def stats(self) -> str:
        return f"{self.namespace}:stats"

    def producer_watermark(self, ticker: str) -> str:
        return f"{self.namespace}:producer:wm:{ticker}"

    def namespace_pattern(self) -> str:
        """Every key of this namespace (tests and clean-up delete exactly these, never FLUSHDB)."""
        return f"{self.namespace}:*"

    def window_pattern(self) -> str:
        return f"{self.namespace}:win:*"

    def forecast_pattern(self) -> str:
        return f"{self.namespace}:fc:*"
