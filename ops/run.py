"""Run the whole pipeline on this machine, without Docker: Kafka, Redis, producer, Faust worker,
Spark inference job, trainer and the web dashboard, as supervised processes with one log per service.

    minutecast run                                   # what `make run` starts
    minutecast run --source replay --replay-data ../shared/data/bars-1m --speed 120
    minutecast run --for 600 --until-forecasts 20    # stop by itself (tests, demos)

Source: live yfinance for the S&P 500 when Yahoo answers; otherwise (it says so in one line) a replay of
the recorded bars that ``MINUTECAST_REPLAY_DATA`` / ``--replay-data`` points at, else the synthetic
source. The replay runs *as if live* (``producers/live.py``): the history fast, then the last
``--live-sessions`` (default 1) at ``--speed`` x real time (default 60: one market minute per second), shifted
towards now and looping forward in time, so forecasts keep coming; ``--live-sessions 0`` replays the files
once, unshifted. Until a model is promoted the Spark job serves the persistence baseline (labelled so); the
trainer trains a first model on what is in Kafka once the history is in, then retrains every hour.
``minutecast serve`` runs beside them (the dashboard's URL is printed; ``--no-serve`` leaves it out).
Ctrl-C stops everything cleanly, and no service outlives the run however it ends (``ops/supervisor.py``);
a second run of the same namespace is refused while one runs; a later run resumes (Faust offsets, Spark
checkpoint, registry, replay timeline). Logs: ``<home>/logs/<service>.log``. Kafka or Redis away (a restart, a
blip) is waited out: the services wait and resume by themselves (:mod:`minutecast.dependency`), the summary
line says what is away since when and who waits, and a service that ends meanwhile is restarted without
spending its restart budget (``MINUTECAST_RESTART_MAX`` counts crashes of ours, not outages).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra import horovod_build
from infra import services as infra
from infra.procs import RestartBudget
from infra.runstate import mark_done
from minutecast import dependency
from minutecast.dependency import describe
from minutecast.errors import ConfigError
from minutecast.kafka import end_offsets
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.registry import Registry
from minutecast.settings import RunSettings, WebSettings
from minutecast.status import forecast_times
from minutecast.topics import Topics
from minutecast.window import SESSION_TZ
from ops.supervisor import FAKE_SERVICE, Outages, Screen, Service, claim

OUTAGE_RESTART_S = 5.0  # a service that ended while Kafka or Redis is away is restarted this soon (it waits)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=["auto", "yfinance", "replay", "synthetic"], default="auto")
    p.add_argument("--replay-data", type=Path, default=os.environ.get("MINUTECAST_REPLAY_DATA"),
                   help="recorded bars for the replay source (default: $MINUTECAST_REPLAY_DATA)")
    p.add_argument("--speed", type=float, default=None,
                   help="replay pace, x real time (default 60 as if live; with --live-sessions 0: as fast as possible)")
    p.add_argument("--live-sessions", type=int, default=1,
                   help="replay: sessions played at --speed after the history (0: replay the files once, unshifted)")
    p.add_argument("--lead-days", type=float, default=28.0, help="replay: the live part starts this long before now")
    p.add_argument("--no-serve", action="store_true", help="do not run the web dashboard (`minutecast serve`)")
    p.add_argument("--tickers", help="comma-separated tickers (default: all of the source)")
    p.add_argument("--no-train", action="store_true", help="do not run the trainer")
    # Unset: the first model is the trainer's own preset (MINUTECAST_PRESET, default "default"); `first` (a third of
    # the training) promotes sooner but short of the report's 1% over HAR (docs/training.md, "make run's first model").
    p.add_argument("--train-preset", default=None,
                   help="preset of the first model when none is promoted (default: the trainer's preset)")
    p.add_argument("--retrain-every", default="1h", help="retrain period of the trainer service")
    p.add_argument("--for", dest="duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--until-forecasts", type=int, default=None,
                   help="stop once this many tickers have a forecast in Redis")
    p.add_argument("--summary-every", type=float, default=15.0, help="seconds between summary lines")
    # Test hook: the supervisor alone, its services replaced by FAKE_SERVICE (no Kafka, Redis or producer).
    p.add_argument("--fake-services", action="store_true", help=argparse.SUPPRESS)


def yahoo_reachable(timeout_s: float = 10.0) -> tuple[bool, str]:
    """Whether Yahoo Finance answers a one-ticker request for 1-minute bars (yfinance's own logging is
    silenced meanwhile: the caller says it in one line)."""

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


def choose_source(args: argparse.Namespace, say: Any = print) -> tuple[str, list[str]]:
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
            say(f"Yahoo Finance is not reachable from this machine ({why}); {fallback}.")
    if source == "yfinance":
        return source, ["produce", "--source", "yfinance", "--backfill-days", "5", "--live", "--no-progress",
                        *tickers]
    if source == "replay":
        if not args.replay_data:
            raise ConfigError("--source replay needs --replay-data or MINUTECAST_REPLAY_DATA")
        live = ["--as-if-live", "--live-sessions", str(args.live_sessions), "--lead-days", str(args.lead_days)]
        speed = args.speed if args.speed is not None else (60.0 if args.live_sessions > 0 else 0.0)
        return source, ["produce", "--source", "replay", "--path", str(args.replay_data), "--speed", str(speed),
                        *(live if args.live_sessions > 0 else []), *tickers]
    return source, ["produce", "--source", "synthetic", "--tickers-count", "503", "--speed", "1", *tickers]


def summary(s: Any) -> dict[str, Any]:
    """Bars in Kafka, windows and forecasts in Redis, the served model: for the screen."""

    keys = Keys(s.namespace)
    client = connect(s.redis, wait=False, decode_responses=True)
    stamps = forecast_times(client, keys)
    return {
        "bars": sum(end_offsets(s.kafka, Topics(s.namespace).bars).values()),
        "windows": sum(1 for _ in client.scan_iter(match=keys.window_pattern(), count=1000)),
        "tickers_forecast": len(stamps),
        "newest_forecast_age_s": round(time.time() - max(stamps), 1) if stamps else None,
        "model": Registry(s.models_dir).current_version() or "persistence",
        "replay": client.hgetall(keys.replay_state()),
    }


def summary_line(s: Any, outages: Outages | None) -> tuple[str, dict[str, Any] | None]:
    """The supervisor's summary line and :func:`summary`'s dict (None while Kafka or Redis is away: the line
    then says what is away since when, and which services wait for it)."""
    stamp = f"[{time.strftime('%H:%M:%S')}]"
    away = outages.check() if outages else {}
    waiting = outages.waiting() if outages else {}
    who = " | waiting: " + ", ".join(f"{name} ({', '.join(dependency.NAMES.get(d, d) for d in deps)})"
                                     for name, deps in waiting.items()) if waiting else ""
    if away:
        return f"{stamp} {describe(away)}; the services wait and resume by themselves{who}", None
    try:
        info = summary(s)
    except Exception as exc:  # noqa: BLE001 - said, never silent: the next line tries again
        return f"{stamp} no summary this time ({type(exc).__name__}: {str(exc)[:160]}){who}", None
    return (f"{stamp} bars {info['bars']:,} | windows {info['windows']} | forecasts {info['tickers_forecast']} "
            f"tickers (newest {info['newest_forecast_age_s']} s old) | model {info['model']}"
            f"{replay_text(info['replay'])}{who}"), info


def replay_text(state: dict[str, str], now: float | None = None) -> str:
    """`` | replay ...`` for the summary line: the live replay's phase, copy, market time and pace."""
    if not state:
        return ""
    if state.get("phase") != "live":
        return " | replay: history (warm-up)"

    minute = int(float(state.get("market_minute") or 0))
    now = time.time() if now is None else now
    when = datetime.fromtimestamp(minute, UTC).astimezone(SESSION_TZ).strftime("%Y-%m-%d %H:%M %Z")
    pace = "real time (caught up with the clock)" if now - minute < 300 else f"{float(state.get('speed', 0)):g}x"
    return f" | replay as if live: loop {state.get('copy')}, market time {when}, {pace}"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def run(args: argparse.Namespace) -> int:
    s = RunSettings()
    screen = Screen()
    # First: refuse while this namespace runs already (before Kafka, Redis or a Yahoo probe is touched).
    with claim(s.home / "run", s.namespace, s.stop_grace_s, screen.say):
        return supervise(args, s, screen)


def plan(args: argparse.Namespace, s: Any, say: Any) -> tuple[list[Service], Service | None, str, str | None]:
    """The services to start now, the trainer (started later), what they run on, the dashboard's URL."""
    if args.fake_services:
        return [Service(n, [], cmd=FAKE_SERVICE) for n in ("stream", "infer", "produce")], None, "fake", None

    for row in infra.up(s):
        say(row.line())
    source, produce = choose_source(args, say)
    live_replay = source == "replay" and args.live_sessions > 0
    services = [Service("stream", ["stream"]), Service("infer", ["infer"]),
                Service("produce", produce, oneshot=source == "replay" and not live_replay)]
    url = None
    if not args.no_serve:
        ws = WebSettings()
        if port_free(ws.serve_host, ws.serve_port):
            services.append(Service("web", ["serve"]))
            url = ws.url()
        else:
            say(f"web: {ws.serve_host}:{ws.serve_port} is taken; the dashboard is not started "
                "(set MINUTECAST_SERVE_PORT)")
    trainer = None
    if not args.no_train:
        first = ["--first-preset", args.train_preset] if args.train_preset else []
        trainer = Service("train", ["train", "--every", args.retrain_every, *first])
    return services, trainer, f"{source}{', as if live' if live_replay else ''}", url


def supervise(args: argparse.Namespace, s: Any, screen: Screen) -> int:
    """Start the planned services, watch them until asked to stop (or one is over its restart budget), then
    stop them all in order. 1 if a service was given up on."""
    services, trainer, source, url = plan(args, s, screen.say)
    if not args.fake_services:
        s = RunSettings()  # the Redis password exists now
    sup = Supervision(args, s, screen, services, trainer)
    # SIGHUP too: a closed terminal stops the run cleanly (its default would kill us without stopping anything).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, sup.request_stop)
    try:
        sup.start(source, url)
        while not sup.stopping and not screen.gone():
            time.sleep(0.5)
            sup.tick()
    finally:
        sup.stop()
    screen.say("stopped; Kafka and Redis keep running (`minutecast infra down` stops them)")
    return 1 if sup.failed else 0


class Supervision:
    """One `minutecast run`'s services and what the loop knows of them (:meth:`tick` every 0.5 s)."""

    ORDER = {"produce": 0, "stream": 1, "infer": 2, "train": 3, "web": 4}  # stop order: sources first

    def __init__(self, args: argparse.Namespace, s: Any, screen: Screen, services: list[Service],
                 trainer: Service | None) -> None:
        self.args, self.s, self.say = args, s, screen.say
        self.services, self.trainer = services, trainer
        self.producer = next(x for x in services if x.name == "produce")  # a replay ends: the trainer may start
        self.run_dir, self.logs = s.home / "run", s.logs_dir
        for svc in [*services, *([trainer] if trainer else [])]:
            svc.budget = RestartBudget(s.restart_max, s.restart_healthy_s)
        self.outages = None if args.fake_services else Outages(s)
        self.stopping = False
        self.failed: list[str] = []
        self.t0 = time.monotonic()
        self.next_summary = math.inf if args.fake_services else self.t0 + 5
        self.train_after = self.t0 + 120  # live sources: give the producer two minutes of bars before a first training
        self.warmed_up = False  # a live replay has published its history
        self.hvd_wait = self.hvd_said = ""  # #26: what the trainer waits for (infra/horovod_build.py), what was said

    def request_stop(self, _sig: int, _frame: object) -> None:
        self.stopping = True

    def start(self, source: str, url: str | None) -> None:
        for svc in self.services:
            self._start(svc)
        self.say(f"running: {', '.join(x.name for x in self.services)} (source {source}); logs in {self.logs}; "
                 "Ctrl-C stops")
        if url:
            self.say(f"dashboard: {url}")

    def tick(self) -> None:
        """One pass: each service's exit handled, the trainer started when due, the summary line, --for."""
        now = time.monotonic()
        for svc in self.services:
            if not svc.done and svc.proc is not None and not self.watch(svc, now):
                break
        self.start_trainer_when_due()
        self.summarise()
        if self.args.duration and time.monotonic() - self.t0 >= self.args.duration:
            self.stopping = True

    def watch(self, svc: Service, now: float) -> bool:
        """Restart ``svc`` once its back-off is over; handle its exit (finished, an outage, a crash). False when
        it is given up on (the run stops)."""
        if svc.restart_at is not None:  # crashed, waiting out its back-off
            if now >= svc.restart_at:
                self._start(svc)
            return True
        rc = svc.proc.poll() if svc.proc is not None else None
        if rc is None:
            return True
        svc.ended()
        if svc.oneshot and rc == 0:
            svc.done = True
            mark_done(self.run_dir, self.s.namespace, svc.name)
            self.say(f"{svc.name}: finished")
            return True
        return self.restart_later(svc, rc, now)

    def restart_later(self, svc: Service, rc: int, now: float) -> bool:
        """A service that exited: restart it after an outage (free) or its back-off; give up past its budget."""
        away = self.outages.outage() if self.outages else {}
        if away:  # a dependency is away: not a crash of ours, restarted without spending its budget
            svc.budget.crashed(outage=True)
            svc.restart_at = now + OUTAGE_RESTART_S
            self.say(f"{svc.name}: exited {rc} while {describe(away, '{name} is away (since {since})')}; "
                     f"restart in {OUTAGE_RESTART_S:g} s (not counted against its restart budget)")
            return True
        if not svc.budget.crashed():
            self.failed.append(svc.name)
            self.say(f"{svc.name}: exited {rc}, crash {svc.budget.restarts} in a row, over its budget of "
                     f"{svc.budget.max_restarts} restarts; giving up (see {self.logs}/{svc.name}.log)")
            self.stopping = True
            return False
        svc.restart_at = now + svc.budget.backoff_s()
        self.say(f"{svc.name}: exited {rc}; restart {svc.budget.restarts}/{svc.budget.max_restarts} in "
                 f"{svc.budget.backoff_s():g} s")
        return True

    def start_trainer_when_due(self) -> None:
        """The first training starts once the producer has its history in (a replay finished, a live replay
        went live) or two minutes passed, and horovod is built (#26: it may still build in the background)."""
        trainer = self.trainer
        due = self.producer.done or self.warmed_up or time.monotonic() > self.train_after
        self.hvd_wait = "" if trainer is None or trainer.proc is not None else horovod_build.waiting_text()
        if due and self.hvd_wait and self.hvd_wait != self.hvd_said:
            self.hvd_said = self.hvd_wait
            self.say(f"train: {self.hvd_wait}")
        if trainer is not None and trainer.proc is None and due and not self.hvd_wait:
            self.services.append(trainer)
            self._start(trainer)
            self.say(f"train: started (first model on what is in Kafka, then every {self.args.retrain_every})")

    def summarise(self) -> None:
        """Every --summary-every s: the summary line; notes a live replay's warm-up; --until-forecasts."""
        now = time.monotonic()
        if now < self.next_summary:
            return
        self.next_summary = now + self.args.summary_every
        line, info = summary_line(self.s, self.outages)
        self.say(line + (f" | {self.hvd_wait}" if self.hvd_wait else ""))  # #26: the trainer waits for horovod
        if info:
            self.warmed_up = self.warmed_up or info["replay"].get("phase") == "live"
            if self.args.until_forecasts and info["tickers_forecast"] >= self.args.until_forecasts:
                self.say(f"{info['tickers_forecast']} tickers have forecasts; stopping as asked")
                self.stopping = True

    def stop(self) -> None:
        self.say("stopping: " + ", ".join(x.name for x in reversed(self.services)))
        for svc in sorted(self.services, key=lambda x: self.ORDER.get(x.name, 9)):
            svc.stop(self.run_dir, self.s.namespace, self.s.stop_grace_s)

    def _start(self, svc: Service) -> None:
        svc.start(self.logs, self.run_dir, self.s.namespace, self.s.stop_grace_s)
