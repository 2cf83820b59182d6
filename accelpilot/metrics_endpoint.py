"""A Prometheus ``/metrics`` endpoint for one of our processes (the agent's, the worker's).

One place for the one thing both do differently from ``prometheus_client``'s default: a port
that cannot be served (in use, not allowed) is a :class:`~accelpilot.errors.ConfigError` that
names the setting and says what to do, not a bare ``OSError`` traceback.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

from accelpilot.errors import ConfigError


def serve_metrics(
    registry: CollectorRegistry, port: int, addr: str, *, setting: str, advice: str
) -> None:
    """Serve ``registry`` on ``addr:port`` from a daemon thread, or raise ConfigError naming
    ``setting`` (e.g. ``agent.metrics_port``) with ``advice``."""
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as e:
        raise ConfigError(
            f"{setting}: cannot serve /metrics on {addr}:{port} ({e.strerror}); {advice}"
        ) from e
