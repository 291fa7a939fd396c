"""The yfinance live loop on recorded bars: late bars, still-forming bars, outages and failed deliveries leave
no gap, no duplicate minute and no wrong value on the real bar topic.

``yf.download`` is replaced by :class:`FakeYahoo`, which serves real recorded bars (``../shared/data/bars-1m``)
shaped as ``yf.download(group_by="column")`` returns them, as Yahoo would at the (fake) clock: the minute in
progress with partial values, chosen bars late, a ticker whose just-closed bar still changes for a few
seconds, and outages (network errors). Kafka and Redis are real. Each test has a ``broken`` variant (the
behaviour this guards against) that must find exactly one bad minute: the check can fail.

    ~/.cache/minutecast/venv/bin/python -m pytest tests/test_watermarks_yfinance.py -q
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from minutecast.settings import KafkaSettings, ProducerSettings
from minutecast.topics import Topics
from minutecast.window import SESSION_TZ
from producers import delivery, replay, yfinance_source
from producers.publisher import Publisher
from producers.throttle import NetworkError, Throttle
from producers.watermark import published_key
from producers.yfinance_source import YFinanceSource
from tests.support.flaky import FlakyProducer
from tests.support.kafka import topic_rows as topic_bars

pytestmark = [pytest.mark.integration, pytest.mark.faults]
TICKERS = ["AAPL", "MSFT", "NFLX"]
FIELDS = [("Adj Close", "close"), ("Close", "close"), ("High", "high"), ("Low", "low"), ("Open", "open"),
          ("Volume", "volume")]


def ny(day: str, hhmm: str) -> int:
    return int(pd.Timestamp(f"{day} {hhmm}", tz=SESSION_TZ).timestamp())


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(0.0, s)


class FakeYahoo:
    """``fetch(tickers, start, end)`` over recorded bars, as Yahoo serves them at ``clock()``."""

    def __init__(self, bars: pd.DataFrame, clock: Clock, *, late: dict[tuple[str, int], float] | None = None,
                 lagging: tuple[str, ...] = (), lag_s: float = 3.0, down: tuple[tuple[float, float], ...] = ()):
        self.bars, self.clock, self.late, self.lagging, self.lag_s, self.down = bars, clock, late or {}, lagging, \
            lag_s, down
        self.calls: list[tuple[float, float, float]] = []  # (start, end, at)

    def __call__(self, tickers: list[str], start: float, end: float) -> pd.DataFrame:
        now = self.clock()
        if any(a <= now < b for a, b in self.down):
            raise NetworkError("curl: (7) Failed to connect to query2.finance.yahoo.com")
        self.calls.append((start, end, now))
        b = self.bars
        sel = b[b["ticker"].isin(tickers) & (b["minute"] >= start) & (b["minute"] < end) & (b["minute"] <= now)]
        gone = [now < self.late.get((t, m), 0) for t, m in zip(sel["ticker"], sel["minute"], strict=True)]
        sel = sel[~pd.Series(gone, index=sel.index, dtype=bool)].copy()
        lagging = sel["ticker"].isin(self.lagging) & (sel["minute"] + 60 + self.lag_s > now)
        forming = (sel["minute"] + 60 > now) | lagging
        for c in ("high", "low", "close"):
            sel.loc[forming, c] = sel.loc[forming, "open"]  # a bar still forming: only its first trade yet
        sel.loc[forming, "volume"] = sel.loc[forming, "volume"] // 3
        return yf_shaped(sel)


def yf_shaped(bars: pd.DataFrame) -> pd.DataFrame:
    """A long bar frame -> the frame yf.download(group_by="column") returns: (Price, Ticker) columns, a New York
    index over the union of minutes, NaN where a ticker has no bar."""
    if bars.empty:
        return pd.DataFrame()
    wide = bars.pivot(index="minute", columns="ticker")
    tickers = sorted(bars["ticker"].unique())
    data = {(name, t): wide[(col, t)].to_numpy() for name, col in FIELDS for t in tickers}
    index = pd.to_datetime(wide.index, unit="s", utc=True).tz_convert(SESSION_TZ).rename("Datetime")
    return pd.DataFrame(data, index=index).rename_axis(columns=["Price", "Ticker"])


def verdict(got: pd.DataFrame, final: pd.DataFrame, lo: int, hi: int) -> dict[str, set[tuple[str, int]]]:
    """Against the final recorded bars of minutes ``lo..hi``: missing, repeated and wrong-valued minutes."""
    want = final[(final["minute"] >= lo) & (final["minute"] <= hi)]
    key = ["ticker", "minute"]
    pairs: Callable[[pd.DataFrame], set[tuple[str, int]]] = lambda d: set(  # noqa: E731
        zip(d["ticker"], d["minute"].astype(int), strict=True))
    both = got.merge(want, on=key, suffixes=("", "_want"))
    wrong = both[(both[["open", "high", "low", "close", "volume"]].to_numpy()
                  != both[["open_want", "high_want", "low_want", "close_want", "volume_want"]].to_numpy()).any(axis=1)]
    return {"missing": pairs(want) - pairs(got), "repeated": pairs(got[got.duplicated(key)]), "wrong": pairs(wrong),
            "outside": pairs(got) - pairs(final)}


@pytest.fixture(scope="module")
def session(shared_data: Path) -> pd.DataFrame:
    """Real bars of 2025-10-02, 09:00-12:00 New York (a sparse pre-market, then every minute)."""
    f = replay.load(shared_data, TICKERS)
    return f[(f["minute"] >= ny("2025-10-02", "09:00")) & (f["minute"] < ny("2025-10-02", "12:00"))]


def source(namespace: str, redis: Any, fake: FakeYahoo, clock: Clock, **kw: Any) -> YFinanceSource:
    """A producer process start: watermarks and published minutes come from Redis."""
    pub = Publisher(ProducerSettings(namespace=namespace, flush_timeout_s=30))
    return YFinanceSource(pub, redis, TICKERS, throttle=Throttle(0.0, 0.0, 2, clock=clock, sleep=clock.sleep),
                          fetch=fake, batch_size=kw.pop("batch_size", 2), clock=clock, sleep=clock.sleep, **kw)


def run(src: YFinanceSource, clock: Clock, polls: int, ok: bool = True) -> None:
    src.live(delay_s=5.0, iterations=polls, sleep=clock.sleep)
    assert src.pub.close().ok == ok


@pytest.mark.parametrize("variant", ["fixed", "broken"])
def test_a_late_bar_is_published_when_it_appears_and_a_published_one_never_again(
        variant: str, session: pd.DataFrame, kafka: KafkaSettings, topics: Topics, namespace: str,
        redis_client: Any) -> None:
    clock = Clock(ny("2025-10-02", "10:00") + 30)
    late = ("MSFT", ny("2025-10-02", "10:20"))  # Yahoo has it 7 minutes after it closed
    fake = FakeYahoo(session, clock, late={late: late[1] + 60 * 8})
    lookback = 30 if variant == "fixed" else 2  # broken: a window too short to see it again
    src = source(namespace, redis_client, fake, clock, lookback_min=lookback)
    run(src, clock, 40)  # polls at 10:01:05 .. 10:40:05
    v = verdict(topic_bars(kafka, topics.bars), session, ny("2025-10-02", "10:01") - 60 * lookback,
                ny("2025-10-02", "10:39"))
    assert not v["repeated"] and not v["wrong"] and not v["outside"]
    assert v["missing"] == (set() if variant == "fixed" else {late})
    for t in TICKERS:  # bounded: the published set holds the trailing window and no more
        assert redis_client.zcard(published_key(namespace, t)) <= lookback + 1


@pytest.mark.parametrize("variant", ["fixed", "broken"])
def test_a_bar_still_forming_is_never_published(variant: str, session: pd.DataFrame, kafka: KafkaSettings,
                                               topics: Topics, namespace: str, redis_client: Any) -> None:
    clock = Clock(ny("2025-10-02", "10:00") + 30)
    fake = FakeYahoo(session, clock, lagging=("AAPL",))  # AAPL's closed bar still changes for 3 s
    src = source(namespace, redis_client, fake, clock, settle_s=5.0 if variant == "fixed" else 0.0)
    src.live(delay_s=5.0, iterations=10, sleep=clock.sleep)
    clock.t = ny("2025-10-02", "10:11") + 1  # a late poll (throttled, a slow batch): one second after a close
    src.poll_once()
    run(src, clock, 5)
    v = verdict(topic_bars(kafka, topics.bars), session, ny("2025-10-02", "09:31"), ny("2025-10-02", "10:15"))
    assert not v["missing"] and not v["repeated"] and not v["outside"]
    assert v["wrong"] == (set() if variant == "fixed" else {("AAPL", ny("2025-10-02", "10:10"))})


@pytest.mark.parametrize("variant", ["fixed", "broken"])
@pytest.mark.parametrize("kind", ["yahoo-down", "restart"])
def test_after_an_outage_longer_than_the_window_the_gap_is_backfilled(
        kind: str, variant: str, session: pd.DataFrame, kafka: KafkaSettings, topics: Topics, namespace: str,
        redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if variant == "broken":  # the catch-up starts one minute late for MSFT
        real = YFinanceSource.start_for
        monkeypatch.setattr(YFinanceSource, "start_for", lambda self, batch, default: (
            real(self, batch, default) + (60 if "MSFT" in batch and real(self, batch, default) < default - 60
                                          else 0)))
    clock = Clock(ny("2025-10-02", "10:00") + 30)
    down = (ny("2025-10-02", "10:20"), ny("2025-10-02", "11:10"))  # 50 minutes
    fake = FakeYahoo(session, clock, down=(down,) if kind == "yahoo-down" else ())
    src = source(namespace, redis_client, fake, clock, batch_size=1)
    if kind == "yahoo-down":
        run(src, clock, 90)  # the polls of 10:20..11:09 fail; the loop goes on
        gap = ny("2025-10-02", "10:19")  # the last poll that worked (10:19:05) had 10:18
    else:
        run(src, clock, 20)  # polls until 10:20:05, then the process is down 50 minutes
        clock.t = down[1]
        run(source(namespace, redis_client, fake, clock, batch_size=1), clock, 20)
        gap = ny("2025-10-02", "10:20")
        assert fake.calls[60][0] == gap and fake.calls[60][2] == down[1]  # from the watermark, at once
    v = verdict(topic_bars(kafka, topics.bars), session, ny("2025-10-02", "09:31"), ny("2025-10-02", "11:29"))
    assert not v["repeated"] and not v["wrong"] and not v["outside"]
    assert v["missing"] == (set() if variant == "fixed" else {("MSFT", gap)})


@pytest.mark.parametrize("variant", ["fixed", "broken"])
def test_an_outage_of_days_is_backfilled_in_chunks_back_to_what_yahoo_keeps(
        variant: str, shared_data: Path, kafka: KafkaSettings, topics: Topics, namespace: str,
        redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if variant == "broken":  # the second chunk starts one minute late
        real = yfinance_source.chunks
        monkeypatch.setattr(yfinance_source, "chunks", lambda a, b: [(x + 60 * (i > 0), y) for i, (x, y)
                                                                    in enumerate(real(a, b))])
    f = replay.load(shared_data, ["AAPL"])
    f = f[(f["minute"] >= ny("2025-10-01", "09:00")) & (f["minute"] < ny("2025-10-14", "10:30"))]
    clock = Clock(ny("2025-10-01", "10:00") + 30)
    fake = FakeYahoo(f, clock)
    one = source(namespace, redis_client, fake, clock)
    one.tickers = ["AAPL"]
    run(one, clock, 5)
    clock.t = ny("2025-10-14", "10:00")  # back 13 days later
    two = source(namespace, redis_client, fake, clock)
    two.tickers = ["AAPL"]
    run(two, clock, 10)
    catch_up = fake.calls[5:7]
    assert [round((b - a) / 86400, 1) for a, b, _ in catch_up] == [7.0, 6.0]  # CHUNK_DAYS, the rest
    v = verdict(topic_bars(kafka, topics.bars), f, ny("2025-10-01", "09:31"), ny("2025-10-14", "10:09"))
    assert not v["repeated"] and not v["wrong"] and not v["outside"]
    assert v["missing"] == (set() if variant == "fixed" else {("AAPL", int(catch_up[0][1]) // 60 * 60)})
    # Older than Yahoo keeps (29 days): the fetch starts there, the watermark moves past the rest.
    clock.t += 40 * 86400
    assert two.start_for(["AAPL"], clock.t - 1800) == (clock.t - 29 * 86400) // 60 * 60


@pytest.mark.parametrize("variant", ["fixed", "broken"])
def test_a_minute_whose_delivery_keeps_failing_is_held_and_sent_by_the_next_poll(
        variant: str, session: pd.DataFrame, kafka: KafkaSettings, topics: Topics, namespace: str,
        redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "RESEND_WAIT_S", 0.01)
    if variant == "broken":  # the failure is not re-sent and the poll is told all went well
        monkeypatch.setattr(delivery, "resend", lambda pub, frame, failures, *a, **k: frame.iloc[:0])
    clock = Clock(ny("2025-10-02", "10:00") + 30)
    src = source(namespace, redis_client, FakeYahoo(session, clock), clock)
    bar = ("MSFT", ny("2025-10-02", "10:05"))
    src.pub.producer = FlakyProducer(src.pub.producer, {bar: delivery.RESEND_ATTEMPTS})  # type: ignore[assignment]
    src.live(delay_s=5.0, iterations=6, sleep=clock.sleep)  # the poll at 10:06:05 brings 10:05... and fails
    if variant == "fixed":
        assert src.watermarks["MSFT"] == bar[1] - 60 and src.watermarks["AAPL"] == bar[1]  # held below it
    run(src, clock, 3, ok=variant == "fixed")  # the poll at 10:07:05 sends it again
    assert src.pub.stats.recovered == (delivery.RESEND_ATTEMPTS if variant == "fixed" else 0)
    v = verdict(topic_bars(kafka, topics.bars), session, ny("2025-10-02", "09:31"), ny("2025-10-02", "10:08"))
    assert not v["repeated"] and not v["wrong"] and not v["outside"]
    assert v["missing"] == (set() if variant == "fixed" else {bar})
