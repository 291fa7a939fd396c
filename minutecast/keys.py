"""Redis keys: the one place every service builds them.

Layout (``ns`` = ``MINUTECAST_NAMESPACE``; ``{T}`` = ticker):

=============================  =======  =============================================================
key                            type     content
=============================  =======  =============================================================
``ns:w3:{T}``                  string   the newest ``window.RETAIN`` bars (a count: they may span an
                                        overnight gap or a weekend) in the binary layout v3 of
                                        :mod:`streams.window_store` (header with the last window
                                        announced, packed float64 rows, publish times, slot
                                        counters); TTL ``window_ttl_s`` (5 days: outlasts a long
                                        weekend). v2's ``ns:win:{T}`` / ``ns:winmeta:{T}`` text
                                        hashes are never read: a rebuild replaces them
``ns:fc:{T}``                  hash     the latest forecast: ``json`` = Forecast JSON, plus copies of its
                                        ``as_of``, ``predicted_close`` and ``forecast_at`` (the JSON's own
                                        number text); moves forward in as_of, or to a correction of its own as_of
``ns:fchist:{T}``              hash     field = as-of minute, value = Forecast JSON (the first, or its
                                        correction from a re-announced window); bounded
``ns:calib:{T}``               hash     the ticker's online interval calibration
                                        (``intervals.OnlineScale.to_dict()``: ``log_s80``, ``log_s90``,
                                        ``through`` = newest target minute applied); only moves forward
``ns:stats``                   hash     counters (bars in, late, dead-lettered, ...); the window store
                                        writes ``stream_bars``, ``stream_new``, ``stream_dup``,
                                        ``stream_late``, ``stream_conflict``, ``stream_roundtrips``,
                                        ``stream_messages`` (a rebuild: the same as ``rebuild_*``);
                                        the worker also writes ``stream_stalled_since``,
                                        ``stream_stall_reason``, ``stream_fatal``
``ns:stream:applied``          hash     field = bar-topic partition, value = the newest offset whose
                                        record the window store has applied (written in the same Lua call
                                        as the bars): state found behind it is repaired from Kafka
``ns:infer:progress``           hash     the Spark job's newest finished micro-batch: ``batch_id``,
                                        ``at`` (epoch s), ``ready_offsets`` (JSON {partition: next
                                        offset} of the window-ready topic), ``rows``, ``duration_ms``,
                                        ``redis_run_id`` (the Redis it was written to: another one
                                        means Redis restarted and forecasts are restored from Kafka)
``ns:producer:wm:{T}``         string   the minute up to which every fetched bar was delivered (replay: the
                                        newest delivered minute); never past a bar whose delivery failed
``ns:producer:pub:{T}``        zset     minutes the yfinance producer published inside its trailing
                                        re-fetch window (score = member = epoch s); trimmed to the window,
                                        expires after 30 days
``ns:producer:replay``         hash     a live replay's timeline: ``base`` shift, ``fingerprint``, ``phase``,
                                        ``copy``, ``speed``, ``market_minute``, ``updated_at``
=============================  =======  =============================================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    namespace: str = "minutecast"

    def window(self, ticker: str) -> str:
        return f"{self.namespace}:w3:{ticker}"  # 3: the value layout's version (streams.window_store)

    def forecast(self, ticker: str) -> str:
        return f"{self.namespace}:fc:{ticker}"

    def forecast_history(self, ticker: str) -> str:
        return f"{self.namespace}:fchist:{ticker}"

    def calibration(self, ticker: str) -> str:
        return f"{self.namespace}:calib:{ticker}"

    def stats(self) -> str:
        return f"{self.namespace}:stats"

    def stream_applied(self) -> str:
        return f"{self.namespace}:stream:applied"

    def infer_progress(self) -> str:
        return f"{self.namespace}:infer:progress"

    def producer_watermark(self, ticker: str) -> str:
        return f"{self.namespace}:producer:wm:{ticker}"

    def producer_published(self, ticker: str) -> str:
        return f"{self.namespace}:producer:pub:{ticker}"

    def replay_state(self) -> str:
        return f"{self.namespace}:producer:replay"

    def namespace_pattern(self) -> str:
        """Every key of this namespace (tests and clean-up delete exactly these, never FLUSHDB)."""
        return f"{self.namespace}:*"

    def window_pattern(self) -> str:
        return f"{self.namespace}:w3:*"

    def legacy_window_patterns(self) -> tuple[str, ...]:
        """Keys of window layouts before v3 (text hashes), found and dropped on upgrade."""
        return f"{self.namespace}:win:*", f"{self.namespace}:winmeta:*"

    def forecast_pattern(self) -> str:
        return f"{self.namespace}:fc:*"
