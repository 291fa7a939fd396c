"""Several producer processes, each publishing its share of the tickers (``--processes N``).

Tickers are dealt round-robin (:func:`producers.universe.shard`), so a ticker is always in exactly one
process and its bars stay in order. The yfinance throttle's state is created here, before the fork,
so all processes share it. SIGINT/SIGTERM to the parent are forwarded to the children, which flush and
report their counts; the parent adds them up.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import signal
from dataclasses import asdict
from typing import Any

from minutecast.errors import MinutecastError
from producers.publisher import Stats
from producers.runner import ProduceOptions, run_shard
from producers.throttle import Throttle
from producers.universe import shard


def _child(options: ProduceOptions, tickers: list[str], indices: list[int], limit: int | None,
           throttle_state: tuple[Any, Any], out: Any) -> None:
    try:
        stats = run_shard(options, tickers, indices, limit, throttle_state)
        out.put((os.getpid(), asdict(stats), None))
    except MinutecastError as exc:
        out.put((os.getpid(), None, str(exc)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which exits non-zero
        out.put((os.getpid(), None, f"{type(exc).__name__}: {exc}"))


def run_sharded(options: ProduceOptions, tickers: list[str], n: int) -> tuple[Stats, list[str]]:
    ctx = mp.get_context("fork")  # children inherit the shared throttle values and loaded modules
    out = ctx.Queue()
    throttle_state = Throttle().shared()
    n = max(1, min(n, len(tickers))) if tickers else 1
    limit = math.ceil(options.limit / n) if options.limit else None
    all_idx = list(range(len(tickers)))
    procs = [ctx.Process(target=_child, args=(options, shard(tickers, k, n), shard(all_idx, k, n), limit,  # type: ignore[arg-type]
                                              throttle_state, out), name=f"producer-{k}")
             for k in range(n)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    total = Stats()
    errors: list[str] = []
    got = 0
    try:
        while got < n:
            try:
                pid, stats, err = out.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and out.empty():
                    break
                continue
            got += 1
            if err:
                errors.append(f"process {pid}: {err}")
            else:
                total.add(stats)
        for p in procs:
            p.join()
        missing = n - got
        if missing:
            errors.append(f"{missing} producer process(es) died without reporting")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return total, errors
