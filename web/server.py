"""uvicorn in a background thread: how tests and the API benchmark run the real server in-process.

    with BackgroundServer(WebSettings(serve_port=free_port())) as url:
        httpx.get(url + "api/forecasts")
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
import uvicorn
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed

from minutecast.errors import ServiceUnavailable
from minutecast.settings import WebSettings
from web.app import create_app


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class BackgroundServer:
    """``create_app(settings)`` served by uvicorn on 127.0.0.1:``settings.serve_port`` until the block ends.
    Entering waits until ``/healthz`` answers 200 (Redis up, SSE consumer assigned)."""

    def __init__(self, settings: WebSettings, timeout_s: float = 60.0) -> None:
        self.settings, self.timeout_s = settings, timeout_s
        self.app = create_app(settings)
        self.url = f"http://127.0.0.1:{settings.serve_port}/"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=settings.serve_port, log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        token = self.settings.serve_token

        @retry(wait=wait_fixed(0.2), stop=stop_after_delay(self.timeout_s),
               retry=retry_if_exception_type((httpx.HTTPError, ServiceUnavailable)), reraise=True)
        def healthy() -> None:
            if not self.thread.is_alive():
                raise ServiceUnavailable("the server thread exited")
            headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
            r = httpx.get(self.url + "healthz", timeout=2, headers=headers)
            if r.status_code != 200:
                raise ServiceUnavailable(f"/healthz: {r.status_code} {r.text[:200]}")

        healthy()
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
