"""Managed model servers: argv built without a GPU; a real `transformers serve` started, health-checked,
restarted after a crash and stopped by its own process group."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from infra.config import ServersConfig, ServerSpec
from infra.servers import ManagedServer, ServerError, managed_servers, server_command
from toa_core.backends.factory import aclose_all, build_agents
from toa_core.config import ModelConfig
from toa_core.interfaces import SamplingParams


def test_vllm_command_line(monkeypatch):
    monkeypatch.setenv("MY_VLLM_KEY", "sk-secret")
    spec = ServerSpec(name="big", kind="vllm", model="meta-llama/Llama-3.1-8B-Instruct", served_model_name="llama",
                      gpus=[2, 3], tensor_parallel_size=2, gpu_memory_utilization=0.85, max_model_len=8192,
                      executable="/opt/vllm/bin/vllm", extra_args=["--enable-prefix-caching"],
                      api_key_env="MY_VLLM_KEY")
    command = server_command(spec, port=8123)
    assert command.argv == [
        "/opt/vllm/bin/vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "127.0.0.1", "--port", "8123",
        "--served-model-name", "llama", "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.85",
        "--max-model-len", "8192", "--generation-config", "vllm", "--enable-prefix-caching"]
    assert command.env == {"CUDA_VISIBLE_DEVICES": "2,3", "VLLM_API_KEY": "sk-secret"}
    assert "sk-secret" not in " ".join(command.argv) and command.model_id == "llama"

    reward = server_command(ServerSpec(name="rm", kind="vllm_reward", model="Skywork/RM", gpus=[0]), port=9000)
    assert reward.argv[-2:] == ["--runner", "pooling"] and reward.model_id == "Skywork/RM"
    assert reward.argv[0] == "vllm" and reward.env == {"CUDA_VISIBLE_DEVICES": "0"}


def test_generation_config_auto_leaves_the_models_sampling_defaults_on():
    neutral = server_command(ServerSpec(name="a", model="org/m"), port=1).argv
    assert neutral[neutral.index("--generation-config") + 1] == "vllm"  # the default: the config's sampling only
    assert "--generation-config" not in server_command(ServerSpec(name="a", model="org/m", generation_config="auto"),
                                                       port=1).argv


def test_max_model_len_over_the_models_positions_fails_before_start(tmp_path, tiny_llama_dir):
    import json
    import shutil

    from infra.servers import check_context_length, start_failure_hint

    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    positions = json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    check_context_length(ServerSpec(name="ok", model=str(folder), max_model_len=positions))
    with pytest.raises(ServerError, match=f"exceeds the {positions} positions.*at most {positions}"):
        check_context_length(ServerSpec(name="long", model=str(folder), max_model_len=positions * 2))
    server = ManagedServer(ServerSpec(name="long", model=str(folder), max_model_len=positions * 2,
                                      executable="/bin/false"), tmp_path / "logs")
    with pytest.raises(ServerError, match="exceeds"):
        server.start()  # refused before any process is launched
    assert server.process is None
    # a hub model not on this machine is vLLM's to check; its refusal gets a hint naming the fix
    check_context_length(ServerSpec(name="hub", model="org/not-cached", max_model_len=10**6))
    vllm_says = "ValueError: User-specified max_model_len (8192) is greater than the derived max_model_len (4096)"
    assert "lower `max_model_len`" in start_failure_hint(vllm_says) and start_failure_hint("CUDA OOM") == ""


def test_transformers_command_line_with_continuous_batching(tmp_path):
    plain = server_command(ServerSpec(name="cpu", kind="transformers", model="m", executable="/v/bin/transformers"),
                           port=8200, model=str(tmp_path))
    assert plain.argv == ["/v/bin/transformers", "serve", str(tmp_path), "--host", "127.0.0.1", "--port", "8200",
                          "--device", "cpu"]
    assert plain.env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} and plain.model_id == str(tmp_path)
    batching = server_command(ServerSpec(name="cpu", kind="transformers", model="m", executable="/v/bin/transformers",
                                         continuous_batching=True, continuous_batching_blocks=32,
                                         extra_args=["--cb-block-size", "128"]),
                              port=8200, model=str(tmp_path))
    # a bounded KV cache: transformers' own default takes 60% of the host's RAM on CPU
    assert batching.argv == plain.argv + ["--continuous-batching", "--cb-num-blocks", "32", "--cb-max-batch-tokens",
                                          "2048", "--cb-block-size", "128"]
    with pytest.raises(ValueError, match="continuous_batching is a `transformers serve` option"):
        ServerSpec(name="gpu", kind="vllm", model="m", continuous_batching=True)


def test_server_specs_are_validated():
    with pytest.raises(ValueError, match="needs at least that many `gpus`"):
        ServerSpec(name="x", model="m", gpus=[0], tensor_parallel_size=2)
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        ServersConfig(servers=[{"name": "a", "model": "m"}, {"name": "a", "model": "n"}])
    with pytest.raises(ServerError, match="not set"):
        server_command(ServerSpec(name="x", model="m", api_key_env="TOAFLOW_UNSET_KEY_VAR"), port=1)


def test_client_completion_against_real_transformers_serve(tiny_llama_server):
    base_url, model_id = tiny_llama_server

    async def run():
        (agent,) = build_agents([ModelConfig(name="tiny", model=model_id, endpoints=[base_url])])
        try:
            return await agent.generate([{"role": "user", "content": "Say hello."}], SamplingParams(max_tokens=5))
        finally:
            await aclose_all([agent])

    generation = asyncio.run(run())
    assert generation.ok, generation.error
    assert generation.prompt_tokens > 0 and 1 <= generation.completion_tokens <= 5
    assert generation.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_continuous_batching_server_answers_concurrent_chat_requests(tiny_llama_dir, tmp_path):
    # the chat path toaflow's agents use: system prompts, a shared temperature, per-request max_tokens
    config = ServersConfig(managed=True, max_restarts=0, servers=[
        ServerSpec(name="cb", kind="transformers", model=str(tiny_llama_dir), startup_timeout_s=180,
                   continuous_batching=True)])

    async def ask(endpoint):
        agents = build_agents([ModelConfig(name=name, model=endpoint.model_id, endpoints=[endpoint.base_url],
                                           system_prompt=f"You are {name}.", temperature=0.8, max_concurrency=8)
                               for name in ("first", "second")])
        try:
            return await asyncio.gather(*(
                agents[i % 2].generate([{"role": "user", "content": f"Count to {i}."}],
                                       SamplingParams(max_tokens=3 + i % 4)) for i in range(10)))
        finally:
            await aclose_all(agents)

    with managed_servers(config, tmp_path) as running:
        generations = asyncio.run(ask(running["cb"]))
    assert (tmp_path / "servers" / "cb.log").is_file()
    for i, generation in enumerate(generations):
        assert generation.ok, generation.error
        assert generation.prompt_tokens > 0 and 1 <= generation.completion_tokens <= 3 + i % 4


def test_start_health_crash_restart_stop(tiny_llama_dir, tmp_path):
    config = ServersConfig(managed=True, max_restarts=1, servers=[
        ServerSpec(name="cpu", kind="transformers", model=str(tiny_llama_dir), startup_timeout_s=180)])
    with managed_servers(config, tmp_path) as running:
        endpoint = running["cpu"]
        assert endpoint.model_id == str(tiny_llama_dir) and endpoint.base_url.startswith("http://127.0.0.1:")
        root = endpoint.base_url.removesuffix("/v1")
        assert httpx.get(f"{root}/v1/models", timeout=30).status_code == 200  # needs $HF_HOME/hub

        server = running.servers["cpu"]
        first_pid = server.pid
        os.killpg(first_pid, signal.SIGKILL)  # a crash: the whole group dies at once
        _wait_until(lambda: server.pid != first_pid and server.is_healthy(), timeout_s=180)
        assert server.restarts == 1 and httpx.get(f"{root}/health", timeout=30).status_code == 200  # same port
        running.check()
        last_pid = server.pid
    assert (tmp_path / "servers" / "cpu.log").read_text().count("=== start") == 2
    with pytest.raises(httpx.ConnectError):  # stopped on exit...
        httpx.get(f"{root}/health", timeout=5)
    with pytest.raises(ProcessLookupError):  # ...with its whole process group
        os.killpg(last_pid, 0)


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path):
    spec = ServerSpec(name="bad", kind="transformers", model=str(tmp_path), startup_timeout_s=60,
                      executable="/bin/false")
    (tmp_path / "config.json").write_text("{}")
    server = ManagedServer(spec, tmp_path / "logs", max_restarts=0)
    try:
        with pytest.raises(ServerError, match="exited with code 1 while starting"):
            server.start().wait_healthy()
    finally:
        server.stop()


def _wait_until(condition, timeout_s: float) -> None:
    """Poll a condition until true or the deadline (a bounded wait for an event, not a sleep for luck)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(0.2)
