"""`toa synthesize` killed with SIGKILL while it samples, then run again with the same run id: the rerun
completes, no prompt is duplicated or missing, and the only generations requested twice are those of the
prompts that were in flight at the kill (finished prompts are checkpointed and never searched again)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from infra.store import open_store
from tests.faults.helpers import REPO, TOA, samples_table, toa_env, write_config, write_prompts
from tests.fixtures.prefect import prefect_cli_env
from tests.fixtures.waiting import wait_for

N_PROMPTS, BUDGET, CONCURRENCY = 12, 6, 3


def checkpoints(store_root: Path, run_id: str) -> int:
    return len(list((store_root / "runs" / run_id / "checkpoints").glob("shard-*/*.parquet")))


# One kill point by default; the other two (the same scenario, the kill landing elsewhere) in the slow tier.
@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_sigkill_then_rerun_loses_only_prompts_in_flight(seed, tmp_path, load_servers, prefect_server,
                                                         prefect_server_home):
    # ~80 ms per generation, so a prompt takes about half a second and the kill lands mid-shard.
    server = load_servers(token_delay_ms=5, response_tokens=16, seed=seed)
    store_root = tmp_path / "store"
    config = write_config(tmp_path / "config.yaml", prompts=write_prompts(tmp_path / "prompts.jsonl", N_PROMPTS),
                          store={"root": str(store_root)}, budget=BUDGET, shard_size=N_PROMPTS,
                          prompt_concurrency=CONCURRENCY,
                          agents=[{"name": n, "url": server.base_url} for n in "abc"])
    env = toa_env(**prefect_cli_env(prefect_server, prefect_server_home))
    args = [str(TOA), "synthesize", "--config", str(config), "--run-id", "killed"]
    kill_at = random.Random(seed).randint(1, N_PROMPTS - CONCURRENCY - 1)

    process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        wait_for(lambda: checkpoints(store_root, "killed") >= kill_at or process.poll() is not None, 150,
                 f"{kill_at} checkpoints")
        assert process.poll() is None, f"the run ended before the kill: {process.stderr.read().decode()[-2000:]}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        process.stderr.close()
    checkpointed = checkpoints(store_root, "killed")
    assert checkpointed < N_PROMPTS
    # Requests the dead client had sent are still counted by the server once it has read them.
    wait_for(lambda: server.stats()["in_flight"] == 0, 30, "the server to finish the dead client's requests")
    received_at_kill = server.stats()["received"]
    in_flight_work = received_at_kill - checkpointed * BUDGET  # generations of prompts not checkpointed
    assert 0 <= in_flight_work <= CONCURRENCY * BUDGET

    rerun = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    store = open_store(str(store_root))
    rows = samples_table(store, "killed")
    per_prompt = Counter(row["prompt_id"] for row in rows)
    assert len(per_prompt) == N_PROMPTS and set(per_prompt.values()) == {BUDGET}  # none missing, none twice
    assert len({row["candidate_id"] for row in rows}) == len(rows)
    rerun_requests = server.stats()["received"] - received_at_kill
    assert rerun_requests == (N_PROMPTS - checkpointed) * BUDGET  # checkpointed prompts were not searched again
    re_requested = received_at_kill + rerun_requests - N_PROMPTS * BUDGET
    assert re_requested == in_flight_work <= CONCURRENCY * BUDGET
    manifest = store.read_json("runs/killed/manifest.json")
    assert manifest["stages"]["sample"]["counts"]["prompts_resumed_from_checkpoints"] == checkpointed
    assert manifest["stages"]["rank"]["status"] == "finished"
