"""Run the whole pipeline on this machine, without Docker: Kafka, Redis, producer, Faust worker,
Spark inference job and trainer, as supervised processes with one log per service.

    minutecast run                                   # what `make run` starts
    minutecast run --source replay --replay-data ../shared/data/bars-1m
    minutecast run --for 600 --until-forecasts 20    # stop by itself (tests, demos)

Source: live yfinance for the S&P 500 when Yahoo answers; otherwise (it says so in one line) a replay of
the recorded bars that ``MINUTECAST_REPLAY_DATA`` / ``--replay-data`` points at, else the synthetic
source. Until a model is promoted the Spark job serves the persistence baseline (labelled so); the
trainer trains a first model on what is in Kafka once the replay is in, then retrains every hour.
Ctrl-C stops everything cleanly; a second run resumes (Faust offsets, Spark checkpoint, registry).
Logs: ``<home>/logs/<service>.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MAX_RESTARTS = 5  # a service that dies this often in a row is given up on (and the run fails)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=["auto", "yfinance", "replay", "synthetic"], default="auto")
    p.add_argument("--replay-data", type=Path, default=os.environ.get("MINUTECAST_REPLAY_DATA"),
                   help="recorded bars for the replay source (default: $MINUTECAST_REPLAY_DATA)")
    p.add_argument("--speed", type=float, default=0.0, help="replay speed, x real time (0: as fast as possible)")
    p.add_argument("--tickers", help="comma-separated tickers (default: all of the source)")
    p.add_argument("--no-train", action="store_true", help="do not run the trainer")
    p.add_argument("--train-preset", default="tiny", help="preset of the first model when none is promoted")
    p.add_argument("--retrain-every", default="1h", help="retrain period of the trainer service")
    p.add_argument("--for", dest="duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--until-forecasts", type=int, default=None,
                   help="stop once this many tickers have a forecast in Redis")
    p.add_argument("--summary-every", type=float, default=15.0, help="seconds between summary lines")


@dataclass
class Service:
    name: str
    argv: list[str]
    oneshot: bool = False  # exit code 0 means done (a replay that finished), not a crash
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    done: bool = False
    log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, logs: Path, run_dir: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.log = open(logs / f"{self.name}.log", "ab")  # noqa: SIM115 - kept open while it runs
        self.log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
        self.log.flush()
        # Own session: Ctrl-C reaches only us, and we stop the services in order.
        self.proc = subprocess.Popen([sys.executable, "-m", "minutecast.cli", *self.argv], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        (run_dir / f"svc-{self.name}.pid").write_text(str(self.proc.pid))

    def stop(self, run_dir: Path, timeout_s: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        (run_dir / f"svc-{self.name}.pid").unlink(missing_ok=True)
        if self.log is not None:
            self.log.close()


def yahoo_reachable(timeout_s: float = 10.0) -> tuple[bool, str]:
    """Whether Yahoo Finance answers a one-ticker request for 1-minute bars (yfinance's own logging is
    silenced meanwhile: the caller says it in one line)."""
    import logging

    yf_log = logging.getLogger("yfinance")
    level = yf_log.level
    yf_log.setLevel(logging.CRITICAL)
    try:
        import yfinance as yf

        frame = yf.Ticker("SPY").history(period="1d", interval="1m", raise_errors=True, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure means: not reachable
        return False, f"{type(exc).__name__}: {str(exc).split(' See ')[0][:120]}"
    finally:
        yf_log.setLevel(level)
    if frame is None or frame.empty:
        return False, "no data came back"
    return True, ""


def choose_source(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The producer's arguments, after saying which source runs and why."""
    source = args.source
    tickers = ["--tickers", args.tickers] if args.tickers else []
    if source == "auto":
        ok, why = yahoo_reachable()
        if ok:
            source = "yfinance"
        else:
            source = "replay" if args.replay_data else "synthetic"
            fallback = (f"replaying recorded bars from {args.replay_data}" if args.replay_data
                        else "running the synthetic source (set MINUTECAST_REPLAY_DATA for recorded bars)")
            print(f"Yahoo Finance is not reachable from this machine ({why}); {fallback}.", flush=True)
    if source == "yfinance":
        return source, ["produce", "--source", "yfinance", "--backfill-days", "5", "--live", "--no-progress",
                        *tickers]
    if source == "replay":
        if not args.replay_data:
            from minutecast.errors import ConfigError

            raise ConfigError("--source replay needs --replay-data or MINUTECAST_REPLAY_DATA")
        return source, ["produce", "--source", "replay", "--path", str(args.replay_data), "--speed",
                        str(args.speed), *tickers]
    return source, ["produce", "--source", "synthetic", "--tickers-count", "503", "--speed", "1", *tickers]


def summary(s: Any) -> dict[str, Any]:
    """Bars in Kafka, windows and forecasts in Redis, the served model: for the screen."""
    from minutecast.kafka import end_offsets
    from minutecast.keys import Keys
    from minutecast.lookup import forecast_times
    from minutecast.redis import connect
    from minutecast.registry import Registry
    from minutecast.topics import Topics

    keys = Keys(s.namespace)
    client = connect(s.redis, decode_responses=True)
    stamps = forecast_times(client, keys)
    return {
        "bars": sum(end_offsets(s.kafka, Topics(s.namespace).bars).values()),
        "windows": sum(1 for _ in client.scan_iter(match=keys.window_pattern(), count=1000)),
        "tickers_forecast": len(stamps),
        "newest_forecast_age_s": round(time.time() - max(stamps), 1) if stamps else None,
        "model": Registry(s.models_dir).current_version() or "persistence",
    }


def run(args: argparse.Namespace) -> int:
    from infra import services as infra
    from minutecast.settings import InfraSettings

    s = InfraSettings()
    for row in infra.up(s):
        print(row.line(), flush=True)
    s = InfraSettings()  # the Redis password exists now
    run_dir, logs = s.home / "run", s.logs_dir
    source, produce = choose_source(args)
    services = [Service("stream", ["stream"]), Service("infer", ["infer"]),
                Service("produce", produce, oneshot=source == "replay")]
    trainer: Service | None = None
    if not args.no_train:
        trainer = Service("train", ["train", "--every", args.retrain_every, "--first-preset", args.train_preset])
    for svc in services:
        svc.start(logs, run_dir)
    print(f"running: {', '.join(x.name for x in services)} (source {source}); logs in {logs}; Ctrl-C stops",
          flush=True)
    stopping = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    t0 = time.monotonic()
    next_summary = t0 + 5
    failed: list[str] = []
    train_after = t0 + 120  # live sources: give the producer two minutes of bars before a first training
    try:
        while not stopping:
            time.sleep(0.5)
            for svc in services:
                if svc.done or svc.proc is None or svc.proc.poll() is None:
                    continue
                rc = svc.proc.returncode
                if svc.oneshot and rc == 0:
                    svc.done = True
                    print(f"{svc.name}: finished", flush=True)
                    continue
                svc.restarts += 1
                if svc.restarts > MAX_RESTARTS:
                    failed.append(svc.name)
                    print(f"{svc.name}: exited {rc} {svc.restarts} times; giving up (see {logs}/{svc.name}.log)")
                    stopping = True
                    break
                print(f"{svc.name}: exited {rc}; restart {svc.restarts}/{MAX_RESTARTS}", flush=True)
                time.sleep(min(2 ** svc.restarts, 30))
                svc.start(logs, run_dir)
            producer_done = services[2].done
            if trainer is not None and trainer.proc is None and (producer_done or time.monotonic() > train_after):
                services.append(trainer)
                trainer.start(logs, run_dir)
                print("train: started (first model on what is in Kafka, then every "
                      f"{args.retrain_every})", flush=True)
            now = time.monotonic()
            if now >= next_summary:
                next_summary = now + args.summary_every
                with contextlib.suppress(Exception):
                    info = summary(s)
                    print(f"[{time.strftime('%H:%M:%S')}] bars {info['bars']:,} | windows {info['windows']} | "
                          f"forecasts {info['tickers_forecast']} tickers (newest "
                          f"{info['newest_forecast_age_s']} s old) | model {info['model']}", flush=True)
                    if args.until_forecasts and info["tickers_forecast"] >= args.until_forecasts:
                        print(f"{info['tickers_forecast']} tickers have forecasts; stopping as asked", flush=True)
                        stopping = True
            if args.duration and now - t0 >= args.duration:
                stopping = True
    finally:
        print("stopping: " + ", ".join(x.name for x in reversed(services)), flush=True)
        order = {"produce": 0, "stream": 1, "infer": 2, "train": 3}
        for svc in sorted(services, key=lambda x: order.get(x.name, 9)):
            svc.stop(run_dir)
    print("stopped; Kafka and Redis keep running (`minutecast infra down` stops them)", flush=True)
    return 1 if failed else 0
