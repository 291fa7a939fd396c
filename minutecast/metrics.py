"""Prometheus: the one place a service's ``/metrics`` endpoint is started (host and port from Settings); every
endpoint carries ``minutecast_dependency_up{dependency}``."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from minutecast import dependency

log = logging.getLogger(__name__)
_WITH_DEPENDENCIES: set[int] = set()  # id() of the registries that carry minutecast_dependency_up


def register_dependencies(registry: CollectorRegistry = REGISTRY) -> None:
    """Add ``minutecast_dependency_up{dependency}`` (this process's view of Kafka and Redis, see
    :mod:`minutecast.dependency`) to ``registry``, once."""
    if id(registry) not in _WITH_DEPENDENCIES:
        registry.register(dependency.Collector())
        _WITH_DEPENDENCIES.add(id(registry))


def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY) -> bool:
    """Serve ``registry`` on http://host:port/metrics; port 0 turns it off. A taken port is logged, not
    fatal: metrics must never take a service down."""
    if port <= 0:
        return False
    register_dependencies(registry)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("Prometheus metrics not served on %s:%d: %s", host, port, exc)
        return False
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    return True
