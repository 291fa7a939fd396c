"""Replay as if live (producers/live.py): the split, the timeline, the pacing (fake clocks), and a real run
against Kafka and Redis that loops forward in time, stops at the clock and resumes after its watermarks.

    ~/.cache/minutecast/venv/bin/python -m pytest tests/test_live_replay.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import TopicPartition

from minutecast.kafka import make_consumer
from minutecast.keys import Keys
from minutecast.settings import InfraSettings
from minutecast.topics import Topics
from minutecast.window import minute_of_day, session_ids, shift_days
from producers import live
from producers.bars import COLUMNS

REPO = Path(__file__).resolve().parents[1]
DAY = 86400
OPEN = 1764599400  # 2025-12-01 09:30 New York (14:30 UTC)


def frame(days: int = 2, tickers: tuple[str, ...] = ("AAA", "BBB"), regular: int = 390,
          sparse: int = 30) -> pd.DataFrame:
    """``days`` sessions: ``sparse`` pre-market bars of one ticker every 5 minutes, then ``regular`` dense minutes."""
    rows = []
    for d in range(days):
        start = OPEN + d * DAY
        for i in range(sparse):
            rows.append(("AAA", start - 60 * 5 * (sparse - i)))
        for m in range(regular):
            rows += [(t, start + 60 * m) for t in tickers]
    df = pd.DataFrame(rows, columns=["ticker", "minute"])
    for c in ("open", "high", "low", "close"):
        df[c] = 100.0
    df["volume"] = 10.0
    return df.sort_values(["minute", "ticker"], kind="stable").reset_index(drop=True)[COLUMNS]


class Clock:
    """A fake monotonic clock and wall clock that only move when slept."""

    def __init__(self, wall: float) -> None:
        self.t, self.wall0, self.slept = 0.0, wall, 0.0

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall0 + self.t

    def sleep(self, s: float) -> None:
        self.t += s
        self.slept += s


def test_plan_keeps_the_last_sessions_live_and_paces_their_dense_minutes() -> None:
    f = frame(days=3)
    p = live.plan(f, sessions=1)
    assert len(p.warm) + len(p.live) == len(f) and p.period_days == 1
    assert p.live["minute"].min() >= OPEN + 2 * DAY - 60 * 5 * 30 and p.warm["minute"].max() < OPEN + 2 * DAY - 3600
    assert p.paced == ((OPEN + 2 * DAY, OPEN + 2 * DAY + 60 * 389 + 300),)  # the sparse pre-market is not paced
    # a busy pre-market print (every ticker at 04:00) does not pull the paced stretch to 04:00
    early = f.iloc[:2].assign(ticker=["AAA", "BBB"], minute=OPEN + 2 * DAY - 330 * 60)
    busy = pd.concat([f, early]).sort_values(["minute", "ticker"], kind="stable")
    assert live.plan(busy, 1).paced == p.paced
    two = live.plan(f, sessions=2)
    assert two.period_days == 2 and len(two.paced) == 2 and two.fingerprint != p.fingerprint


def ny_weekday(minutes: np.ndarray) -> np.ndarray:
    return (session_ids(minutes) + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday


def test_the_timeline_is_shifted_by_whole_weeks_to_the_lead_and_copies_move_forward_on_weekdays() -> None:
    p = live.plan(frame(days=2), 1)
    now = 1796117317.0
    base = live.base_days(p, now, lead_days=28)
    first, last = int(p.live["minute"].min()), int(p.live["minute"].max())
    moved = int(shift_days(np.array([first]), base)[0])
    assert base % 7 == 0 and now - 35 * DAY < moved <= now - 28 * DAY
    assert live.first_copy(p, base, now, 28, None) == 0
    days = [live.copy_days(p, base, k) for k in range(8)]
    ends = [int(shift_days(np.array([last]), d)[0]) for d in days]
    starts = [int(shift_days(np.array([first]), d)[0]) for d in days]
    assert days[0] == base and all(s > e for s, e in zip(starts[1:], ends[:-1], strict=False))  # new minutes
    assert (ny_weekday(np.array(starts)) < 5).all() and len(set(days)) == 8  # weekdays only, none twice
    # resume: the first copy after the newest delivered minute; a restart days later jumps forward
    assert live.first_copy(p, base, now, 28, watermark=ends[1]) == 2
    later = live.first_copy(p, base, now + 14 * DAY, 28, watermark=ends[1])
    assert later == 10 and live.copy_days(p, base, 10) == base + 14  # two weeks on: ten weekdays


@pytest.mark.parametrize(("recorded", "now"), [
    ("2025-12-01", "2026-03-20"),  # EST sessions into EDT dates (across the March change)
    ("2025-12-01", "2026-11-20"),  # across both changes
    ("2025-07-01", "2025-12-15"),  # EDT sessions into EST dates (across the November change)
    ("2025-10-20", "2025-11-03"),  # the lead ends days before the change: copies cross it
    ("2026-02-23", "2026-03-09"),
])
def test_the_replay_keeps_new_york_wall_clock_and_weekdays_across_dst(recorded: str, now: str) -> None:
    """The as-if-live timeline keeps every session at its New York times whatever the shift: shifting by whole
    days of UTC seconds would land a session recorded in EST at 10:30 on EDT dates (and 08:30 the other way)."""
    start = int(pd.Timestamp(f"{recorded} 09:30", tz="America/New_York").timestamp())
    f = frame(days=2).assign(minute=lambda d: d["minute"] - OPEN + start)
    p = live.plan(f, 1)
    t = pd.Timestamp(f"{now} 12:00", tz="America/New_York").timestamp()
    base = live.base_days(p, t, lead_days=28)
    original = f["minute"].to_numpy(dtype="int64")
    for days in [base] + [live.copy_days(p, base, k) for k in range(30)]:
        moved = shift_days(original, days)
        assert (minute_of_day(moved) == minute_of_day(original)).all(), days  # 09:30 stays 09:30
        assert (session_ids(moved) - session_ids(original) == days).all()  # one New York date per session
    assert (ny_weekday(shift_days(original, base)) == ny_weekday(original)).all()
    clock = Clock(wall=t + 400 * DAY)  # everything has closed: pieces come at once
    k = live.first_copy(p, base, t, 28, None)
    got = pd.concat(live.pieces(p.live, p.paced, live.copy_days(p, base, k), 0.0, clock=clock.mono,
                                wall=clock.wall, sleep=clock.sleep))
    opens = got["minute"][minute_of_day(got["minute"].to_numpy()) == 570]
    assert len(opens) == 2 and ny_weekday(opens.to_numpy()).max() < 5  # the session opens at 09:30 on a weekday


def test_pieces_pace_dense_minutes_and_send_the_rest_at_once() -> None:
    p = live.plan(frame(days=1), 1)
    clock = Clock(wall=2_000_000_000.0)
    days = live.base_days(p, clock.wall(), 28)
    pieces = list(live.pieces(p.live, p.paced, days, 60.0, clock=clock.mono, wall=clock.wall, sleep=clock.sleep))
    assert len(pieces[0]) == 30 and pieces[0]["minute"].nunique() == 30  # the sparse pre-market: one piece
    assert all(len(x) == 2 and x["minute"].nunique() == 1 for x in pieces[1:])  # then one minute per piece
    assert len(pieces) == 1 + 390 and clock.slept == pytest.approx(389.0, abs=1.0)  # one market minute per s
    minutes = np.concatenate([x["minute"].to_numpy() for x in pieces])
    assert (np.diff(minutes) >= 0).all()
    assert minutes.min() == shift_days(np.array([int(p.live["minute"].min())]), days)[0]


def test_pieces_never_release_a_minute_before_it_has_closed() -> None:
    p = live.plan(frame(days=1, sparse=0), 1)
    first = int(p.live["minute"].min())
    clock = Clock(wall=first + 60 * 100.5)  # the clock is 100 minutes into the session: the rest is future
    got = []
    for piece in live.pieces(p.live, p.paced, 0, 600.0, clock=clock.mono, wall=clock.wall, sleep=clock.sleep):
        m = int(piece["minute"].max())
        assert clock.wall() >= m + 60, "a bar left before its minute closed"
        got.append(m)
        if len(got) == 110:
            break
    assert clock.wall() == pytest.approx(got[-1] + 60, abs=1.0)  # caught up: real time, one minute a minute


@pytest.mark.integration
def test_live_replay_loops_forward_stops_at_the_clock_and_resumes(services: InfraSettings, namespace: str,
                                                                  topics: Topics, redis_client: object,
                                                                  tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    f = frame(days=2)
    f.assign(Datetime=pd.to_datetime(f["minute"], unit="s", utc=True).map(lambda x: x.isoformat())).rename(
        columns=str.capitalize).drop(columns=["Minute"]).to_csv(data, index=False)
    cmd = [sys.executable, "-m", "minutecast.cli", "produce", "--source", "replay", "--path", str(data),
           "--as-if-live", "--speed", "20000", "--lead-days", "2.5"]
    env = os.environ | {"MINUTECAST_METRICS_PORT": "0"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    keys = Keys(namespace)
    p = live.plan(f, 1)
    deadline = time.monotonic() + 60
    last, steady, waiting = None, 0, -1
    # Warm-up, copies 0, 1, ... (2.5 to 9.5 days of lead: whole weeks), then the copy that waits for the clock:
    # the first whose last minute has not closed yet (copy 2 or later, by the weekday and the time of day). When
    # that copy is today's it first catches up with the clock (paced minutes at 20000x): only once its newest
    # market minute holds still (~1.5 s; in real time it moves once a minute) is it waiting.
    while time.monotonic() < deadline:
        state = {k.decode(): v.decode() for k, v in redis_client.hgetall(keys.replay_state()).items()}  # type: ignore[attr-defined]
        if "base" in state:
            waiting = waiting_copy(p, int(state["base"]), time.time())
        if state.get("copy") == str(waiting):
            steady = steady + 1 if state.get("market_minute") == last else 0
            last = state.get("market_minute")
            if steady >= 5:
                break
        time.sleep(0.3)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out[-2000:]
    assert waiting >= 2 and state["phase"] == "live" and state["copy"] == str(waiting), (state, out[-2000:])

    first = read_bars(services, topics, namespace)
    assert first.groupby("ticker")["minute"].apply(lambda s: s.is_unique).all()  # new minutes in every copy
    assert (first["minute"] + 60 <= time.time()).all()  # never a bar from the future
    warm = len(f[f["minute"] < OPEN + DAY - 3 * 3600])
    assert (first["source"] == "replay").sum() >= warm and (first["source"] == "replay-loop").sum() > 0
    assert len(first) >= warm + waiting * (len(f) - warm)  # warm-up, then every copy before the waiting one

    # A restart continues on the same timeline after its watermarks: nothing is sent twice.
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out[-2000:]
    after = read_bars(services, topics, namespace)
    assert after.groupby("ticker")["minute"].apply(lambda s: s.is_unique).all(), out[-2000:]
    assert len(after) - len(first) <= 2 * 2  # at most the minutes that closed meanwhile


def waiting_copy(p: live.LivePlan, base: int, now: float) -> int:
    """The first copy with a minute that has not closed at ``now`` (the one the replay waits in)."""
    k, last = 0, np.array([int(p.live["minute"].max())])
    while int(shift_days(last, live.copy_days(p, base, k))[0]) + 60 <= now:
        k += 1
    return k


def read_bars(services: InfraSettings, topics: Topics, namespace: str) -> pd.DataFrame:
    """Every bar on the test's bar topic, with its minute."""
    consumer = make_consumer(services.kafka, group=f"{namespace}-check")
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topics.bars, p), timeout=10)[1] for p in range(3)}
    consumer.assign([TopicPartition(topics.bars, p, 0) for p in range(3)])
    bars: list[dict[str, object]] = []
    deadline = time.monotonic() + 30
    while len(bars) < sum(ends.values()) and time.monotonic() < deadline:
        bars += [json.loads(m.value()) for m in consumer.consume(1000, timeout=1) if m.error() is None]
    consumer.close()
    df = pd.DataFrame(bars)
    df["minute"] = pd.to_datetime(df["time"]).astype("int64") // 10**9
    return df
