"""Failed deliveries never leave a gap: a ticker's failed minutes are re-sent before its watermark passes them.

Deliveries are made to fail by :class:`FlakyProducer` (the real producer, except that chosen bars are
reported failed as librdkafka reports a message whose delivery timed out); everything else goes to the real
broker, and the bar topic is read back and compared with the recorded bars. Every test has a ``broken``
variant that disables the re-send (the behaviour before it existed) and must find exactly the one minute
that then goes missing: the check can fail.

    ~/.cache/minutecast/venv/bin/python -m pytest tests/test_watermarks.py -q
"""

from __future__ import annotations

import dataclasses
import gzip
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from minutecast.keys import Keys
from minutecast.settings import KafkaSettings, ProducerSettings
from minutecast.topics import Topics
from minutecast.window import shift_days
from producers import delivery, live, replay, runner
from producers.bars import COLUMNS, sort_events
from producers.delivery import DeliveryFailed
from producers.publisher import Publisher
from tests.support.flaky import FlakyProducer
from tests.support.kafka import topic_rows as topic_bars

pytestmark = pytest.mark.integration
TICKERS = ("AAPL", "MSFT", "NVDA")


def flaky_publisher(namespace: str, fail: dict[tuple[str, int], int]) -> tuple[Publisher, FlakyProducer]:
    pub = Publisher(ProducerSettings(namespace=namespace, flush_timeout_s=30))
    flaky = FlakyProducer(pub.producer, fail)
    pub.producer = flaky  # type: ignore[assignment]
    return pub, flaky


def gaps_and_repeats(got: pd.DataFrame, want: pd.DataFrame) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """(minutes of ``want`` missing from ``got``, minutes published more than once)."""
    have = set(zip(got["ticker"], got["minute"].astype(int), strict=True))
    missing = set(zip(want["ticker"], want["minute"].astype(int), strict=True)) - have
    rep = got[got.duplicated(["ticker", "minute"], keep=False)]
    return missing, set(zip(rep["ticker"], rep["minute"].astype(int), strict=True))


def recorded_dir(shared: Path, tmp: Path, rows: int = 300) -> Path:
    out = tmp / "bars"
    out.mkdir()
    for t in TICKERS:
        with gzip.open(shared / f"{t}.csv.gz", "rt") as fh:
            (out / f"{t}.csv").write_text("".join(next(fh) for _ in range(rows + 1)))
    return out


def replay_args(path: Path) -> runner.ProduceOptions:
    return runner.ProduceOptions(source="replay", path=path, as_if_live=False, shift_to_now=False, resume=True,
                                 speed=0.0)


def disable_resend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broken variant: failed bars are not re-sent, and the caller is told all went well."""
    monkeypatch.setattr(delivery, "resend", lambda pub, frame, failures, *a, **k: frame.iloc[:0])


@pytest.fixture(autouse=True)
def quick_resends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "RESEND_WAIT_S", 0.01)
    monkeypatch.setattr(runner, "REPLAY_CHUNK", 200)  # 900 bars: 5 pieces, a watermark commit after each


@pytest.mark.faults
@pytest.mark.parametrize("variant", ["fixed", "broken", "no-resume"])
def test_replay_resends_a_failed_minute_before_its_watermark_passes_it(
        variant: str, shared_data: Path, tmp_path: Path, kafka: KafkaSettings, topics: Topics, namespace: str,
        redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d = recorded_dir(shared_data, tmp_path)
    want = replay.load(d)
    lost = ("AAPL", int(want[want["ticker"] == "AAPL"]["minute"].iloc[40]))  # in the first piece of five
    if variant == "broken":
        disable_resend(monkeypatch)
    pub, flaky = flaky_publisher(namespace, {lost: 2})  # fails twice, then goes through
    # no-resume: no watermarks, the failed bars are re-sent at the end
    args = dataclasses.replace(replay_args(d), resume=variant != "no-resume")
    runner._replay(args, pub, None, None)
    stats = pub.close()
    assert flaky.failed == (1 if variant == "broken" else 2)
    if variant == "no-resume":
        assert stats.ok and stats.recovered == 2
        assert gaps_and_repeats(topic_bars(kafka, topics.bars), want) == (set(), set())
        return
    # A restart (what `restart: on-failure` or the next run does) carries on after the watermarks.
    again = Publisher(ProducerSettings(namespace=namespace, flush_timeout_s=30))
    runner._replay(replay_args(d), again, None, None)
    assert again.close().sent == 0
    wm = {t: int(redis_client.get(Keys(namespace).producer_watermark(t))) for t in TICKERS}
    assert wm == want.groupby("ticker")["minute"].max().to_dict()

    missing, repeated = gaps_and_repeats(topic_bars(kafka, topics.bars), want)
    if variant == "broken":
        assert missing == {lost} and not repeated  # the watermark moved past it: lost for good
        assert not stats.ok
        return
    assert not missing and not repeated
    assert (stats.failed, stats.resent, stats.recovered, stats.ok) == (2, 2, 2, True)


@pytest.mark.faults
@pytest.mark.parametrize("variant", ["fixed", "broken"])
def test_replay_that_gives_up_exits_below_the_failed_minute_and_the_restart_sends_it(
        variant: str, shared_data: Path, tmp_path: Path, kafka: KafkaSettings, topics: Topics, namespace: str,
        redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    d = recorded_dir(shared_data, tmp_path)
    want = replay.load(d)
    aapl = want[want["ticker"] == "AAPL"]["minute"].tolist()
    lost = ("AAPL", int(aapl[250]))  # in the fourth piece
    pub, _ = flaky_publisher(namespace, {lost: delivery.RESEND_ATTEMPTS})  # every publish of this run fails
    if variant == "broken":
        real = delivery.deliver
        monkeypatch.setattr("producers.watermark.deliver", lambda *a, **k: delivery.Delivery(
            real(*a, **k).sent, want.iloc[:0], True))  # failures ignored: the watermark moves on
        runner._replay(replay_args(d), pub, None, None)
    else:
        with pytest.raises(DeliveryFailed, match="1 bars of 1 tickers still undelivered"):
            runner._replay(replay_args(d), pub, None, None)
    assert not pub.close().ok
    wm = int(redis_client.get(Keys(namespace).producer_watermark("AAPL")))
    assert (wm < lost[1]) == (variant == "fixed")

    again = Publisher(ProducerSettings(namespace=namespace, flush_timeout_s=30))  # the restart
    runner._replay(replay_args(d), again, None, None)
    assert again.close().ok
    missing, repeated = gaps_and_repeats(topic_bars(kafka, topics.bars), want)
    if variant == "broken":
        assert missing == {lost} and not repeated
        return
    assert not missing
    # Re-sent after the restart: AAPL's minutes after the failed one in that piece (acked, but above the
    # held watermark), identical values: a no-op in the window store.
    assert repeated and {t for t, _ in repeated} == {"AAPL"} and all(m > lost[1] for _, m in repeated)
    assert len(repeated) < runner.REPLAY_CHUNK


def live_frame(days: int = 2) -> pd.DataFrame:
    """Two sessions of two tickers: a sparse pre-market, then 120 dense minutes."""
    open_ = 1764599400  # 2025-12-01 09:30 New York
    rows = []
    for day in range(days):
        start = open_ + day * 86400
        rows += [("AAA", start - 300 * (10 - i)) for i in range(10)]
        rows += [(t, start + 60 * m) for m in range(120) for t in ("AAA", "BBB")]
    df = pd.DataFrame(rows, columns=["ticker", "minute"])
    for c in ("open", "high", "low", "close"):
        df[c] = 100.0 + (df["minute"] // 60 % 7) * 0.01
    df["volume"] = 10.0
    return sort_events(df)[COLUMNS]


@pytest.mark.faults
@pytest.mark.parametrize("variant", ["fixed", "broken"])
def test_live_replay_resends_failed_minutes_of_warm_up_and_paced_copies(
        variant: str, kafka: KafkaSettings, topics: Topics, namespace: str, redis_client: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    f = live_frame()
    p = live.plan(f, 1)
    base = live.base_days(p, time.time(), lead_days=1.5)
    warm_lost = ("AAA", int(shift_days(p.warm["minute"].to_numpy()[60:61], base)[0]))
    copy_lost = ("BBB", int(shift_days(p.live["minute"].to_numpy()[100:101], live.copy_days(p, base, 0))[0]))
    if variant == "broken":
        disable_resend(monkeypatch)
    pub, _ = flaky_publisher(namespace, {warm_lost: 1, copy_lost: 1})
    monkeypatch.setattr(live, "FAST_CHUNK", 50)
    done = threading.Thread(target=live.run_live, args=(pub, f, redis_client),
                            kwargs={"speed": 50_000.0, "lead_days": 1.5}, daemon=True)
    done.start()
    state_key = Keys(namespace).replay_state()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and redis_client.hget(state_key, "copy") not in (b"1", "1"):
        time.sleep(0.2)  # copy 0 played whole (the clock stops copy 1 at most)
    pub.request_stop()
    done.join(30)
    assert not done.is_alive()
    pub.close()

    got = topic_bars(kafka, topics.bars)
    copies = [f.assign(minute=shift_days(f["minute"].to_numpy(), base))[f["minute"] < p.live["minute"].min()]]
    copies += [p.live.assign(minute=shift_days(p.live["minute"].to_numpy(), live.copy_days(p, base, k)))
               for k in range(2)]
    want = pd.concat(copies)
    newest = got.groupby("ticker")["minute"].max()
    want = want[want["minute"] <= want["ticker"].map(newest)]  # copy 1 stops wherever the clock is
    assert len(want) >= len(f)
    missing, repeated = gaps_and_repeats(got, want)
    if variant == "broken":
        assert missing == {warm_lost, copy_lost} and not repeated
        return
    assert not missing and not repeated
