"""Bars for tests, the worker's test-only drop switch, and the no-fault reference the fault tests compare with.

* :data:`OPEN`, :func:`make_bars`: synthetic 1-minute bars; :func:`replay_dir` writes bars where
  ``minutecast produce --source replay`` reads them, :func:`frame_bars` reads them back as the replay sends them;
* :func:`drop_env`: the environment that makes a Faust worker lose exactly one bar
  (:func:`streams.batch.drop_switch`);
* :class:`Run`: what a run of the worker left, counted per unique bar: bars applied (``<ns>:stats``
  ``stream_new``: a (ticker, minute) counts once, however often it was delivered), window-ready events
  deduplicated by (ticker, minute, checksum), and the windows (OHLCV per stored minute);
* :func:`apply_in_process`: the worker's own batch code (:class:`streams.batch.BatchProcessor`) on a list of
  bars in a scratch namespace; one batch per minute of in-order input is the *no-fault reference run*
  (it announces a window at every minute, so any run of the same input announces a subset of its events);
* :func:`check_run`: the check every fault test applies: every unique bar sent applied, every window-ready
  event one of the reference's, the newest event per ticker the reference's, the windows the reference's.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from minutecast.keys import Keys
from minutecast.schemas import Bar, WindowReady
from producers import replay
from streams.batch import DROP_SWITCH, DROP_SWITCH_GUARD, BatchProcessor, Message
from streams.window_store import WindowStore, decode_value

# 2025-10-01 09:30 New York (13:30 UTC): the regular session's open.
OPEN = int(datetime(2025, 10, 1, 13, 30, tzinfo=UTC).timestamp())

Event = tuple[str, int, str]  # a window-ready event as consumers dedupe it: (ticker, minute, checksum)


def make_bars(ticker: str, start: int, n: int, skip: set[int] | frozenset[int] = frozenset(),
              seed: int = 0, published_at: float | None = 1.75e9) -> list[Bar]:
    """``n`` consecutive 1-minute bars from ``start`` (epoch s), minus the offsets in ``skip``.
    Prices are awkward floats on purpose (repr round-trip)."""
    rng = random.Random(f"{ticker}{seed}")
    out = []
    price = 100.0 + rng.random() * 50
    for i in range(n):
        price *= 1 + (rng.random() - 0.5) / 500
        if i in skip:
            continue
        o, c = price, price * (1 + (rng.random() - 0.5) / 1000)
        out.append(Bar(ticker, start + 60 * i, o, max(o, c) * 1.0001, min(o, c) * 0.9999, c,
                       float(rng.randint(100, 90_000)), "test", published_at))
    return out


def interleaved(tickers: Sequence[str], n_minutes: int, start: int = OPEN) -> list[Bar]:
    """:func:`make_bars` of every ticker, minute by minute as a live feed sends them."""
    per = [make_bars(t, start, n_minutes) for t in tickers]
    return sorted((b for bars in per for b in bars), key=lambda b: (b.minute, b.ticker))


def replay_dir(path: Path, bars: Iterable[Bar]) -> Path:
    """Write ``bars`` as one long-form CSV (ticker, minute, OHLCV) under ``path`` for the replay producer."""
    path.mkdir(parents=True, exist_ok=True)
    lines = ["ticker,minute,open,high,low,close,volume"]
    lines += [f"{b.ticker},{b.minute},{b.open!r},{b.high!r},{b.low!r},{b.close!r},{b.volume!r}" for b in bars]
    (path / "bars.csv").write_text("\n".join(lines) + "\n")
    return path


def frame_bars(path: Path) -> list[Bar]:
    """The bars a replay of ``path`` sends, in its order (values as the replay reads them)."""
    frame = replay.load(path)
    return [Bar(str(r.ticker), int(r.minute), float(r.open), float(r.high), float(r.low), float(r.close),
                float(r.volume), "replay", None) for r in frame.itertuples(index=False)]


def drop_env(bar: Bar) -> dict[str, str]:
    """Environment for a worker that loses ``bar`` (every copy of it): the test-only switch and its guard."""
    return {DROP_SWITCH: f"{bar.ticker}:{bar.minute}", DROP_SWITCH_GUARD: "1"}


def pick(bars: Sequence[Bar], ticker: str, index: int) -> Bar:
    """The ``index``-th bar of ``ticker`` (negative: from the end), e.g. the bar a drop variant loses."""
    return [b for b in bars if b.ticker == ticker][index]


def unique(bars: Iterable[Bar]) -> int:
    """How many distinct (ticker, minute) bars ``bars`` hold."""
    return len({(b.ticker, b.minute) for b in bars})


@dataclass
class Run:
    """What one run of the worker (or of :func:`apply_in_process`) left."""

    applied: int  # unique bars applied (the store's ``<prefix>new`` counter)
    events: set[Event]  # window-ready events, deduplicated by (ticker, minute, checksum)
    windows: dict[str, dict[int, tuple[float, ...]]]  # ticker -> minute -> OHLCV of every stored bar


def windows(client: Any, namespace: str) -> dict[str, dict[int, tuple[float, ...]]]:
    """Every ticker's stored bars in ``namespace`` as minute -> OHLCV (``published_at`` left out: it is the
    producer's clock, so it differs between a run and its reference)."""
    keys = Keys(namespace)
    out: dict[str, dict[int, tuple[float, ...]]] = {}
    for k in client.scan_iter(match=keys.window_pattern(), count=1000):
        ticker = k.decode().rsplit(":", 1)[1]
        out[ticker] = {int(r[0]): tuple(float(x) for x in r[1:6]) for r in decode_value(client.get(k))}
    return out


def applied(client: Any, namespace: str, prefix: str = "stream_") -> int:
    """Unique bars the window store applied in ``namespace`` (``rebuild_``: by a rebuild). The worker's count
    (``stream_``) includes what its repairs re-applied after Redis lost writes (``repair_new``)."""
    stats = Keys(namespace).stats()
    extra = int(client.hget(stats, "repair_new") or 0) if prefix == "stream_" else 0
    return int(client.hget(stats, f"{prefix}new") or 0) + extra


def events_of(records: Iterable[tuple[bytes | None, bytes]]) -> set[Event]:
    """Window-ready events from the ready topic's records, deduplicated by (ticker, minute, checksum)."""
    out: set[Event] = set()
    for _, value in records:
        e = WindowReady.from_json(value)
        out.add((e.ticker, e.minute, e.checksum))
    return out


def observe(client: Any, namespace: str, ready_records: Iterable[tuple[bytes | None, bytes]],
            prefix: str = "stream_") -> Run:
    """The :class:`Run` a worker left in ``namespace`` (and on its ready topic)."""
    return Run(applied(client, namespace, prefix), events_of(ready_records), windows(client, namespace))


def apply_in_process(client: Any, bars: Sequence[Bar], *, batch: int | None = None,
                     drop: Bar | None = None) -> Run:
    """Feed ``bars`` (in this order) to the worker's :class:`BatchProcessor` in a scratch namespace: one batch per
    minute (``batch`` None: the input must be in minute order), else ``batch`` records at a time; ``drop``:
    the test-only switch on, losing that bar. Returns the :class:`Run`; the scratch keys are deleted."""
    ns = f"ref{uuid.uuid4().hex[:10]}"
    proc = BatchProcessor(WindowStore(client, Keys(ns), 3600),
                          drop=None if drop is None else (drop.ticker, drop.minute))
    msgs = [Message(b.ticker.encode(), b.to_json(), "ref", 0, i) for i, b in enumerate(bars)]
    chunks: list[list[Message]] = []
    if batch is None:
        for b, m in zip(bars, msgs, strict=True):
            if chunks and bars[chunks[-1][-1].offset].minute == b.minute:
                chunks[-1].append(m)
            else:
                assert not chunks or bars[chunks[-1][-1].offset].minute < b.minute, "input out of minute order"
                chunks.append([m])
    else:
        chunks = [msgs[i:i + batch] for i in range(0, len(msgs), batch)]
    events: set[Event] = set()
    try:
        for chunk in chunks:
            out = proc.process(chunk)
            events |= {(e.ticker, e.minute, e.checksum) for e in out.ready}
            proc.commit_announced(out)
        return Run(applied(client, ns), events, windows(client, ns))
    finally:
        keys = list(client.scan_iter(match=Keys(ns).namespace_pattern(), count=1000))
        if keys:
            client.delete(*keys)


def newest(events: Iterable[Event]) -> dict[str, tuple[int, str]]:
    """Per ticker, the newest announced (minute, checksum)."""
    out: dict[str, tuple[int, str]] = {}
    for t, m, c in events:
        out[t] = max(out.get(t, (m, c)), (m, c))
    return out


def check_run(run: Run, reference: Run, sent: int, *, events: bool = True) -> None:
    """The fault tests' check: ``run`` lost no bar of the ``sent`` unique bars and matches the no-fault
    ``reference`` (see the module docstring). ``events`` False: a run that announces nothing (a rebuild)."""
    assert reference.applied == sent, f"the reference applied {reference.applied} of {sent} bars"
    assert run.applied == sent, f"{sent - run.applied} of the {sent} unique bars sent were not applied"
    if events:
        wrong = sorted(run.events - reference.events)
        assert not wrong, f"{len(wrong)} window-ready events not in the no-fault run, first {wrong[:3]}"
        assert newest(run.events) == newest(reference.events), "a ticker's newest window differs from the no-fault run"
    assert run.windows.keys() == reference.windows.keys(), "tickers differ from the no-fault run"
    for t, ref in reference.windows.items():
        lost = sorted(set(ref) - set(run.windows[t]))
        assert not lost, f"{t}: {len(lost)} stored minutes missing, first {lost[:3]}"
        assert run.windows[t] == ref, f"{t}: stored windows differ from the no-fault run"
