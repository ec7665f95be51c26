"""GPU slots are leased: a process killed while holding them gives them back once its lease expires."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.prefect import prefect_cli_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_holder_does_not_leak_its_gpu_slots(prefect_server, prefect_server_home):
    from toaflow.commands.deploy import ensure_gpu_limit

    ensure_gpu_limit(prefect_server, 2)
    env = prefect_cli_env(prefect_server, prefect_server_home)
    holder = subprocess.Popen(
        [sys.executable, "-c", "from tasks.gpu import gpu_slot\nimport time\n"
                               "with gpu_slot('holder', slots=2):\n    print('held', flush=True)\n    time.sleep(600)\n"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGKILL)  # no release, no more renewals
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=30)
    started = time.monotonic()
    probe = ("from tasks.gpu import gpu_slot\n"
             "with gpu_slot('after the kill', slots=2, timeout_s=300):\n    print('granted')\n")
    granted = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=400)
    assert granted.returncode == 0 and "granted" in granted.stdout, granted.stderr[-3000:]
    assert time.monotonic() - started < 300  # within the lease (60 s) and the server's repossessor loop
