"""``minutecast serve``: the read-only HTTP API (FastAPI) and the live dashboard."""
