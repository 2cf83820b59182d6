"""Start, find and stop the stack's background server processes (pid files, logs, signals)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from accelpilot.errors import StackError


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file`` if that process is still alive and is the one we started.

    The pid file records ``pid`` and the process's command line; a recycled pid (another program
    now) or a zombie counts as dead.
    """
    try:
        recorded = pid_file.read_text().split("\n", 1)
        pid = int(recorded[0].strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return None
    if state == "Z":
        return None
    if len(recorded) > 1 and recorded[1].strip() and cmdline != _cmdline_bytes(recorded[1]):
        return None
    return pid


def _cmdline_bytes(recorded: str) -> bytes:
    return bytes.fromhex(recorded.strip())


def start_daemon(
    step: str,
    argv: Sequence[str],
    pid_file: Path,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` in its own session, detached, logging to ``log_file``; record its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
    except OSError as e:
        raise StackError(step, f"cannot start {argv[0]}: {e}") from e
    # Same bytes as /proc/PID/cmdline, so a recycled pid is never mistaken for ours.
    cmdline = b"".join(a.encode() + b"\0" for a in argv)
    pid_file.write_text(f"{proc.pid}\n{cmdline.hex()}\n")
    return proc.pid


def stop_pid(pid_file: Path, timeout_s: float = 30.0) -> bool:
    """SIGTERM the recorded process, SIGKILL it after ``timeout_s``. True if one was running."""
    pid = read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    # Wait for the process itself, not for its pid file to stop matching: an exiting process
    # has released its memory (/proc/PID/cmdline reads empty) while it still holds its files
    # and ports, and a server restarted then failed to start beside it.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        _reap(pid)
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
    pid_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (whatever its command line reads now)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def log_tail(log_file: Path, lines: int = 15) -> str:
    try:
        text = log_file.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])
