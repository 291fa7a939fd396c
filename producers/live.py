"""Replay as if live: recorded history fast, then the last sessions at a watchable pace, looping forward in time.

    minutecast produce --source replay --path ../shared/data/bars-1m --as-if-live            # 1 market minute/s
    minutecast produce --source replay --path ../shared/data/bars-1m --as-if-live --speed 600 --live-sessions 2

The recorded bars are split by New York session (calendar date, the window policy's unit):

* **warm-up**: every session but the last ``--live-sessions`` (default 1) is published as fast as possible,
  so windows, forecasts and the trainer's history exist within seconds;
* **live**: the last sessions follow at ``--speed`` x real time (default 60: one market minute per second),
  and then again and again, each copy shifted to the weekdays after the previous one, so
  time only moves forward and every copy brings new minutes: producer watermarks, the window store's
  first-value-wins and the forecasts' move-forward rule all hold as for a real feed.

The whole timeline is shifted by New York calendar days (a session stays one New York date and keeps its
wall-clock times across DST changes: 09:30 stays 09:30) so that the live part starts ``--lead-days``
(default 28) to 35 before now: the warm-up moves by whole weeks (every session keeps its weekday) and each
copy of the live part starts on the next weekdays. Bars are never in the future (the schema refuses bars past the
clock), so a pace above real time can only last while the replay is behind the clock: 60x, one session per
copy, spends those 20 to 25 weekdays in 2 to 3 hours; after that each minute is released when it has closed, as a
live feed does (the copy of today's session then plays in real time). Inside a live session only its
dense minutes are paced (from the first minute with bars of more than half the tickers to the last one, plus
the horizon: the regular session, in practice); the sparse pre- and post-market pass at full speed, so a
forecast appears about every second. Copies after the first are published with source ``replay-loop``
(training can tell the repeats from history).

State (base shift, phase, copy, newest market minute) lives in Redis (:meth:`minutecast.keys.Keys.replay_state`)
so a restarted replay continues on the same timeline after its per-ticker watermarks
(:class:`producers.watermark.Watermarks`), and ``minutecast run`` shows the phase on its summary line.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from minutecast.errors import ConfigError
from minutecast.keys import Keys
from minutecast.window import HORIZON, session_ids, shift_days
from producers.delivery import DeliveryFailed, deliver
from producers.replay import StopFlag
from producers.watermark import Watermarks

log = logging.getLogger(__name__)

DAY = 86400
# Source of the looped copies of the live part: they repeat a recorded session under new dates, so training
# leaves them out (they would put the same session in the training and the test dates).
LOOP_SOURCE = "replay-loop"
FAST_CHUNK = 5000  # bars per piece outside the paced minutes (flush + watermark after each)


@dataclass(frozen=True)
class LivePlan:
    """The recorded bars split for a live replay (all minutes unshifted)."""

    warm: pd.DataFrame  # every session but the last ``sessions``
    live: pd.DataFrame  # the last ``sessions``
    period_days: int  # calendar days one copy of the live part spans: copy k+1 is this much after copy k
    paced: tuple[tuple[int, int], ...]  # (first, last) minute spans of ``live`` played at pace
    fingerprint: str  # identifies the data and the split (a resumed replay must see the same)


def _paced_spans(live: pd.DataFrame, days: np.ndarray, dense: float = 0.5,
                 max_gap_min: int = 10) -> tuple[tuple[int, int], ...]:
    """Per session: the longest stretch of *dense* minutes (bars of more than ``dense`` of the tickers, no gap
    over ``max_gap_min`` minutes between two of them: the regular session, in practice; a busy 04:00 print
    alone is not), to its end plus the horizon (the realised closes of the last forecasts)."""
    spans = []
    n = live["ticker"].nunique()
    need = min(n, int(dense * n) + 1)
    counts = live.groupby(days)["minute"].value_counts()
    for day in np.unique(days):
        per_minute = counts.loc[day]
        busy = np.sort(per_minute[per_minute >= need].index.to_numpy(dtype="int64"))
        if not busy.size:
            continue
        cuts = np.flatnonzero(np.diff(busy) > 60 * max_gap_min) + 1
        runs = np.split(busy, cuts)
        run = max(runs, key=len)
        spans.append((int(run[0]), int(run[-1]) + 60 * HORIZON))
    return tuple(spans)


def plan(frame: pd.DataFrame, sessions: int = 1) -> LivePlan:
    """Split ``frame`` (event-time order) into warm-up and live parts; ``sessions`` >= 1."""
    if frame.empty:
        raise ConfigError("nothing to replay")
    days = session_ids(frame["minute"].to_numpy(dtype="int64"))
    uniq = np.unique(days)
    live_days = uniq[-max(1, sessions):]
    is_live = days >= live_days[0]
    warm, live = frame[~is_live], frame[is_live]
    period = int(live_days[-1] - live_days[0]) + 1
    # "ny": shifts count New York calendar days (a state from the UTC-seconds timeline is not resumed)
    fp = f"ny:{len(frame)}:{int(frame['minute'].min())}:{int(frame['minute'].max())}:{len(live_days)}"
    return LivePlan(warm, live, period, _paced_spans(live, days[is_live]), fp)


def _ny_date(epoch_s: float) -> np.datetime64:
    """The New York calendar date of an instant, as numpy's business-day functions take it."""
    return np.datetime64(int(session_ids(np.array([int(epoch_s)]))[0]), "D")


def base_days(p: LivePlan, now: float, lead_days: float) -> int:
    """The warm-up's shift in New York calendar days: a multiple of 7 (every session keeps its weekday) placing the
    live part's first minute at most ``lead_days`` (and less than ``lead_days`` + 7) before ``now``."""
    first = int(p.live["minute"].min())
    target = int(now - lead_days * DAY)
    days = 7 * math.floor((_ny_date(target) - _ny_date(first)) // np.timedelta64(7, "D"))
    while int(shift_days(np.array([first]), days)[0]) > target:  # same date, later wall clock: a week earlier
        days -= 7
    return days


def _copy_step(p: LivePlan) -> int:
    """Weekdays one copy of the live part takes: copy k+1 starts that many weekdays after copy k."""
    first = _ny_date(int(p.live["minute"].min()))
    return max(1, int(np.busday_count(first, first + np.timedelta64(p.period_days, "D"))))


def copy_days(p: LivePlan, base: int, k: int) -> int:
    """Shift (New York calendar days) of copy ``k``: copy 0 where the warm-up left off (``base``), each later copy
    on the following weekdays, so sessions stay on weekdays (a live part spanning a weekend keeps its own gap)."""
    first = _ny_date(int(p.live["minute"].min()))
    start = np.busday_offset(first + np.timedelta64(base, "D"), k * _copy_step(p), roll="forward")
    return int((start - first) // np.timedelta64(1, "D"))


def first_copy(p: LivePlan, base: int, now: float, lead_days: float, watermark: int | None) -> int:
    """The copy to play first: after the newest minute already delivered, and no earlier than where a replay
    started now would begin (a replay restarted days later jumps forward instead of replaying the gap)."""
    first, last = int(p.live["minute"].min()), int(p.live["minute"].max())
    day0 = _ny_date(first)
    fresh = base_days(p, now, lead_days)
    behind = int(np.busday_count(day0 + np.timedelta64(base, "D"), day0 + np.timedelta64(fresh, "D")))
    k = max(0, behind // _copy_step(p))
    if watermark is not None:
        while int(shift_days(np.array([last]), copy_days(p, base, k))[0]) <= watermark:
            k += 1
    return k


def pieces(frame: pd.DataFrame, spans: tuple[tuple[int, int], ...], days: int, speed: float,
           stop: StopFlag | None = None, clock: Callable[[], float] = time.monotonic,
           wall: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
           chunk: int = FAST_CHUNK) -> Iterator[pd.DataFrame]:
    """One copy of the live part, shifted ``days`` New York calendar days, as pieces to publish in order.

    Minutes inside ``spans`` (unshifted) come one minute per piece, each ``delta / speed`` seconds after the
    previous paced one (``speed`` <= 0: no pacing); the rest come in pieces of up to ``chunk`` bars at once.
    No minute is released before it has closed on the wall clock (``wall() >= shifted minute + 60``).
    """
    if frame.empty:
        return
    minutes = frame["minute"].to_numpy(dtype="int64")
    in_span = np.zeros(len(minutes), dtype=bool)
    for a, b in spans:
        in_span |= (minutes >= a) & (minutes <= b)
    cuts = np.flatnonzero(np.diff(minutes)) + 1
    starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [len(frame)]])
    moved = shift_days(minutes, days)
    shifted = frame.copy()
    shifted["minute"] = moved
    pending: list[tuple[int, int]] = []  # fast rows waiting to go out as one piece
    last_due: float | None = None
    last_minute = 0

    def flush_fast() -> Iterator[pd.DataFrame]:
        if pending:
            yield shifted.iloc[pending[0][0]:pending[-1][1]]
            pending.clear()

    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        m = int(minutes[a])
        closes_at = int(moved[a]) + 60
        paced = bool(in_span[a]) and speed > 0
        if not paced and closes_at <= wall():
            pending.append((a, b))
            if pending[-1][1] - pending[0][0] >= chunk:
                yield from flush_fast()
            last_due = None  # the next paced minute starts a new stretch
            continue
        yield from flush_fast()
        now = clock()
        due = now if last_due is None else last_due + (m - last_minute) / speed if paced else now
        while True:
            if stop is not None and stop.is_set():
                return
            wait = max(due - clock(), closes_at - wall())
            if wait <= 0:
                break
            sleep(min(wait, 0.5))
        last_due, last_minute = (max(due, now) if paced else None), m
        yield shifted.iloc[a:b]
        if stop is not None and stop.is_set():
            return
    yield from flush_fast()


class LiveState:
    """The replay's timeline in Redis (hash :meth:`Keys.replay_state`): ``base`` shift, ``fingerprint`` of the
    data, ``phase`` (warm-up / live), ``copy``, ``speed``, newest ``market_minute``, ``updated_at``."""

    def __init__(self, redis: Any, namespace: str) -> None:
        self.redis, self.key = redis, Keys(namespace).replay_state()

    def read(self) -> dict[str, str]:
        raw = self.redis.hgetall(self.key)
        return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in raw.items()}

    def write(self, **fields: object) -> None:
        self.redis.hset(self.key, mapping={k: str(v) for k, v in fields.items()} | {"updated_at": time.time()})


def run_live(pub: Any, frame: pd.DataFrame, redis: Any, *, sessions: int = 1, speed: float = 60.0,
             lead_days: float = 28.0, resume: bool = True, now: float | None = None) -> None:
    """Warm-up, then copies of the live part until ``pub.stop_requested`` (see the module doc)."""
    p = plan(frame, sessions)
    state = LiveState(redis, pub.s.namespace)
    now = time.time() if now is None else now
    old = state.read() if resume else {}
    same = old.get("fingerprint") == p.fingerprint and "base" in old
    base = int(old["base"]) if same else base_days(p, now, lead_days)  # New York calendar days
    tickers = frame["ticker"].unique().tolist()
    res = Watermarks(redis, pub.s.namespace, tickers, label="replay") if resume else None
    state.write(base=base, fingerprint=p.fingerprint, phase="warm-up", copy=-1, speed=speed,
                sessions=sessions, market_minute=old.get("market_minute", 0))

    def send(piece: pd.DataFrame, source: str) -> None:
        # Failed bars are re-sent before a watermark passes them; still failing -> DeliveryFailed (exit 1).
        if res is not None:
            res.send(pub, piece, source)
        elif not deliver(pub, piece, source).failed.empty:
            raise DeliveryFailed("bars still undelivered after every re-send")

    warm = p.warm.copy()
    warm["minute"] = shift_days(warm["minute"].to_numpy(dtype="int64"), base)
    if res is not None:
        warm = res.above(warm)
    log.info("live replay: warm-up %d bars (%d sessions kept live, %d paced spans), base shift %d days "
             "(New York dates, wall clock kept)", len(warm), sessions, len(p.paced), base)
    for a in range(0, len(warm), FAST_CHUNK):
        if pub.stop_requested.is_set():
            return
        send(warm.iloc[a:a + FAST_CHUNK], "replay")
    watermark = res.newest() if res is not None else None
    k = first_copy(p, base, time.time(), lead_days, watermark)
    while not pub.stop_requested.is_set():
        days = copy_days(p, base, k)
        state.write(phase="live", copy=k, shift_days=days)
        log.info("live replay: copy %d, market day %s, speed %s", k,
                 _ny_date(int(shift_days(p.live["minute"].to_numpy(dtype="int64")[:1], days)[0])), speed)
        source = "replay" if k == 0 else LOOP_SOURCE
        live = p.live
        if res is not None and res.watermarks:
            # Minutes already delivered (a restarted replay) are left out before pacing, not after: the first
            # new minute goes out at once instead of after one paced step per minute already played.
            live = live[res.above_mask(live["ticker"], shift_days(live["minute"].to_numpy(dtype="int64"), days))]
        for piece in pieces(live, p.paced, days, speed, pub.stop_requested):
            if res is not None:
                piece = res.above(piece)
                if piece.empty:
                    continue
            send(piece, source)
            state.write(market_minute=int(piece["minute"].max()))
        k += 1
