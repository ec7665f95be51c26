"""Stopping child processes we started, and only those.

Every long-lived child (model servers, training stages, workers) is started with `start_new_session=True`, which
makes it the leader of its own process group: the group id is its pid, and every process in that group is one it
spawned. Stopping it means signalling that group, never anything else.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time


def exited_unreaped(pid: int) -> bool:
    """True once `pid` (our child) has exited; it stays a zombie (not reaped), so its pid cannot be reused yet."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def stop_process_group(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the group `process` leads, give it `grace_s` to save and exit, SIGKILL what is left, then reap.

    The leader is reaped only after the final SIGKILL sweep, so its pid (= the group id) cannot be taken by an
    unrelated process while we still signal the group. A process already reaped is left alone.
    """
    if process.returncode is not None:  # reaped: its pid may belong to someone else now
        return
    pgid = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not exited_unreaped(pgid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # stragglers in the group, or a leader that ignored SIGTERM
    process.wait(timeout=30)


def die_with_parent() -> None:
    """In a child process: ask Linux to SIGTERM it when the thread that started it dies, so a parent killed with
    SIGKILL leaves no orphan behind (model servers, orchestrator processes). Elsewhere this is a no-op."""
    if sys.platform != "linux":
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
