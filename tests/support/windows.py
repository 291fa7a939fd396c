"""The Redis window state of a namespace, and the state a clean in-order delivery gives (to compare)."""

from __future__ import annotations

from typing import Any

import numpy as np

from minutecast.keys import Keys
from minutecast.schemas import Bar
from streams.window_store import HEADER, WindowStore

Snapshot = dict[str, bytes]


def state(value: bytes) -> bytes:
    """A stored window value as the state it stands for: the bar count, the newest row's publish time, rows
    and slot counters counted from the first row. Left out: the header's record of the window announced last
    (a worker announces, a reference applying bars does not) and the counters' base, which depends on how
    many slots were trimmed before (streams.window_lua: it does not matter)."""
    n = HEADER.unpack_from(value)[1]
    cums = np.frombuffer(value, "<f8", n, HEADER.size + 48 * n)
    return value[:8] + value[32:40] + value[HEADER.size:HEADER.size + 48 * n] + (cums - cums[:1]).tobytes()


def snapshot(client: Any, namespace: str) -> Snapshot:
    """Every ticker's stored window :func:`state` in the namespace."""
    keys = Keys(namespace)
    return {k.decode().rsplit(":", 1)[1]: state(client.get(k))
            for k in client.scan_iter(match=keys.window_pattern(), count=1000)}


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
