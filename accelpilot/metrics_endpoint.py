"""A Prometheus ``/metrics`` endpoint for one of our processes (the agent's, the worker's).

One place for what both do beyond ``prometheus_client``'s defaults: their private registries
carry the standard process and runtime metrics too (:func:`process_registry`:
``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``python_gc_*``, ...; a
private registry has none of them by itself), so that CPU per device-sample can be watched in
production as the bench measures it; and a port that cannot be served (in use, not allowed) is a
:class:`~accelpilot.errors.ConfigError` that names the setting and says what to do, not a bare
``OSError`` traceback.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from accelpilot.errors import ConfigError


def process_registry() -> CollectorRegistry:
    """A private registry with this process's standard metrics (CPU, memory, file descriptors,
    start time; the collector's runs per generation; the Python version)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


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
