"""tools/reward_server.py: a reward model vLLM cannot serve (ArmoRM) behind vLLM's /classify protocol scores what
the in-process reward scores, for the HTTP reward client."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fixtures.prefect import free_port, stop_process
from tests.fixtures.waiting import wait_healthy
from toa_core.config import RetryConfig
from toa_core.rewards.hf_classifier import HFClassifierReward
from toa_core.rewards.http import HTTPReward

REPO = Path(__file__).resolve().parents[1]
PAIRS = [([{"role": "user", "content": "Name a colour."}], "Blue."),
         ([{"role": "user", "content": "What is 2+2?"}], "It is 4, because two and two make four.")]


def test_reward_server_scores_like_the_in_process_reward(tmp_path, tiny_reward_dir):
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, str(REPO / "tools" / "reward_server.py"), "--model",
                               str(tiny_reward_dir), "--served-model-name", "rm", "--port", str(port),
                               "--device", "cpu", "--dtype", "float32"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_healthy(server, f"http://127.0.0.1:{port}/health", tmp_path / "server.log", 120, "reward server")
        bad = httpx.post(f"http://127.0.0.1:{port}/classify", json={"model": "rm", "messages": PAIRS[0][0]})
        assert bad.status_code == 400

        async def over_http():
            reward = HTTPReward([f"http://127.0.0.1:{port}/v1"], "rm", retry=RetryConfig(max_attempts=2))
            try:
                return await reward.score_batch(PAIRS)
            finally:
                await reward.aclose()

        served = asyncio.run(over_http())
    finally:
        stop_process(server)
        log.close()
    in_process = HFClassifierReward(tiny_reward_dir, device="cpu", dtype="float32")
    assert served == pytest.approx(asyncio.run(in_process.score_batch(PAIRS)), abs=1e-4)


def test_reward_server_serves_a_remote_code_model_written_for_transformers_4(remote_code_reward_dir):
    """ArmoRM's case: --trust-remote-code code that imports LLAMA_INPUTS_DOCSTRING loads (the shim) and scores."""
    import importlib.util

    from fastapi.testclient import TestClient

    spec = importlib.util.spec_from_file_location("reward_server", REPO / "tools" / "reward_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module.build_app(str(remote_code_reward_dir), head="score", trust_remote_code=True, max_length=256,
                           batch_size=4, batch_wait_ms=1.0, device="cpu", dtype="float32", served_name="gated")
    with TestClient(app) as client:
        answer = client.post("/classify", json={"model": "gated", "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]})
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["data"][0]["probs"][0], float)
