"""A private InfluxDB server for one test (free ports chosen at run time, data in the test's
temporary directory), so a test may stop and restart it without disturbing the shared one."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelpilot.config import Settings, load_settings
from accelpilot.stack.influxdb import InfluxServer
from tests.reaper import register_group


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on now (held open together while choosing)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def start(server: InfluxServer) -> None:
    """Start (or restart, on the same ports and data) and wait until /health passes."""
    server.start()
    pid = server.pid()
    if pid is not None:
        register_group(pid)  # started in its own session: reaped with the test session
    server.wait_ready()


@contextmanager
def private_influx(
    settings: Settings, run_dir: Path | None = None, database: str = "private"
) -> Iterator[tuple[Settings, InfluxServer]]:
    """``settings`` pointed at a fresh influxd of our own (its database created); stopped after.

    Its files live in a directory of its own, outside pytest's ``tmp_path``: pytest sessions
    running side by side on one machine prune each other's old temporary directories, and a
    pid file deleted under a running server would leave it unstoppable."""
    own_dir = Path(tempfile.mkdtemp(prefix="accelpilot-influxd-")) if run_dir is None else run_dir
    http_port, rpc_port = free_ports(2)
    own = load_settings(
        kafka=settings.kafka.model_dump(),
        worker=settings.worker.model_dump(),
        influx={"url": f"http://127.0.0.1:{http_port}", "database": database},
        stack={"run_dir": str(own_dir), "influx_port": http_port, "influx_rpc_port": rpc_port},
    )
    server = InfluxServer(own)
    try:
        start(server)
        server.create_database()
        yield own, server
    finally:
        server.stop()
        if run_dir is None:
            shutil.rmtree(own_dir, ignore_errors=True)
