"""stop_pid returns only once the server process is gone, however slowly it exits."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from accelpilot.stack import process

# Exits 1.5 s after SIGTERM, as a server finishing its shutdown does.
_SLOW_EXIT = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), sys.exit(0)))\n"
    "time.sleep(60)\n"
)


def test_stop_waits_for_a_slow_exit(tmp_path: Path) -> None:
    pid_file, log = tmp_path / "srv.pid", tmp_path / "srv.log"
    pid = process.start_daemon("test:start", [sys.executable, "-c", _SLOW_EXIT], pid_file, log)
    deadline = time.monotonic() + 10
    while (
        "time.sleep(60)" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    time.sleep(0.3)  # the handler is installed
    t0 = time.monotonic()
    assert process.stop_pid(pid_file, timeout_s=10)
    assert time.monotonic() - t0 >= 1.4
    assert not process._alive(pid)
    assert not pid_file.exists()


def test_stop_of_nothing_running_says_so(tmp_path: Path) -> None:
    assert not process.stop_pid(tmp_path / "none.pid")
