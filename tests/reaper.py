"""Stray test processes can never outlive the test session.

Service tests start workers, agents and private servers in their own sessions
(``start_new_session=True``), so a signal to pytest's process group does not reach them. Each such
process is registered here with :func:`reaped`; its process group is killed

- at the end of the test session (``tests/conftest.py``), and at interpreter exit (``atexit``);
- by a small watchdog process when pytest dies without running either (SIGKILL, ``os._exit`` from
  a timeout): the watchdog waits for EOF on a pipe only pytest holds, then reads the groups from
  a file and kills them.

A group is killed only if it is still ours: its leader is alive with the start time recorded at
registration, or the leader has exited and members of its group remain (Linux does not reuse a
pid while a process group of that id exists).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, TypeVar

P = TypeVar("P", bound="subprocess.Popen[bytes]")

_WATCHDOG = r"""
import os, signal, sys
sys.stdin.buffer.read()  # EOF: the test session is gone, however it ended
sys.path.insert(0, sys.argv[2])
from tests.reaper import kill_recorded_groups
kill_recorded_groups(sys.argv[1])
os.unlink(sys.argv[1])
"""

_groups_file: Path | None = None
_watchdog: subprocess.Popen[bytes] | None = None
_watchdog_pipe: IO[bytes] | None = None


def reaped(proc: P) -> P:
    """Register ``proc`` (started with ``start_new_session=True``) for reaping; returns it."""
    register_group(proc.pid)
    return proc


def register_group(pgid: int | None) -> None:
    """Record process group ``pgid`` (its leader's pid) so the session end kills it; None (a
    server that is not running) is ignored."""
    if pgid is None:
        return
    start = _start_time(pgid)
    if start is None:  # already gone
        return
    path = _ensure_watchdog()
    with path.open("a") as f:
        f.write(f"{pgid} {start}\n")


def reap_all() -> list[int]:
    """Kill every recorded group that is still ours; returns the groups signalled."""
    if _groups_file is None:
        return []
    return kill_recorded_groups(str(_groups_file))


def kill_recorded_groups(groups_file: str) -> list[int]:
    killed = []
    try:
        lines = Path(groups_file).read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        pgid_s, start_s = line.split()
        pgid, start = int(pgid_s), int(start_s)
        if _still_ours(pgid, start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pgid, os.WNOHANG)
    return killed


def _still_ours(pgid: int, start: int) -> bool:
    leader_start = _start_time(pgid)
    if leader_start is not None:
        return leader_start == start
    return _group_has_members(pgid)


def _start_time(pid: int) -> int | None:
    """Process start time (clock ticks since boot) from /proc; None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[19])  # field 22 of stat; fields here start at field 3


def _group_has_members(pgid: int) -> bool:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def _ensure_watchdog() -> Path:
    global _groups_file, _watchdog, _watchdog_pipe
    if _groups_file is not None and _watchdog is not None and _watchdog.poll() is None:
        return _groups_file
    fd, name = tempfile.mkstemp(prefix="accelpilot-test-groups-", suffix=".txt")
    os.close(fd)
    _groups_file = Path(name)
    repo = str(Path(__file__).resolve().parents[1])
    _watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, name, repo],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not hit by a signal to pytest's group
    )
    _watchdog_pipe = _watchdog.stdin
    atexit.register(reap_all)
    return _groups_file


def close_watchdog() -> None:
    """End of session: reap now, then let the watchdog go (it reaps once more and exits)."""
    global _watchdog, _watchdog_pipe, _groups_file
    reap_all()
    if _watchdog_pipe is not None:
        with contextlib.suppress(OSError):
            _watchdog_pipe.close()
    if _watchdog is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _watchdog.wait(timeout=10)
    _watchdog = _watchdog_pipe = _groups_file = None
