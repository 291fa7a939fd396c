"""`minutecast serve`'s API against the real Redis and Kafka: one uvicorn server (in-process thread) on a uuid
namespace for the module; forecasts are written in the Spark job's Redis layout and produced on the real
forecasts topic.

    ~/.cache/minutecast/venv/bin/python -m pytest tests/test_web_api.py -q
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from benchmarks.api import make_forecast, store_forecast
from minutecast.cli import main
from minutecast.kafka import make_producer
from minutecast.keys import Keys
from minutecast.settings import InfraSettings, WebSettings
from minutecast.topics import Topics
from ops import status
from tests.support.services import free_port
from tests.support.web import web_namespace
from web.server import BackgroundServer

pytestmark = pytest.mark.integration

TICKERS = ("AAPL", "MSFT", "BRK-B")
HISTORY = 30


@pytest.fixture(scope="module")
def env(services: InfraSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A namespace with topics and forecasts (AAPL v2 with quantiles, the others v1), reports, a server."""
    with web_namespace(services) as (ns, topics, keys, redis):
        yield from serve(ns, topics, keys, redis, services, tmp_path_factory.mktemp("reports"))


def serve(ns: str, topics: Topics, keys: Keys, redis: Any, services: InfraSettings,
          reports: Path) -> Iterator[dict[str, Any]]:
    """Forecasts of every ticker in Redis, a latest report, the server on the namespace."""
    t0 = int(time.time()) // 60 * 60 - 60 * HISTORY
    pipe = redis.pipeline(transaction=False)
    for t in TICKERS:
        for i in range(HISTORY):
            store_forecast(pipe, keys, make_forecast(t, t0 + 60 * i, 100 + 0.05 * i, v2=t == "AAPL"))
    pipe.execute()
    (reports / "latest").mkdir()
    (reports / "latest" / "report.md").write_text("# report\n")
    (reports / "latest" / "pred.png").write_bytes(b"\x89PNG\r\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINUTECAST_NAMESPACE", ns)
        s = WebSettings(namespace=ns, serve_port=free_port(), serve_tickers_refresh_s=0.2, reports_dir=reports,
                        serve_status_cache_s=0.0)
        with BackgroundServer(s) as url:
            yield {"url": url, "ns": ns, "topics": topics, "keys": keys, "redis": redis, "t0": t0,
                   "kafka": services.kafka, "settings": s}


def get(env: dict[str, Any], path: str, **kw: Any) -> httpx.Response:
    return httpx.get(env["url"] + path.lstrip("/"), timeout=10, **kw)


def test_latest_of_every_ticker_with_v1_and_v2_fields(env: dict[str, Any]) -> None:
    r = get(env, "/api/forecasts")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    by = {f["ticker"]: f for f in body["forecasts"]}
    assert set(by) == set(TICKERS) and body["count"] == len(TICKERS)
    aapl, msft = by["AAPL"], by["MSFT"]
    assert aapl["as_of"] == env["t0"] + 60 * (HISTORY - 1) and aapl["horizon_min"] == 5
    assert aapl["move_bp"] == pytest.approx((aapl["predicted_close"] / aapl["last_close"] - 1) * 1e4, abs=1e-3)
    assert aapl["interval80"] == [aapl["q10"], aapl["q90"]] and aapl["interval90"] == [aapl["q05"], aapl["q95"]]
    assert "q10" not in msft and "interval80" not in msft  # v1: no interval, still served
    assert 0 <= msft["age_s"] < 600 and body["now"] == pytest.approx(time.time(), abs=30)
    only = get(env, "/api/forecasts", params={"tickers": "msft,BRK-B"}).json()
    assert sorted(f["ticker"] for f in only["forecasts"]) == ["BRK-B", "MSFT"]


def test_one_ticker_with_history_and_chart(env: dict[str, Any]) -> None:
    r = get(env, "/api/forecasts/AAPL", params={"history": 12})
    assert r.status_code == 200
    body = r.json()
    assert body["ticker"] == "AAPL" and body["latest"]["as_of"] == env["t0"] + 60 * (HISTORY - 1)
    hist = body["history"]
    assert len(hist) == 12 and [f["as_of"] for f in hist] == sorted(f["as_of"] for f in hist)
    assert hist[-1]["as_of"] == body["latest"]["as_of"]
    chart = body["chart"]
    made = [p for p in chart["points"] if "forecast" in p]
    assert len(chart["points"]) == 12 and len(made) == 12 - 5  # a forecast 5 minutes earlier is in the window
    for p in made:
        assert p["made_at"] == p["t"] - 300 and p["rule"] == "interval80"
        assert p["hit"] == (p["q10"] <= p["actual"] <= p["q90"])
    assert chart["hits"] + chart["misses"] == len(made)
    assert [p["t"] for p in chart["pending"]] == [hist[-1]["as_of"] + 60 * k for k in range(1, 6)]
    v1 = get(env, "/api/forecasts/BRK-B", params={"history": 10}).json()["chart"]
    assert {p.get("rule") for p in v1["points"] if "forecast" in p} == {"direction"}
    assert "history" not in get(env, "/api/forecasts/msft").json()  # lower case accepted, history=0


@pytest.mark.parametrize(("path", "params", "status"), [
    ("/api/forecasts/ZZZZ", {}, 404),
    ("/api/forecasts/AA$B", {}, 422),
    ("/api/forecasts/TOOLONGX", {}, 422),
    ("/api/forecasts/AAPL", {"history": -1}, 422),
    ("/api/forecasts/AAPL", {"history": 121}, 422),
    ("/api/forecasts/AAPL", {"history": "many"}, 422),
    ("/api/forecasts", {"tickers": "AAPL,no good"}, 422),
    ("/api/stream", {"tickers": "$$"}, 422),
    ("/api/nothing", {}, 404),
])
def test_clear_errors_for_unknown_tickers_and_bad_parameters(env: dict[str, Any], path: str,
                                                             params: dict[str, Any], status: int) -> None:
    r = get(env, path, params=params)
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    if path.endswith("ZZZZ"):
        assert "ZZZZ" in r.json()["detail"]


def test_read_only(env: dict[str, Any]) -> None:
    r = httpx.post(env["url"] + "api/forecasts", timeout=10)
    assert r.status_code == 405


def test_stream_delivers_new_forecasts_from_the_topic_with_a_ticker_filter(env: dict[str, Any]) -> None:
    got: list[dict[str, Any]] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", env["url"] + "api/stream", params={"tickers": "AAPL,NVDA"},
                          timeout=httpx.Timeout(10, read=20)) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            connected.set()
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "forecast":
                    got.append(json.loads(line[6:]))
                    if len(got) == 2:
                        return

    th = threading.Thread(target=listen, daemon=True)
    th.start()
    assert connected.wait(10)
    time.sleep(0.3)
    producer = make_producer(env["kafka"], **{"linger.ms": 0})
    as_of = env["t0"] + 60 * HISTORY
    for t in ("MSFT", "AAPL", "BRK-B", "NVDA"):
        producer.produce(env["topics"].forecasts, make_forecast(t, as_of, 101.0).to_json(), t.encode())
    assert producer.flush(10) == 0
    th.join(20)
    assert [f["ticker"] for f in got] == ["AAPL", "NVDA"] or sorted(f["ticker"] for f in got) == ["AAPL", "NVDA"]
    assert all(f["as_of"] == as_of for f in got)
    # NVDA came through the stream: the ticker list of /api/forecasts follows it too once Redis has it.
    assert "NVDA" not in {f["ticker"] for f in get(env, "/api/forecasts").json()["forecasts"]}


def test_status_is_the_status_commands_data(env: dict[str, Any]) -> None:
    api = get(env, "/api/status").json()
    cli = status.collect(sample_s=0.1)
    assert api["namespace"] == cli["namespace"] == env["ns"]
    assert set(cli) <= set(api)
    assert api["services"]["kafka"]["up"] and api["services"]["redis"]["up"]
    assert api["tickers_with_forecast"] == len(TICKERS) and api["dead_letters"]["total"] == 0
    assert api["report"]["report"] == "/reports/latest/report.md"
    assert "/reports/latest/pred.png" in api["report"]["files"]
    assert api["web"]["stream_ready"] is True
    text = status.render(cli)
    assert f"namespace {env['ns']}" in text and "model" in text and "dead letters" in text


def test_reports_health_metrics_and_docs(env: dict[str, Any]) -> None:
    assert get(env, "/reports/latest/report.md").text == "# report\n"
    assert get(env, "/reports/latest/pred.png").status_code == 200
    for bad in ("/reports/../../../etc/passwd", "/reports/%2e%2e/%2e%2e/etc/passwd", "/reports/nope.md"):
        assert get(env, bad).status_code == 404
    health = get(env, "/healthz").json()
    assert health == {"ok": True, "redis": True, "stream": True, "namespace": env["ns"]}
    metrics = get(env, "/metrics").text
    assert 'minutecast_web_requests_total{route="/api/forecasts",status="200"}' in metrics
    assert "minutecast_web_sse_clients" in metrics
    spec = get(env, "/openapi.json").json()
    assert {"/api/forecasts", "/api/forecasts/{ticker}", "/api/status", "/api/stream"} <= set(spec["paths"])
    docs = get(env, "/docs").text
    assert "/static/vendor/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert get(env, "/static/vendor/swagger-ui-bundle.js").status_code == 200
    page = get(env, "/").text
    assert "/static/vendor/uPlot.iife.min.js" in page and "http" not in page.split("<body>")[1].split("</body>")[0]


def test_token_required_off_loopback(env: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="MINUTECAST_SERVE_TOKEN"):
        WebSettings(namespace=env["ns"], serve_host="0.0.0.0")
    assert WebSettings(namespace=env["ns"], serve_host="::1").loopback
    # Settings as for 0.0.0.0 with a token; bound to 127.0.0.1 here so the test opens no outside port.
    s = WebSettings(namespace=env["ns"], serve_host="0.0.0.0", serve_token="s3cret-token",
                    serve_port=free_port(), reports_dir=env["settings"].reports)
    with BackgroundServer(s) as url:
        for path in ("api/forecasts", "api/forecasts/AAPL", "metrics", "reports/latest/report.md"):
            assert httpx.get(url + path, timeout=10).status_code == 401, path
            assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
            ok = httpx.get(url + path, headers={"Authorization": "Bearer s3cret-token"}, timeout=10)
            assert ok.status_code == 200, path
        assert httpx.get(url + "api/forecasts", params={"access_token": "s3cret-token"}, timeout=10).status_code == 200
        assert httpx.get(url + "healthz", timeout=10).status_code == 200  # probes need no token
        assert httpx.get(url, timeout=10).status_code == 200  # the page itself holds no data


def test_serve_cli_refuses_an_open_bind_without_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MINUTECAST_SERVE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 1
