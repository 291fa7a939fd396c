"""The Redis window state of a namespace, and the state a clean in-order delivery gives (to compare)."""

from __future__ import annotations

from typing import Any

from minutecast.keys import Keys
from minutecast.schemas import Bar
from streams.window_store import WindowStore

Snapshot = dict[str, tuple[dict[bytes, bytes], bytes | None]]


def snapshot(client: Any, namespace: str) -> Snapshot:
    """Every ticker's window hash and newest minute in the namespace."""
    keys = Keys(namespace)
    out = {}
    for k in client.scan_iter(match=keys.window_pattern(), count=1000):
        ticker = k.decode().rsplit(":", 1)[1]
        out[ticker] = (client.hgetall(k), client.hget(keys.window_meta(ticker), "max"))
    return out


def reference(client: Any, namespace: str, bars: list[Bar]) -> Snapshot:
    """The windows a clean in-order application of ``bars`` gives (computed in a scratch namespace)."""
    ns = f"{namespace}ref"
    try:
        WindowStore(client, Keys(ns), 3600).apply(sorted(bars, key=lambda b: (b.ticker, b.minute)))
        return snapshot(client, ns)
    finally:
        keys = list(client.scan_iter(match=Keys(ns).namespace_pattern()))
        if keys:
            client.delete(*keys)
