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
