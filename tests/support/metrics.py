"""Reading a service's Prometheus ``/metrics`` page, for tests of the real worker and job."""

from __future__ import annotations

import urllib.request


def scrape(port: int) -> dict[str, float]:
    """Every sample on ``http://127.0.0.1:<port>/metrics``: the sample's name with its labels -> value."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()  # noqa: S310
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
            if line and not line.startswith("#")}


def metric(port: int, name: str) -> float:
    """The value of the unlabelled sample ``name`` on that page (KeyError if there is none)."""
    return scrape(port)[name]
