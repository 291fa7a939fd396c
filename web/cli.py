"""`minutecast serve`: the read-only HTTP API and the live dashboard (FastAPI under uvicorn).

    minutecast serve                                        # http://127.0.0.1:8080/ (MINUTECAST_SERVE_PORT)
    minutecast serve --port 8081
    MINUTECAST_SERVE_TOKEN=... minutecast serve --host 0.0.0.0    # off loopback: bearer token required

The dashboard is at ``/``, the API under ``/api`` (OpenAPI at ``/docs``), ``/healthz`` and ``/metrics`` beside
them. Off loopback open the dashboard as ``http://host:port/?token=...`` (the page keeps it for its requests).
"""

from __future__ import annotations

import argparse

import uvicorn

from minutecast.flags import Flag, add_flags, settings_from
from minutecast.settings import WebSettings
from web.app import create_app

# Field of WebSettings -> its flag (minutecast.flags).
FLAGS = {
    "serve_host": Flag("--host", str, "address to bind (default MINUTECAST_SERVE_HOST, 127.0.0.1)", dest="host"),
    "serve_port": Flag("--port", int, "port (default MINUTECAST_SERVE_PORT, 8080)", dest="port"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, FLAGS)
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")


def settings(args: argparse.Namespace) -> WebSettings:
    """WebSettings from the environment with --host/--port applied; a bad combination is a ConfigError."""
    return settings_from(WebSettings, args, FLAGS)


def run(args: argparse.Namespace) -> int:
    s = settings(args)
    app = create_app(s)
    print(f"minutecast serve: dashboard on {s.url()} (API docs {s.url()}docs)", flush=True)
    uvicorn.run(app, host=s.serve_host, port=s.serve_port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=3)
    return 0
