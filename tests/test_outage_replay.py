"""A restarted as-if-live replay resumes at once (issue #29): the minutes it had already delivered (its
watermarks) are skipped without pacing, so its first new minute goes out within seconds of the restart, not
after one paced step per minute already played.

    ~/.cache/minutecast/venv/bin/python -m pytest tests/test_outage_replay.py -q
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from minutecast.kafka import end_offsets
from minutecast.settings import InfraSettings
from minutecast.topics import Topics
from tests.support.services import wait_until
from tests.test_live_replay import frame, read_bars

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
SPEED = 120.0  # market minutes per 60 s of wall time: one paced minute every 0.5 s
PLAYED_S = 20.0  # the first run plays ~40 paced minutes: re-pacing them would take ~20 s
RESUME_S = 5.0


def bars_on_topic(services: InfraSettings, topics: Topics) -> int:
    return sum(end_offsets(services.kafka, topics.bars).values())


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], dict[str, float]]:
    """The replay, and {"live": monotonic time its live part began} once its log says so."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: dict[str, float] = {}

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if b"live replay: copy" in raw and "live" not in seen:
                seen["live"] = time.monotonic()

    threading.Thread(target=read, daemon=True).start()
    return proc, seen


def test_a_restarted_live_replay_publishes_its_next_minute_within_5_s(
        services: InfraSettings, namespace: str, topics: Topics, redis_client: object, tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    f = frame(days=2)
    f.assign(Datetime=pd.to_datetime(f["minute"], unit="s", utc=True).map(lambda x: x.isoformat())).rename(
        columns=str.capitalize).drop(columns=["Minute"]).to_csv(data, index=False)
    cmd = [sys.executable, "-m", "minutecast.cli", "produce", "--source", "replay", "--path", str(data),
           "--as-if-live", "--speed", f"{SPEED:g}", "--lead-days", "28"]
    env = os.environ | {"MINUTECAST_METRICS_PORT": "0"}

    proc, seen = start(cmd, env)
    try:
        wait_until(lambda: "live" in seen, 120, "the first run's live part", [proc])  # type: ignore[list-item]
        time.sleep(PLAYED_S)
    finally:
        proc.kill()  # a crash: the piece in flight may be sent again, nothing more
        proc.wait(30)
    before = bars_on_topic(services, topics)
    played = read_bars(services, topics, namespace)
    paced = played[played["minute"] > played["minute"].min() + 86400 - 3 * 3600]  # the live session's minutes
    assert paced["minute"].nunique() >= 0.5 * PLAYED_S * SPEED / 60, "the first run played too few paced minutes"

    proc, seen = start(cmd, env)
    try:
        wait_until(lambda: "live" in seen, 120, "the restarted run's live part", [proc])  # type: ignore[list-item]
        t0 = seen["live"]
        wait_until(lambda: bars_on_topic(services, topics) > before, 60, "the restart's first new minute",
                   [proc])  # type: ignore[list-item]
        took = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    print(f"restarted replay: first new minute {took:.1f} s after its live part began "
          f"({paced['minute'].nunique()} paced minutes played before the restart)")
    assert took <= RESUME_S, f"the restarted replay re-paced the minutes it had delivered ({took:.1f} s)"
    after = read_bars(services, topics, namespace)
    twice = after.groupby(["ticker", "minute"]).size()
    assert (twice > 1).sum() <= 2, "more than the piece in flight at the kill was sent twice"
    assert after["minute"].max() > played["minute"].max(), "the restart sent no new minute"
