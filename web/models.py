"""Response shapes for the OpenAPI document (``/docs``). Documentation only: the routes return the stored
``Forecast`` JSON as is (see :mod:`minutecast.schemas`), so these are not a second definition of it, and
responses are not re-validated against them (that would cost more than the Redis read)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ForecastOut(BaseModel):
    """A ``Forecast`` (minutecast.schemas) as stored, v1 or v2, plus derived fields."""

    model_config = ConfigDict(extra="allow")
    ticker: str = Field(examples=["AAPL"])
    as_of: int = Field(description="epoch s of minute t (the last bar of the window)")
    predicted_close: float
    last_close: float
    model_version: str
    move_bp: float = Field(description="predicted move from last_close, basis points")
    age_s: float = Field(description="seconds since the forecast was made")
    interval80: list[float] | None = Field(None, description="[q10, q90] when the forecast carries quantiles (v2)")
    interval90: list[float] | None = Field(None, description="[q05, q95] when present (v2)")


class ForecastList(BaseModel):
    now: float
    count: int
    forecasts: list[ForecastOut]


class ChartPoint(BaseModel):
    model_config = ConfigDict(extra="allow")
    t: int = Field(description="minute (epoch s)")
    actual: float | None = Field(None, description="realised close of that minute")
    forecast: float | None = Field(None, description="forecast for this minute, made horizon minutes earlier")
    hit: bool | None = Field(None, description="inside the 80% interval (v2) or direction right (v1)")
    rule: str | None = Field(None, description="interval80 or direction")


class Chart(BaseModel):
    points: list[ChartPoint]
    pending: list[ChartPoint]
    hits: int
    misses: int


class TickerForecasts(BaseModel):
    ticker: str
    latest: ForecastOut
    history: list[ForecastOut] | None = None
    chart: Chart | None = None


class Status(BaseModel):
    """`minutecast status --json`, plus the replay state, the report links and the web server's own view."""

    model_config = ConfigDict(extra="allow")
    namespace: str
    services: dict[str, dict[str, Any]]
    bars_per_s: float | None = None
    consumer_lag: dict[str, int] | None = None
    dead_letters: dict[str, Any] | None = None
    model_version: str | None = None
    report: dict[str, Any] | None = None
    replay: dict[str, str] | None = None
    # {service: {dependency: epoch s}}: services waiting for Kafka or Redis while it is away (an outage)
    waiting: dict[str, dict[str, float]] | None = None


class Error(BaseModel):
    detail: str
