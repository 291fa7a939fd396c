"""Streams: the Faust app keeping each ticker's 60-minute window in Redis (and the Spark job)."""
