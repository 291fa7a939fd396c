"""Live table of forecasts, as a subscriber sees them on the forecasts topic.

    minutecast watch                  # all tickers, redraws every second, Ctrl-C quits
    minutecast watch AAPL MSFT --from-beginning --max-seconds 30
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minutecast.schemas import Forecast


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tickers", nargs="*", help="only these tickers (default: all)")
    p.add_argument("--from-beginning", action="store_true", help="replay the topic from its start")
    p.add_argument("--rows", type=int, default=30, help="rows shown (newest first)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--plain", action="store_true", help="print each forecast as a line instead of a table")


def interval(f: Forecast) -> str:
    """The 80% interval as ``272.80–273.60`` (``-`` for a v1 forecast)."""
    return f"{f.q10:.2f}–{f.q90:.2f}" if f.q10 is not None and f.q90 is not None else "-"


def render(latest: Mapping[str, Forecast], rows: int) -> str:
    from minutecast.schemas import iso_minute

    now = time.time()
    lines = [f"{'ticker':<7} {'forecast':>10} {'last':>10} {'move':>8}  {'80% interval':>17} {'sigma':>6}  "
             f"{'target (UTC)':<20} {'latency':>8}  model"]
    items = sorted(latest.values(), key=lambda f: (-f.as_of, f.ticker))
    for f in items[:rows]:
        move = (f.predicted_close / f.last_close - 1) * 1e4
        lat = f"{f.forecast_at - f.published_at:.2f}s" if f.published_at else "-"
        sigma = f"{f.sigma * 1e4:.0f}bp" if f.sigma is not None else "-"
        lines.append(f"{f.ticker:<7} {f.predicted_close:>10.2f} {f.last_close:>10.2f} {move:>+6.1f}bp  "
                     f"{interval(f):>17} {sigma:>6}  {iso_minute(f.target_minute):<20} {lat:>8}  {f.model_version}")
    lines.append(f"{len(latest)} tickers, updated {time.strftime('%H:%M:%S')} (age of newest "
                 f"{now - max((f.forecast_at for f in latest.values()), default=now):.1f}s)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from minutecast.kafka import make_consumer, wait_for_kafka
    from minutecast.schemas import Forecast  # noqa: F811 - runtime import of the TYPE_CHECKING name
    from minutecast.settings import CommonSettings
    from minutecast.topics import Topics

    s = CommonSettings()
    wait_for_kafka(s.kafka, 30)
    wanted = {t.upper() for t in args.tickers}
    consumer = make_consumer(s.kafka, group=f"minutecast-watch-{uuid.uuid4().hex[:8]}",
                             **{"auto.offset.reset": "earliest" if args.from_beginning else "latest"})
    consumer.subscribe([Topics(s.namespace).forecasts])
    latest: dict[str, Forecast] = {}
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else float("inf")
    last_draw = 0.0
    tty = sys.stdout.isatty() and not args.plain
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None or msg.value() is None:
                    continue
                f = Forecast.from_json(msg.value() or b"")
                if wanted and f.ticker not in wanted:
                    continue
                if args.plain or not tty:
                    print(f"{f.ticker} as_of={f.as_of} predicted={f.predicted_close:.4f} "
                          f"last={f.last_close:.4f} 80%={interval(f)} model={f.model_version}", flush=True)
                prev = latest.get(f.ticker)
                if prev is None or f.as_of >= prev.as_of:
                    latest[f.ticker] = f
            if tty and time.monotonic() - last_draw >= 1.0 and latest:
                sys.stdout.write("\x1b[H\x1b[2J" + render(latest, args.rows) + "\n")
                sys.stdout.flush()
                last_draw = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
