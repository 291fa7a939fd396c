"""Redis keys: the one place every service builds them.

Layout (``ns`` = ``MINUTECAST_NAMESPACE``; ``{T}`` = ticker):

=============================  =======  =============================================================
key                            type     content
=============================  =======  =============================================================
``ns:w4:{T}``                  string   the newest ``window.RETAIN`` bars (a count: they may span an
                                        overnight gap or a weekend) in the binary layout v4 of
                                        :mod:`streams.window_store` (header with the last window
                                        announced and the newest bar's publish time, packed float64
                                        rows, slot counters); TTL ``window_ttl_s`` (5 days: outlasts a
                                        long weekend). v3's ``ns:w3:{T}`` values and v2's ``ns:win:{T}``
                                        / ``ns:winmeta:{T}`` text hashes are never read: a rebuild
                                        replaces them
``ns:fc3:{T}``                 string   the ticker's forecasts (layout v3, ``minutecast.forecast_store``: its only
                                        reader and writer): one 85-byte record per as-of minute (the first
                                        forecast, or its correction from a re-announced window), sorted, the
                                        newest ``history_len`` (120); the last record is the latest forecast;
                                        TTL ``forecast_ttl_s``
``ns:fc3m:{T}``                hash     the same ticker's calibration (``log_s80``, ``log_s90``, ``through`` =
                                        newest target minute applied; only moves forward), string table
                                        (``s:<id>``, ``i:<strings>``), and ``j:<as-of>`` = the Forecast JSON of a
                                        record with no exact compact form; same TTL
``ns:fc2:{T}``                 string   layout v2 (102-byte records; with ``ns:fc2m:{T}``) and layout v1
``ns:fc:{T}``                  hash     (``ns:fc:{T}`` latest, ``ns:fchist:{T}`` history, ``ns:calib:{T}``
                                        calibration): read only by :mod:`minutecast.forecast_migrate`,
                                        which converts them to v3 and deletes them when the Spark job
                                        starts
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
        return f"{self.namespace}:w4:{ticker}"  # 4: the value layout's version (streams.window_store)

    def forecast(self, ticker: str) -> str:
        """The ticker's forecast records (exists iff it has a forecast)."""
        return f"{self.namespace}:fc3:{ticker}"

    def forecast_meta(self, ticker: str) -> str:
        return f"{self.namespace}:fc3m:{ticker}"

    def forecast_v2(self, ticker: str) -> str:
        """Layout v2 (read only by the migration): records, meta hash."""
        return f"{self.namespace}:fc2:{ticker}"

    def forecast_meta_v2(self, ticker: str) -> str:
        return f"{self.namespace}:fc2m:{ticker}"

    def forecast_v1(self, ticker: str) -> str:
        """Layout v1 (read only by the migration): latest hash, history hash, calibration hash."""
        return f"{self.namespace}:fc:{ticker}"

    def forecast_history_v1(self, ticker: str) -> str:
        return f"{self.namespace}:fchist:{ticker}"

    def calibration_v1(self, ticker: str) -> str:
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
        return f"{self.namespace}:w4:*"

    def legacy_window_patterns(self) -> tuple[str, ...]:
        """Keys of window layouts before v4 (v3 values, v2 text hashes), found and dropped on upgrade."""
        return f"{self.namespace}:w3:*", f"{self.namespace}:win:*", f"{self.namespace}:winmeta:*"

    def forecast_pattern(self) -> str:
        return f"{self.namespace}:fc3:*"

    def forecast_v2_pattern(self) -> str:
        return f"{self.namespace}:fc2:*"

    def forecast_v1_patterns(self) -> tuple[str, ...]:
        return (f"{self.namespace}:fc:*", f"{self.namespace}:fchist:*", f"{self.namespace}:calib:*")
