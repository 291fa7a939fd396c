"""Helpers of the web tests: a uuid namespace with its topics (removed afterwards) and Debian's headless Chromium
driven by playwright, with every console error, page error and failed request collected."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from minutecast.kafka import delete_namespace_topics, ensure_topics
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.settings import InfraSettings
from minutecast.topics import Topics
from tests.support.services import unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def web_namespace(services: InfraSettings) -> Iterator[tuple[str, Topics, Keys, Any]]:
    """``(namespace, topics, keys, redis)`` of a fresh uuid namespace with its topics; its keys and topics are
    removed when the block ends."""
    ns = f"t{uuid.uuid4().hex[:12]}"
    topics, keys = Topics(ns), Keys(ns)
    ensure_topics(services.kafka, topics.specs(bar_partitions=3))
    redis = connect(services.redis)
    try:
        yield ns, topics, keys, redis
    finally:
        for k in list(redis.scan_iter(match=keys.namespace_pattern(), count=1000)):
            redis.delete(k)
        delete_namespace_topics(services.kafka, ns)


@contextlib.contextmanager
def chromium_page(pw: Any, errors: list[str]) -> Iterator[Any]:
    """A 1400x900 page of a headless Chromium; console errors, page errors and failed requests go to ``errors``."""
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} not installed (apt package chromium; `make setup` installs it)")
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        yield page
    finally:
        browser.close()
