"""A live console for real-browser tests: a demo fleet ticking in a thread, the console served
by uvicorn on a free loopback port, and Debian's chromium driven headless by Playwright.

Chromium comes from the distribution (``make browser`` installs it; Playwright's own browser
download needs the internet). Each test leaves a full-page screenshot in
``test-artifacts/browser/`` (gitignored).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError

from accelpilot.console.app import create_app
from accelpilot.console.auth import Auth, parse_tokens
from accelpilot.console.server import ConsoleServer
from accelpilot.console.source import SqliteSource
from accelpilot.demo import Demo, load_demo_scenario

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
TICK_PERIOD_S = 0.25  # 4 simulated ticks per second


@dataclass
class LiveConsole:
    demo: Demo
    url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_console(tmp_path: Path) -> Iterator[LiveConsole]:
    yield from serve(tmp_path, Auth.for_bind("127.0.0.1", ""))


#: Tokens of the "exposed" console (served on loopback, but with token checks on, as when bound
#: to another address: Auth.for_bind would demand them there).
TOKENS = "alice:operator:op-secret-1,wall:viewer:view-secret-1"


@pytest.fixture
def exposed_console(tmp_path: Path) -> Iterator[LiveConsole]:
    yield from serve(tmp_path, Auth(required=True, tokens=parse_tokens(TOKENS)))


def serve(tmp_path: Path, auth: Auth) -> Iterator[LiveConsole]:
    demo = Demo(load_demo_scenario(None), tmp_path, speed=1 / TICK_PERIOD_S, mode="advise")
    for _ in range(15):  # some history before the page opens
        demo.step()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            demo.step()
            stop.wait(TICK_PERIOD_S)

    ticker = threading.Thread(target=loop, name="demo-ticks", daemon=True)
    ticker.start()
    server = ConsoleServer(
        create_app(demo, SqliteSource(demo.store), auth),
        "127.0.0.1",
        free_port(),
    )
    server.start()
    try:
        yield LiveConsole(demo, server.url)
    finally:
        stop.set()
        ticker.join(timeout=10)
        server.stop()


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        pg = browser.new_page(viewport={"width": 1600, "height": 1300})
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(20_000)
        try:
            yield pg
            assert errors == [], f"JavaScript errors on the page: {errors}"
        finally:
            pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            browser.close()


def wait_for(predicate: object, timeout_s: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate()`` (a callable) until it is true.

    A predicate that cannot be evaluated yet (the page's state is still ``null`` before its
    first poll: a comparison with ``None`` or a JS TypeError) counts as false, not as a failure.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (TypeError, PlaywrightError) as e:
            last_error = e
        time.sleep(0.2)
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {what}"
        + (f" (last error: {last_error})" if last_error else "")
    )
