"""Live table of forecasts, as a subscriber sees them on the forecasts topic.

    minutecast watch                  # all tickers, a live table (rich) redrawn every 0.5 s, Ctrl-C quits
    minutecast watch AAPL MSFT --from-beginning --max-seconds 30
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from minutecast.errors import Rejected
from minutecast.kafka import make_consumer, wait_for_kafka
from minutecast.schemas import Forecast
from minutecast.settings import CommonSettings
from minutecast.topics import Topics
from minutecast.window import SESSION_TZ


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tickers", nargs="*", help="only these tickers (default: all)")
    p.add_argument("--from-beginning", action="store_true", help="replay the topic from its start")
    p.add_argument("--rows", type=int, default=30, help="rows shown (newest first)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--plain", action="store_true", help="print each forecast as a line instead of a table")


def interval(f: Forecast) -> str:
    """The 80% interval as ``272.80–273.60`` (``-`` for a v1 forecast)."""
    return f"{f.q10:.2f}–{f.q90:.2f}" if f.q10 is not None and f.q90 is not None else "-"


def _ny(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).astimezone(SESSION_TZ).strftime("%H:%M")


def table(latest: Mapping[str, Forecast], rows: int) -> Table:
    """The newest ``rows`` forecasts (newest as-of first), target minutes in New York time."""
    now = time.time()
    newest = max((f.forecast_at for f in latest.values()), default=now)
    t = Table(title=f"minutecast forecasts: {len(latest)} tickers, newest {now - newest:.1f}s old",
              caption=time.strftime("updated %H:%M:%S"), expand=False)
    for name, justify in (("ticker", "left"), ("forecast", "right"), ("last", "right"), ("move", "right"),
                          ("80% interval", "right"), ("sigma", "right"), ("target ET", "left"),
                          ("latency", "right"), ("model", "left")):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in sorted(latest.values(), key=lambda f: (-f.as_of, f.ticker))[:rows]:
        move = (f.predicted_close / f.last_close - 1) * 1e4
        t.add_row(f.ticker, f"{f.predicted_close:.2f}", f"{f.last_close:.2f}",
                  Text(f"{move:+.1f}bp", style="green" if move > 0 else "red" if move < 0 else ""),
                  interval(f), f"{f.sigma * 1e4:.0f}bp" if f.sigma is not None else "-", _ny(f.target_minute),
                  f"{f.forecast_at - f.published_at:.2f}s" if f.published_at else "-", f.model_version)
    return t


def plain(f: Forecast) -> str:
    return (f"{f.ticker} as_of={f.as_of} predicted={f.predicted_close:.4f} last={f.last_close:.4f} "
            f"80%={interval(f)} model={f.model_version}")


def run(args: argparse.Namespace) -> int:
    s = CommonSettings()
    wait_for_kafka(s.kafka, 30)
    wanted = {t.upper() for t in args.tickers}
    # log_level 3: librdkafka's notices at close (e.g. BGQUEUE "purging unserved events") are not news here.
    consumer = make_consumer(s.kafka, group=f"minutecast-watch-{uuid.uuid4().hex[:8]}", log_level=3,
                             **{"auto.offset.reset": "earliest" if args.from_beginning else "latest"})
    consumer.subscribe([Topics(s.namespace).forecasts])
    latest: dict[str, Forecast] = {}
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else float("inf")
    console = Console()
    live_table = console.is_terminal and not args.plain
    live = Live(console=console, auto_refresh=False, screen=False) if live_table else None
    try:
        with live or contextlib.nullcontext():
            while time.monotonic() < deadline:
                for msg in consumer.consume(1000, timeout=0.5):
                    if msg.error() is not None or msg.value() is None:
                        continue
                    try:
                        f = Forecast.from_json(msg.value() or b"")
                    except Rejected:
                        continue  # the Spark job never publishes one; a foreign record is not ours to show
                    if wanted and f.ticker not in wanted:
                        continue
                    if live is None:
                        print(plain(f), flush=True)
                    prev = latest.get(f.ticker)
                    if prev is None or f.as_of >= prev.as_of:
                        latest[f.ticker] = f
                if live is not None and latest:
                    live.update(table(latest, args.rows), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
