"""Prometheus: the one place a service's ``/metrics`` endpoint is started (host and port from Settings)."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> bool:
    """Serve ``registry`` on http://host:port/metrics; port 0 turns it off. A taken port is logged, not
    fatal: metrics must never take a service down."""
    if port <= 0:
        return False
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("Prometheus metrics not served on %s:%d: %s", host, port, exc)
        return False
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    return True
