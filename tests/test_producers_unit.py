"""Pure logic of the producers: encoding, validation split, yfinance frames, replay files, synthetic
bars, the throttle, the ticker universe, watermark holds and the published-minute window. No services."""

from __future__ import annotations

import argparse
import gzip
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from minutecast.errors import ConfigError, ServiceUnavailable
from minutecast.schemas import TICKER_RE, Bar, parse_bar
from minutecast.window import SESSION_TZ
from producers import bars, cli, replay, universe
from producers.publisher import Stats, _bar_minute
from producers.runner import ProduceOptions
from producers.synthetic import Synthetic, regular_minutes, synthetic_tickers
from producers.throttle import RateLimited, Throttle
from producers.watermark import Published, Watermarks
from producers.yfinance_source import chunks, frame_to_bars

T0 = int(datetime(2025, 10, 1, 13, 30, tzinfo=UTC).timestamp())  # 09:30 New York


def _frame(rows: list[tuple[str, int, float, float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=bars.COLUMNS)


def test_encode_is_byte_identical_to_bar_to_json() -> None:
    f = _frame([("AAPL", T0, 253.38, 253.5, 252.16, 252.52, 3395.0),
                ("BRK-B", T0 + 60, 480.1, 480.1, 480.1, 480.1, 0.0),
                ("BF.B", T0 + 120, 1e-3, 0.1, 1e-3, 0.05, 1253545.0)])
    keys, bodies = bars.encode(f, "replay")
    for (t, m, o, h, lo, c, v), key, body in zip(f.itertuples(index=False), keys, bodies, strict=True):
        value = body + bars.stamp_suffix(1763700000.123456)
        assert value == Bar(t, m, o, h, lo, c, v, "replay", 1763700000.123).to_json()
        assert key == t.encode()
        assert parse_bar(value, key, now=T0 + 3600).ticker == t
    # any source the schema takes (a quote, a percent sign, non-ASCII) is written as json.dumps writes it
    for source in ('re"play', "100%s", "r\u00e9play"):
        keys, bodies = bars.encode(f.iloc[:1], source)
        assert bodies[0] + bars.stamp_suffix(1763700000.1) == Bar("AAPL", T0, 253.38, 253.5, 252.16, 252.52, 3395.0,
                                                                  source, 1763700000.1).to_json()


def test_check_counts_nan_rows_and_rejects_invalid_bars() -> None:
    nan = float("nan")
    f = _frame([
        ("AAPL", T0, 10.0, 11.0, 9.0, 10.5, 100.0),
        ("AAPL", T0 + 60, nan, nan, nan, nan, nan),  # NaN row: dropped, counted
        ("AAPL", T0 + 120, 10.0, nan, 9.0, 10.5, 100.0),  # partial NaN: rejected
        ("MSFT", T0, 10.0, 9.0, 11.0, 10.0, 5.0),  # high below low
        ("MSFT", T0 + 30, 10.0, 11.0, 9.0, 10.0, 5.0),  # off the minute
        ("MSFT", T0 + 60, 10.0, 11.0, 9.0, 10.0, 5.0),
        ("MSFT", T0 + 60, 10.0, 11.0, 9.0, 10.0, 5.0),  # exact repeat: dropped, counted
        ("MSFT", T0 + 60, 10.0, 11.0, 9.0, 10.2, 5.0),  # conflicting repeat: rejected
        ("bad!", T0, 10.0, 11.0, 9.0, 10.0, 5.0),
    ])
    c = bars.check(f, "replay", now=T0 + 3600)
    assert c.nan_rows == 1 and c.duplicates == 1
    assert sorted(r.error.reason for r in c.rejected) == sorted(
        ["non_finite", "high_below_low", "not_minute_aligned", "conflicting_duplicate", "bad_ticker"])
    assert list(zip(c.valid["ticker"], c.valid["minute"], strict=True)) == [("AAPL", T0), ("MSFT", T0 + 60)]
    assert all(r.payload.startswith(b"{") and r.key for r in c.rejected)


def _yf_frame(index: pd.DatetimeIndex, data: dict[str, np.ndarray], by: str = "column") -> pd.DataFrame:
    """A frame shaped like yf.download(group_by=by) for several tickers: MultiIndex columns."""
    fields = ["Adj Close", "Close", "High", "Low", "Open", "Volume"]
    cols, arrays = [], []
    for t, closes in data.items():
        for fld in fields:
            vol = np.where(np.isnan(closes), np.nan, 1000.0)
            arrays.append(vol if fld == "Volume" else closes)
            cols.append((fld, t) if by == "column" else (t, fld))
    names = ["Price", "Ticker"] if by == "column" else ["Ticker", "Price"]
    return pd.DataFrame(np.column_stack(arrays), index=index, columns=pd.MultiIndex.from_tuples(cols, names=names))


@pytest.mark.parametrize("by", ["column", "ticker"])
@pytest.mark.parametrize("tz", ["America/New_York", "UTC", "Europe/Berlin", None])
def test_frame_to_bars_handles_layouts_and_timezones(by: str, tz: str | None) -> None:
    ny = pd.date_range("2025-10-01 09:30", periods=4, freq="1min", tz=SESSION_TZ, name="Datetime")
    index = ny.tz_localize(None) if tz is None else ny.tz_convert(tz)
    nan = np.nan
    df = _yf_frame(index, {"AAPL": np.array([10.0, 10.1, nan, 10.3]), "BRK-B": np.array([nan, 480.0, 481.0, nan])},
                   by)
    out = frame_to_bars(df)
    assert list(out.columns) == bars.COLUMNS
    assert len(out) == 8  # NaN rows kept here; check() counts and drops them
    assert out["minute"].is_monotonic_increasing and out["minute"].iloc[0] == T0
    c = bars.check(out, "yfinance", now=T0 + 3600)
    assert c.nan_rows == 3 and not c.rejected
    assert list(zip(c.valid["ticker"], c.valid["minute"] - T0, strict=True)) == [
        ("AAPL", 0), ("AAPL", 60), ("BRK-B", 60), ("BRK-B", 120), ("AAPL", 180)]


def test_frame_to_bars_single_ticker_flat_columns() -> None:
    idx = pd.date_range("2025-10-01 09:30", periods=2, freq="1min", tz=SESSION_TZ)
    df = pd.DataFrame({"Open": [1.0, 2.0], "High": [1.0, 2.0], "Low": [1.0, 2.0], "Close": [1.0, 2.0],
                       "Volume": [5, 6]}, index=idx)
    out = frame_to_bars(df, "AAPL")
    assert out["ticker"].tolist() == ["AAPL", "AAPL"] and out["minute"].tolist() == [T0, T0 + 60]
    with pytest.raises(ConfigError, match="needs its ticker"):
        frame_to_bars(df)
    assert frame_to_bars(pd.DataFrame()).empty


CSV = """Datetime,Open,High,Low,Close,Adj Close,Volume
2025-10-01T09:30:00-04:00,10,11,9,10.5,10.5,100
2025-10-01T09:31:00-04:00,10.5,11,10,10.7,10.7,1253545.0
2025-11-03T09:30:00-05:00,12,12,12,12,12,7
"""


def test_replay_reads_csv_gz_and_parquet_and_merges_in_event_order(tmp_path: Path) -> None:
    (tmp_path / "AAPL.csv").write_text(CSV)
    with gzip.open(tmp_path / "MSFT.csv.gz", "wt") as fh:
        fh.write(CSV)
    pq = replay.read_file(tmp_path / "AAPL.csv").assign(ticker="NVDA")
    pq.to_parquet(tmp_path / "nvda-long.parquet")
    (tmp_path / "notes.txt").write_text("ignored")
    f = replay.load(tmp_path)
    assert len(f) == 9
    assert f["minute"].is_monotonic_increasing
    assert f.iloc[:3]["ticker"].tolist() == ["AAPL", "MSFT", "NVDA"]
    assert f["minute"].iloc[0] == T0 and f["minute"].iloc[-1] == int(datetime(2025, 11, 3, 14, 30,
                                                                              tzinfo=UTC).timestamp())
    assert f["volume"].iloc[3] == 1253545.0
    assert len(replay.load(tmp_path, tickers=["MSFT"])) == 3
    assert len(replay.load(tmp_path, limit=4)) == 4
    assert replay.ticker_of(Path("BRK-B.csv.gz")) == "BRK-B"
    with pytest.raises(ConfigError):
        replay.load(tmp_path / "missing")


def test_replay_refuses_times_without_offset(tmp_path: Path) -> None:
    (tmp_path / "AAPL.csv").write_text(CSV.replace("-04:00", ""))
    with pytest.raises(ConfigError, match="offset"):
        replay.load(tmp_path)


def test_shift_to_now_and_pacing() -> None:
    f = _frame([("AAPL", T0, 1, 1, 1, 1, 1), ("MSFT", T0, 1, 1, 1, 1, 1), ("AAPL", T0 + 120, 1, 1, 1, 1, 1)])
    now = T0 + 10 * 86400 + 42.0
    s = replay.shift_to_now(f, now)
    assert s["minute"].iloc[-1] == (int(now) // 60) * 60 - 60
    assert (s["minute"] - f["minute"]).nunique() == 1 and (s["minute"] % 60 == 0).all()

    clock = [100.0]
    slept: list[float] = []

    def sleep(d: float) -> None:
        slept.append(d)
        clock[0] += d

    pieces = list(replay.paced(f, 60.0, sleep=sleep, clock=lambda: clock[0]))
    assert [len(p) for p in pieces] == [2, 1]  # one minute at a time
    assert clock[0] == pytest.approx(102.0)  # 2 minutes of event time at 60x = 2 s
    assert [len(p) for p in replay.paced(f, 0.0, chunk=2)] == [2, 1]


def test_synthetic_is_deterministic_valid_and_u_shaped() -> None:
    minutes = regular_minutes(390 * 2, end=datetime(2025, 10, 3, 21, 0, tzinfo=UTC).timestamp())
    assert len(minutes) == 780 and np.all(np.diff(minutes) > 0)
    local = pd.to_datetime(minutes, unit="s", utc=True).tz_convert(SESSION_TZ)
    mod = local.hour * 60 + local.minute
    assert mod.min() == 9 * 60 + 30 and mod.max() == 15 * 60 + 59 and (local.weekday < 5).all()

    names = synthetic_tickers(50)
    a = Synthetic(names, range(50), seed=7).frame(minutes)
    b = Synthetic(names, range(50), seed=7).frame(minutes)
    pd.testing.assert_frame_equal(a, b)
    # A ticker's path does not depend on which other tickers (or processes) there are.
    solo = Synthetic([names[3]], [3], seed=7).frame(minutes)
    pd.testing.assert_frame_equal(solo.reset_index(drop=True),
                                  a[a["ticker"] == names[3]].reset_index(drop=True))
    assert not Synthetic(names, range(50), seed=8).frame(minutes)["close"].equals(a["close"])
    c = bars.check(a, "synthetic", now=float(minutes[-1] + 60))
    assert not c.rejected and c.nan_rows == 0 and len(c.valid) == 50 * 780
    assert a["minute"].is_monotonic_increasing
    by_min = a.assign(mod=np.repeat(mod.to_numpy() - 570, 50)).groupby("mod")["volume"].mean()
    assert by_min.iloc[:10].mean() > 2 * by_min.iloc[150:250].mean() < by_min.iloc[-10:].mean()
    # Chunked generation continues the same paths.
    g = Synthetic(names[:2], [0, 1], seed=7)
    chunked = pd.concat(list(g.frames(minutes[:90], chunk_minutes=30)), ignore_index=True)
    pd.testing.assert_frame_equal(chunked, Synthetic(names[:2], [0, 1], seed=7).frame(minutes[:90]))


def test_throttle_backs_off_on_rate_limit_and_gives_up() -> None:
    clock = [1000.0]

    def sleep(d: float) -> None:
        clock[0] += d

    th = Throttle(1.0, 60.0, 4, clock=lambda: clock[0], sleep=sleep)
    calls: list[float] = []

    def flaky() -> str:
        calls.append(clock[0])
        if len(calls) < 3:
            raise RateLimited("Too Many Requests")
        return "ok"

    assert th.call(flaky) == "ok"
    gaps = np.diff(calls)
    assert gaps[0] >= 1.6 and gaps[1] >= 3.2  # 2 s then 4 s (+-20 % jitter)
    assert th.gap.value == 2.0  # a success halves the gap again

    def down() -> None:
        raise ConnectionError("refused")

    with pytest.raises(ServiceUnavailable, match="4 attempts"):
        th.call(down)
    t = clock[0]
    Throttle(1.0, shared=th.shared(), clock=lambda: clock[0], sleep=sleep).call(lambda: None)
    assert clock[0] > t  # a second throttle on the shared state waits for the first one's backoff


def test_universe() -> None:
    sp = universe.sp500()
    assert 495 <= len(sp) <= 510 and len(set(sp)) == len(sp)
    assert {"AAPL", "BRK-B", "BF-B", "MSFT"} <= set(sp)
    assert all(TICKER_RE.match(t) for t in sp)
    assert universe.from_arg("aapl, msft BRK-B") == ["AAPL", "MSFT", "BRK-B"]
    with pytest.raises(ConfigError):
        universe.from_arg("AAPL,not a ticker!")
    parts = [universe.shard(sp, k, 3) for k in range(3)]
    assert sorted(sum(parts, [])) == sorted(sp)


def test_cli_arguments() -> None:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    a = p.parse_args(["--source", "replay", "--path", "x", "--speed", "60", "--shift-to-now", "--processes", "2"])
    assert (a.source, a.speed, a.shift_to_now, a.processes) == ("replay", 60.0, True, 2)
    a = p.parse_args(["--source", "yfinance", "--backfill-days", "7", "--live", "--tickers", "AAPL"])
    assert a.live and a.backfill_days == 7 and cli._universe(a) == ["AAPL"]
    assert len(cli._universe(p.parse_args(["--source", "yfinance"])) or []) >= 495
    # the flags become the producers' options once; their defaults are the options' defaults
    o = cli.options_from(p.parse_args(["--source", "replay", "--path", "x", "--as-if-live", "--no-resume"]))
    assert (o.speed, o.as_if_live, o.resume, o.path) == (60.0, True, False, Path("x"))
    assert cli.options_from(p.parse_args(["--source", "synthetic"])) == ProduceOptions(source="synthetic")


class _FakeRedis:
    """The part of redis.Redis the watermarks use, in memory (strings and sorted sets)."""

    def __init__(self) -> None:
        self.kv: dict[str, int] = {}
        self.zsets: dict[str, dict[str, int]] = {}
        self.ops: list[tuple[object, ...]] = []

    def mget(self, keys: list[str]) -> list[object]:
        return [self.kv.get(k) for k in keys]

    def pipeline(self, transaction: bool = True) -> _FakeRedis:
        return self

    def set(self, name: str, value: int) -> None:
        self.ops.append(("set", name, value))

    def zadd(self, name: str, mapping: dict[str, int]) -> None:
        self.ops.append(("zadd", name, mapping))

    def zremrangebyscore(self, name: str, lo: object, hi: object) -> None:
        self.ops.append(("zrem", name, lo, hi))

    def zrange(self, name: str, start: int, end: int) -> None:
        self.ops.append(("zrange", name))

    def expire(self, name: str, seconds: int) -> None:
        self.ops.append(("expire", name))

    def execute(self) -> list[object]:
        out: list[object] = []
        for op in self.ops:
            if op[0] == "set":
                self.kv[str(op[1])] = int(op[2])  # type: ignore[call-overload]
            elif op[0] == "zadd":
                self.zsets.setdefault(str(op[1]), {}).update(op[2])  # type: ignore[arg-type]
            elif op[0] == "zrem":
                hi = int(str(op[3]).lstrip("("))
                self.zsets[str(op[1])] = {k: v for k, v in self.zsets.get(str(op[1]), {}).items() if v >= hi}
            elif op[0] == "zrange":
                out.append(sorted(self.zsets.get(str(op[1]), {}), key=int))
        self.ops = []
        return out


def test_a_watermark_never_passes_a_held_minute_until_it_is_delivered() -> None:
    r = _FakeRedis()
    marks = Watermarks(r, "ns", ["AAPL", "MSFT"])
    piece = _frame([(t, T0 + 60 * i, 1, 1, 1, 1, 1) for i in range(5) for t in ("AAPL", "MSFT")])
    failed = piece[(piece["ticker"] == "AAPL") & (piece["minute"] == T0 + 120)]
    assert not marks.commit(piece, failed)  # replay: AAPL stops below its failed minute
    assert marks.watermarks == {"AAPL": T0 + 60, "MSFT": T0 + 240} and marks.held == {"AAPL": {T0 + 120}}
    later = _frame([("AAPL", T0 + 300, 1, 1, 1, 1, 1)])
    marks.commit(later, later.iloc[:0])  # a later piece that went through moves nothing past it
    assert marks.watermarks["AAPL"] == T0 + 60
    assert marks.commit(failed, failed.iloc[:0])  # delivered at last: released
    assert marks.commit(later, later.iloc[:0]) and marks.watermarks["AAPL"] == T0 + 300
    assert r.kv == {"ns:producer:wm:AAPL": T0 + 300, "ns:producer:wm:MSFT": T0 + 240}
    # yfinance: a fetch covered everything up to ``through``; a held minute no longer served is let go
    marks.commit(failed, failed, through=T0 + 600, tickers=["MSFT"])
    assert marks.watermarks == {"AAPL": T0 + 300, "MSFT": T0 + 600}
    empty = piece.iloc[:0]
    marks.commit(empty, empty, through=T0 + 900, covered_from=T0, tickers=["AAPL"])
    assert marks.watermarks["AAPL"] == T0 + 900 and not marks.held


def test_published_minutes_stay_bounded_to_the_window_and_read_back() -> None:
    r = _FakeRedis()
    pub = Published(r, "ns", ["AAPL"])
    rows = _frame([("AAPL", T0 + 60 * i, 1, 1, 1, 1, 1) for i in range(90)])
    for i in range(0, 90, 10):
        pub.add(rows.iloc[i:i + 10], {"AAPL": T0 + 60 * (i - 20)})
    assert min(pub.minutes["AAPL"]) == T0 + 60 * 60 and len(r.zsets["ns:producer:pub:AAPL"]) == 30
    again = Published(r, "ns", ["AAPL", "MSFT"])
    assert again.minutes == pub.minutes
    assert again.seen(rows).tolist() == [False] * 60 + [True] * 30


def test_failed_deliveries_are_recorded_and_healed_in_the_counts() -> None:
    s = Stats()
    s.sent, s.delivered, s.failed = 11, 10, 1
    assert not s.ok
    s.recovered = 1
    assert s.ok and "resent=0 recovered=1" in s.line()
    assert _bar_minute(Bar("AAPL", T0, 1, 1, 1, 1, 1, "replay", 1.0).to_json()) == T0
    assert _bar_minute(b"not json") is None
    assert [(a, b - a) for a, b in chunks(T0, T0 + 10 * 86400)] == [(T0, 7 * 86400), (T0 + 7 * 86400, 3 * 86400)]
