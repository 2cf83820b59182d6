"""The test-session reaper (tests/reaper.py) with real processes: registered groups die with the
session, even when the session is SIGKILLed; a process that is not ours is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests import reaper

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_dead(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _group_with_child() -> tuple[subprocess.Popen[bytes], int]:
    """A session leader (sh) with a background child; returns it and the child's pid."""
    proc = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; wait"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_reap_all_kills_the_whole_registered_group() -> None:
    proc, child = _group_with_child()
    try:
        reaper.reaped(proc)
        assert proc.pid in reaper.reap_all()
        proc.wait(timeout=10)
        assert _wait_dead([child], 10) == []
    finally:
        reaper.close_watchdog()


def test_a_group_whose_leader_is_another_process_now_is_left_alone(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        record = tmp_path / "groups.txt"
        record.write_text(f"{proc.pid} 1\n")  # same pid, different start time: not ours
        assert reaper.kill_recorded_groups(str(record)) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_groups_die_even_when_the_session_is_sigkilled(tmp_path: Path) -> None:
    fake_session = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "from tests import reaper\n"
            "p = reaper.reaped(subprocess.Popen(['sh', '-c', 'sleep 300 & echo $!; wait'],"
            " stdout=subprocess.PIPE, start_new_session=True))\n"
            "print(p.pid, int(p.stdout.readline()), flush=True)\n"
            "time.sleep(300)\n",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert fake_session.stdout is not None
    leader, child = (int(x) for x in fake_session.stdout.readline().split())
    assert _alive(leader) and _alive(child)
    os.killpg(fake_session.pid, signal.SIGKILL)  # no atexit, no fixture teardown
    fake_session.wait()
    assert _wait_dead([leader, child], 15) == []
