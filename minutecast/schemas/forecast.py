"""Forecasts (v1 and v2) as published on the forecasts topic and kept in Redis, with their decoder."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from typing import Any

from minutecast import decoding
from minutecast.decoding import MAX_TIME, MIN_TIME, is_ticker, iso_minute
from minutecast.errors import Rejected
from minutecast.schemas.common import (
    FORECAST_VERSION,
    INTERVAL_KINDS,
    MAX_EVENT_BYTES,
    QUANTILE_FIELDS,
)

_FORECAST_V1 = ("ticker", "as_of", "horizon_min", "predicted_close", "last_close", "model_version", "model_kind",
                "window_ready_at", "forecast_at")  # required in every version (published_at may be null)
_FORECAST_V2 = (*QUANTILE_FIELDS, "sigma", "interval_kind", "log_s80", "log_s90")  # required in v2
# window_checksum is optional in v2 (left out, never null, when unknown) and a hex digest when present: the
# write script (streams/partition.py) matches it as one.
_CHECKSUM_RE = re.compile(r"[0-9a-f]{1,64}")  # minutecast.window.checksum: 16 lowercase hex digits today


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast of ``ticker``'s close ``horizon_min`` minutes after the as-of minute.

    v2 (additive over v1): ``q05 .. q95`` are prices of the close at the target minute at the levels of
    :data:`QUANTILES` (80% interval q10..q90, 90% interval q05..q95) and ``predicted_close`` is the median
    ``q50``; ``sigma`` is the std of the 5-minute log move implied by the 80% interval,
    ``(log q90 - log q10) / (2 z_0.9)``; ``interval_kind`` is ``"lstm"`` or ``"baseline"``; ``log_s80`` /
    ``log_s90`` the ticker's online-calibration scales (:class:`minutecast.intervals.OnlineScale`) that
    were applied. A v1 forecast (decoded from an old message) has these None; :meth:`to_dict` writes v1
    for it and v2 otherwise.

    ``window_checksum`` (optional in v2, additive): :func:`minutecast.window.checksum` of the window the
    forecast was made from. A forecast re-made from a window a late bar changed (a *correction*, see
    ``streams/partition.py``) carries the new one. Absent in forecasts made before it existed (None here);
    :meth:`to_dict` then leaves it out, so their JSON keeps its exact bytes.
    """

    ticker: str
    as_of: int  # epoch seconds of the last bar in the window (minute t)
    horizon_min: int  # minutes ahead: the forecast is for the close of minute t + horizon
    predicted_close: float  # v2: = q50
    last_close: float  # close at t (what persistence would forecast)
    model_version: str  # registry version, or "persistence" before any model is promoted
    model_kind: str  # "lstm" or "persistence"
    published_at: float | None  # bar publish time at the producer (epoch s)
    window_ready_at: float  # Faust made the window durable (epoch s)
    forecast_at: float  # model output ready (epoch s)
    q05: float | None = None  # prices ($) of the close at t + horizon
    q10: float | None = None
    q50: float | None = None
    q90: float | None = None
    q95: float | None = None
    sigma: float | None = None  # std of log(close_{t+h} / close_t) implied by the 80% interval (log units)
    interval_kind: str | None = None  # one of INTERVAL_KINDS
    log_s80: float | None = None  # online-calibration log scales applied to the 80% / 90% intervals
    log_s90: float | None = None
    window_checksum: str | None = None  # hex digest of the window's own bars (None: not recorded)

    @property
    def target_minute(self) -> int:
        return self.as_of + 60 * self.horizon_min

    @property
    def version(self) -> int:
        return 1 if self.q50 is None else FORECAST_VERSION

    @property
    def quantiles(self) -> tuple[float, ...] | None:
        """(q05, q10, q50, q90, q95) prices, or None for a v1 forecast."""
        q = tuple(getattr(self, f) for f in QUANTILE_FIELDS)
        return None if any(x is None for x in q) else q

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar: a plain read gives asdict()'s dict without its recursive deep copy
        # (a sixth of the Spark partition's time at 503 tickers).
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.window_checksum is None or self.version == 1:
            d.pop("window_checksum")  # left out rather than null: a forecast without one keeps its v2 bytes
        if self.version == 1:
            for f in _FORECAST_V2:
                d.pop(f)
        return {"v": self.version, **d, "as_of_time": iso_minute(self.as_of),
                "target_time": iso_minute(self.target_minute)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: Any) -> Forecast:
        """v1 or v2 (extra fields such as ``as_of_time`` are ignored). Raises only :class:`Rejected`
        with a reason of :data:`REASONS`; v2 is validated strictly, v1 leniently as v1 readers always did."""
        d = decoding.obj(d, "forecast")
        v = d.get("v", 0)
        if type(v) is str and v in ("1", "2"):  # v1-era hashes held numbers as text
            d = d | {"v": int(v)}
        v = decoding.header(d, "forecast", {1: _FORECAST_V1, FORECAST_VERSION: _FORECAST_V1 + _FORECAST_V2})
        if v == 1:
            return cls._from_v1(d)
        bad = [n for n in ("ticker", "model_version", "model_kind", "interval_kind") if not isinstance(d[n], str)]
        if bad:
            raise Rejected("wrong_type", f"{','.join(bad)}: wrong type")
        if not is_ticker(d["ticker"]):
            raise Rejected("bad_ticker", f"{d['ticker'][:20]!r} is not a ticker")
        as_of = decoding.plausible_minute(d["as_of"], "as_of")
        horizon = decoding.integer(d["horizon_min"], "horizon_min")
        if not 1 <= horizon <= 1440:
            raise Rejected("out_of_range", f"horizon_min {horizon} is not within [1, 1440]")
        for n in ("model_version", "model_kind"):
            decoding.text(d[n], n, 64)
        pub = d.get("published_at")
        pub = None if pub is None else decoding.stamp(pub, "published_at")
        nums = {n: decoding.number(d[n], n) for n in ("predicted_close", "last_close", *QUANTILE_FIELDS, "sigma",
                                                      "log_s80", "log_s90")}
        stamps = {n: decoding.stamp(d[n], n) for n in ("window_ready_at", "forecast_at")}
        q = [nums[f] for f in QUANTILE_FIELDS]
        if min(q) <= 0 or nums["last_close"] <= 0:
            raise Rejected("non_positive_price", f"quantiles {q}, last_close {nums['last_close']}")
        if any(b < a for a, b in zip(q, q[1:], strict=False)) or nums["sigma"] < 0:
            raise Rejected("quantile_order", f"quantiles {q}, sigma {nums['sigma']}")
        if nums["predicted_close"] != nums["q50"]:
            raise Rejected("median_mismatch", f"predicted_close {nums['predicted_close']} != q50 {nums['q50']}")
        if d["interval_kind"] not in INTERVAL_KINDS:
            raise Rejected("unknown_interval_kind", f"{d['interval_kind'][:20]!r}")
        cs: str | None = None
        if "window_checksum" in d:  # optional, but strict when there: the Lua script matches it as hex
            cs = decoding.text(d["window_checksum"], "window_checksum", 64)
            if not _CHECKSUM_RE.fullmatch(cs):
                raise Rejected("bad_text", f"window_checksum {cs[:20]!r} is not a lowercase hex digest")
        return cls(ticker=d["ticker"], as_of=as_of, horizon_min=horizon,
                   predicted_close=nums["predicted_close"], last_close=nums["last_close"],
                   model_version=d["model_version"], model_kind=d["model_kind"], published_at=pub,
                   window_ready_at=stamps["window_ready_at"], forecast_at=stamps["forecast_at"],
                   q05=q[0], q10=q[1], q50=q[2], q90=q[3], q95=q[4], sigma=nums["sigma"],
                   interval_kind=d["interval_kind"], log_s80=nums["log_s80"], log_s90=nums["log_s90"],
                   window_checksum=cs)

    @classmethod
    def _from_v1(cls, d: dict[str, Any]) -> Forecast:
        """Lenient as v1 readers always were (numbers as text; old latest hashes held "None" for null),
        but still only a value or :class:`Rejected`: finite numbers, a plausible as-of minute."""
        pub = d.get("published_at")
        try:
            strs = {n: str(d[n])[:64] for n in ("ticker", "model_version", "model_kind")}
            ints = {n: int(d[n]) for n in ("as_of", "horizon_min")}
            nums = {n: float(d[n]) for n in ("predicted_close", "last_close", "window_ready_at", "forecast_at")}
            nums["published_at"] = math.nan if pub in (None, "", "None") else float(pub)
        except (TypeError, ValueError, OverflowError) as exc:
            raise Rejected("wrong_type", f"v1 forecast field: {str(exc)[:80]}") from exc
        bad = [n for n, x in nums.items() if not math.isfinite(x) and not (n == "published_at" and pub in
                                                                          (None, "", "None"))]
        if bad:
            raise Rejected("non_finite", ",".join(bad))
        if not MIN_TIME <= ints["as_of"] <= MAX_TIME or not 0 < ints["horizon_min"] <= 1440:
            raise Rejected("out_of_range", f"as_of {ints['as_of']} / horizon_min {ints['horizon_min']}")
        return cls(ticker=strs["ticker"], as_of=ints["as_of"], horizon_min=ints["horizon_min"],
                   predicted_close=nums["predicted_close"], last_close=nums["last_close"],
                   model_version=strs["model_version"], model_kind=strs["model_kind"],
                   published_at=None if pub in (None, "", "None") else nums["published_at"],
                   window_ready_at=nums["window_ready_at"], forecast_at=nums["forecast_at"])

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Forecast:
        """Decode one forecast message; raises only :class:`Rejected`."""
        return cls.from_dict(decoding.loads(raw, MAX_EVENT_BYTES))
