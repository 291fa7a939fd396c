"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by playwright) during a live
pipeline run: `minutecast run` replays two sessions of three tickers as if live (the second at 300x), with the
real Kafka, Redis, Faust worker, Spark job and `minutecast serve`.

    ~/.cache/minutecast/venv/bin/python -m pytest tests/test_web_browser.py -q

The page must show one row per ticker, see a row change through the stream (no reload), draw a ticker's chart
and log no console error. The screenshot is kept in ``artifacts/web/dashboard.png`` (ignored by git).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from minutecast.settings import InfraSettings
from tests.support.recorded import regular_hours_dir
from tests.support.services import free_port
from tests.support.web import chromium_page

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts" / "web"
TICKERS = ("AAPL", "MSFT", "NVDA")
DAYS = ("2025-12-01", "2025-12-02")


@pytest.fixture
def replay_dir(shared_data: Path, tmp_path: Path) -> Path:
    """Regular hours of two trading days of three tickers, in the recorded files' layout."""
    return regular_hours_dir(shared_data, tmp_path / "bars", TICKERS, DAYS)


@pytest.fixture
def pipeline(services: InfraSettings, namespace: str, replay_dir: Path, tmp_path: Path,
             redis_client: object) -> Iterator[dict[str, Any]]:
    """`minutecast run` as a user starts it (its own web server on a free port); stopped with Ctrl-C."""
    env = os.environ | {"MINUTECAST_CHECKPOINT_DIR": str(tmp_path / "checkpoint"), "MINUTECAST_METRICS_PORT": "0",
                        "MINUTECAST_WEB_PORT": "0", "MINUTECAST_SERVE_PORT": str(free_port())}
    proc = subprocess.Popen([sys.executable, "-m", "minutecast.cli", "run", "--source", "replay", "--replay-data",
                             str(replay_dir), "--no-train", "--speed", "300", "--summary-every", "3", "--for", "400"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    url = None
    while url is None:
        line = lines.get(timeout=120)
        match = re.search(r"dashboard: (http://\S+)", line)
        url = match.group(1) if match else None
        assert "taken" not in line, line
    try:
        yield {"url": url, "out": seen, "proc": proc}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        for name in ("web", "infer", "stream", "produce"):
            log = services.logs_dir / f"{name}.log"
            if log.exists():
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, ARTIFACTS / f"{name}.log")


@retry(wait=wait_fixed(1), stop=stop_after_delay(240), retry=retry_if_exception_type((AssertionError, httpx.HTTPError)),
       reraise=True)
def wait_for_forecasts(url: str, n: int) -> dict[str, Any]:
    r = httpx.get(url + "api/forecasts", timeout=5)
    assert r.status_code == 200 and r.json()["count"] >= n, r.text[:300]
    return r.json()


def test_dashboard_shows_live_forecasts_and_a_chart(pipeline: dict[str, Any]) -> None:
    url = pipeline["url"]
    try:
        wait_for_forecasts(url, len(TICKERS))
    except (AssertionError, httpx.HTTPError) as exc:
        pytest.fail(f"no forecasts for {TICKERS} on {url}: {exc}\n{''.join(pipeline['out'])[-3000:]}")
    errors: list[str] = []
    with sync_playwright() as pw, chromium_page(pw, errors) as page:
        page.goto(url)
        page.wait_for_function(f"document.querySelectorAll('#forecasts tbody tr').length === {len(TICKERS)}",
                               timeout=20_000)
        rows = page.eval_on_selector_all("#forecasts tbody tr",
                                         "rs => rs.map(r => [r.dataset.ticker, r.dataset.asOf])")
        assert sorted(t for t, _ in rows) == sorted(TICKERS)
        page.wait_for_selector("#live.on", timeout=20_000)
        # A row changes through the stream (the page is not reloaded).
        before = dict(rows)
        page.wait_for_function(
            "(before) => [...document.querySelectorAll('#forecasts tbody tr')]"
            ".some(r => Number(r.dataset.asOf) > Number(before[r.dataset.ticker]))", arg=before, timeout=60_000)
        # A ticker's chart is drawn: a canvas with ink on it and the points from the API.
        page.click("#row-MSFT")
        page.wait_for_function("document.querySelector('#chart').dataset.ticker === 'MSFT' && "
                               "Number(document.querySelector('#chart').dataset.points) > 5", timeout=20_000)
        ink = page.evaluate("""() => {
            const c = document.querySelector('#chart canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n; }""")
        assert ink > 2000, f"the chart canvas is (nearly) blank: {ink} pixels"
        assert "MSFT" in page.inner_text("#chart-title")
        page.wait_for_function("document.querySelector('#pipeline-body dl') !== null", timeout=20_000)
        assert "kafka" in page.inner_text("#pipeline-body")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
    assert not errors, errors
    assert "dashboard: http://127.0.0.1:" in "".join(pipeline["out"])
