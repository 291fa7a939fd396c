"""Schema versions, limits and the rejection reason codes every decoder of :mod:`minutecast.schemas` shares."""

from __future__ import annotations

BAR_VERSION = 1
FORECAST_VERSION = 2  # v2 adds quantiles, sigma, interval_kind and the online scales (additive)
READY_VERSION = 1
DEADLETTER_VERSION = 1

# Quantile levels of the close at t + HORIZON that v2 forecasts carry (the 80% interval is q10..q90, the 90%
# interval q05..q95, q50 the point forecast) and their field names on the topic and in Redis.
QUANTILES = (0.05, 0.10, 0.50, 0.90, 0.95)
QUANTILE_FIELDS = ("q05", "q10", "q50", "q90", "q95")

MAX_PAYLOAD_BYTES = 4096  # a bar is ~200 bytes; anything this big is not a bar
MAX_EVENT_BYTES = 65_536  # window-ready events, forecasts and dead letters (a dead letter is < ~16 kB)
MAX_PRICE = 10_000_000.0  # dollars; above this a price is a unit or parsing error
MAX_VOLUME = 1e11  # shares in one minute; more is a unit error
DL_PAYLOAD_BYTES = 2048  # a dead letter keeps this much of the rejected payload
DL_KEY_CHARS = 64  # ... and this much of its key

REASONS = (
    "payload_too_large",
    "not_utf8",
    "not_json",
    "too_deep",  # JSON nested deeper than decoding.MAX_DEPTH
    "not_object",
    "schema_version",
    "missing_field",
    "unknown_field",
    "wrong_type",
    "number_too_long",  # an integer beyond +-2**53 (e.g. 400 digits: would overflow a float)
    "bad_ticker",
    "unknown_ticker",  # a ticker outside the allowlist (MINUTECAST_TICKER_ALLOWLIST, minutecast.universe)
    "bad_key",  # a bar record without a Kafka key, or whose key is not a ticker (keys must be the ticker)
    "key_mismatch",
    "bad_source",  # a bar's source is empty, over 64 characters, or holds control/bidi/zero-width characters
    "bad_text",  # the same for a forecast's model_version / model_kind (and a window_checksum not lowercase hex)
    "bad_timestamp",
    "bad_published_at",  # published_at not within [MIN_TIME, now + PUBLISHED_SLACK_S] (or after MAX_TIME)
    "not_minute_aligned",
    "future_timestamp",
    "too_old",
    "out_of_range",  # a forecast's horizon_min outside [1, 1440]
    "non_finite",
    "non_positive_price",
    "absurd_price",
    "high_below_low",
    "open_close_outside_range",
    "negative_volume",
    "absurd_volume",
    "conflicting_duplicate",
    "nan_row",
    "store_error",  # the window store's script refused this one bar (a Redis script error; see faust_app)
    "window_missing",  # inference: a window-ready event whose window is gone from Redis (and not superseded)
    "quantile_order",  # a forecast's quantiles decrease (q05 <= q10 <= q50 <= q90 <= q95 required), or sigma < 0
    "median_mismatch",  # a v2 forecast whose predicted_close is not its median q50
    "unknown_interval_kind",  # a v2 forecast's interval_kind is not one of INTERVAL_KINDS
)
# Where a v2 forecast's interval comes from: the promoted model's quantiles, or the calibrated window-vol
# baseline (persistence served before any model, or a model output that was non-finite or crossing).
INTERVAL_KINDS = ("lstm", "baseline")
