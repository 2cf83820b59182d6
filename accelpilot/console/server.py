"""Serve the console with uvicorn in a background thread (the demo's loop keeps the main one)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

from accelpilot.errors import AccelpilotError


class ConsoleServer:
    """``start()`` returns once the socket listens; ``stop()`` asks uvicorn to exit and joins."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="console", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise AccelpilotError(
                    f"the console could not listen on {self.url} (port in use? try --port)"
                )
            if time.monotonic() > deadline:
                raise AccelpilotError(f"the console did not start on {self.url} in {timeout_s} s")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def run_readonly_console(influx_url: str, database: str, host: str, port: int, tokens: str) -> None:
    """``accelpilot console``: the console over the real pipeline's InfluxDB, read-only, until
    Ctrl-C (uvicorn in the foreground)."""
    from accelpilot.console.app import create_app
    from accelpilot.console.auth import Auth
    from accelpilot.console.influx_source import InfluxSource

    auth = Auth.for_bind(host, tokens)
    app = create_app(None, InfluxSource(influx_url, database), auth)
    print(f"console (read-only, InfluxDB {influx_url} db {database}): http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
