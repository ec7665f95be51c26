"""A managed vllm-router in front of replicas: its command line, config checks, and real runs on loopback (the
router keeps one session on one replica; `toa sample` completes through it)."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from infra.config import ServersConfig, ServerSpec
from infra.servers import ServerError, managed_servers, server_command
from toa_core.backends.factory import aclose_all, build_agents
from toa_core.config import ModelConfig, RetryConfig
from toa_core.interfaces import SamplingParams
from tests.fixtures.servers import load_server_fleet

REPO = Path(__file__).resolve().parents[2]
ROUTER = Path(sys.executable).with_name("vllm-router")
needs_router = pytest.mark.skipif(not ROUTER.exists() and not shutil.which("vllm-router"),
                                  reason="vllm-router is not installed (pip install 'toaflow[router]')")
FAST_RETRY = {"max_attempts": 4, "backoff_initial_s": 0.01, "backoff_max_s": 0.3, "connect_timeout_s": 10.0,
              "read_timeout_s": 10.0}


def test_router_command_line_and_config_checks():
    spec = ServerSpec(name="llama-fleet", kind="router", model="meta-llama/Llama-3.1-8B-Instruct",
                      worker_urls=["http://gpu-a:8000/", "http://gpu-b:8000"], policy="cache_aware",
                      executable="/opt/router/bin/vllm-router", startup_timeout_s=1800)
    command = server_command(spec, port=9100)
    assert command.argv == ["/opt/router/bin/vllm-router", "--host", "127.0.0.1", "--port", "9100",
                            "--worker-urls", "http://gpu-a:8000", "http://gpu-b:8000", "--policy", "cache_aware",
                            "--worker-startup-timeout-secs", "1800", "--worker-startup-check-interval", "1",
                            "--log-level", "warning", "--disable-retries"]
    assert command.model_id == "meta-llama/Llama-3.1-8B-Instruct" and command.env == {}
    assert ServerSpec(name="r", kind="router", replicas=["a"]).policy == "consistent_hash"  # the default

    with pytest.raises(ValueError, match="needs `replicas`"):
        ServerSpec(name="r", kind="router")
    with pytest.raises(ValueError, match="needs `model`"):
        ServerSpec(name="r", kind="router", worker_urls=["http://x:1"])
    with pytest.raises(ValueError, match="kind 'vllm' needs `model`"):
        ServerSpec(name="v", kind="vllm")
    with pytest.raises(ValueError, match="are for kind 'router'"):
        ServerSpec(name="v", kind="vllm", model="m", replicas=["x"])
    vllm = {"kind": "vllm", "model": "org/m", "gpus": [0]}
    with pytest.raises(ValueError, match="replica 'c' is not a model server"):
        ServersConfig(servers=[{"name": "a", **vllm}, {"name": "r", "kind": "router", "replicas": ["a", "c"]}])
    with pytest.raises(ValueError, match="serve different models"):
        ServersConfig(servers=[{"name": "a", **vllm}, {"name": "b", **vllm, "model": "org/other"},
                               {"name": "r", "kind": "router", "replicas": ["a", "b"]}])
    with pytest.raises(ValueError, match="transformers serve.*rejects"):
        ServersConfig(servers=[{"name": "a", "kind": "transformers", "model": "builtin:tiny-llama"},
                               {"name": "r", "kind": "router", "replicas": ["a"]}])
    with pytest.raises(ServerError, match="set `model`"):
        server_command(ServerSpec(name="r", kind="router", replicas=["a"]), port=1, workers=["http://a:1"])


@pytest.fixture(scope="module")
def two_replicas():
    with load_server_fleet(2, slots=32, response_tokens=8, token_delay_ms=1) as servers:
        yield servers


def _received(servers) -> list[int]:
    return [server.stats().get("received", 0) for server in servers]


@needs_router
def test_managed_router_keeps_a_session_on_one_replica(two_replicas, tmp_path):
    config = ServersConfig(managed=True, servers=[
        ServerSpec(name="fleet", kind="router", model="load", worker_urls=[s.root_url for s in two_replicas],
                   startup_timeout_s=60)])

    async def ask() -> list:
        (agent,) = build_agents([ModelConfig(name="a", model="m", served_by="fleet",
                                             retry=RetryConfig(**FAST_RETRY))], {"fleet": running["fleet"]})
        try:
            return [await agent.generate([{"role": "user", "content": "hi"}],
                                         SamplingParams(max_tokens=4, session_id=f"prompt-{i // 5}"))
                    for i in range(20)]
        finally:
            await aclose_all([agent])

    with managed_servers(config, tmp_path) as running:
        endpoint = running["fleet"]
        assert endpoint.model_id == "load" and endpoint.base_url.endswith("/v1")
        before = _received(two_replicas)
        generations = asyncio.run(ask())
        router = running.servers["fleet"]
        pid = router.pid
    assert all(g.ok for g in generations), [g.error for g in generations[:3]]
    placed = [a - b for a, b in zip(_received(two_replicas), before)]
    assert sum(placed) == 20 and all(n % 5 == 0 for n in placed)  # each prompt's 5 requests on one replica
    assert router.process.returncode is not None and pid  # stopped with the run
    assert (tmp_path / "servers" / "fleet.log").exists()


@needs_router
def test_toa_sample_runs_through_a_managed_router(two_replicas, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"instruction": "Router test prompt {i}: name three colours."}}\n'
                               for i in range(6)))
    config = {
        "name": "router-test",
        "store": {"root": str(tmp_path / "store")},
        "servers": {"managed": True, "servers": [
            {"name": "fleet", "kind": "router", "model": "load", "policy": "consistent_hash",
             "worker_urls": [s.root_url for s in two_replicas], "startup_timeout_s": 60}]},
        "models": [{"name": f"agent-{k}", "backend": "openai", "model": "load", "served_by": "fleet",
                    "retry": FAST_RETRY} for k in range(2)],
        "reward": {"kind": "plugin", "callable": "tests.faults.helpers:length_reward", "batch_wait_ms": 1},
        "search": {"strategy": "toa", "budget": 6, "max_tokens": 8, "tau": 1.0, "alpha": 0.05,
                   "prompt_concurrency": 3},
        "synthesis": {"prompts": {"source": str(prompts)}},
    }
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out.parquet"
    before = _received(two_replicas)
    proc = subprocess.run([sys.executable, "-m", "toaflow.cli", "sample", "--config", str(path), "--prompts",
                           str(prompts), "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 36 and all(r["error"] is None and r["reward"] is not None for r in rows)
    placed = [a - b for a, b in zip(_received(two_replicas), before)]
    # Each prompt's six generations share one session key (model, prompt id), so each replica got whole sessions.
    # Which replica a session hashes to depends on the replicas' (random) ports: with six sessions, one replica gets
    # all of them about one run in 32, so the test does not ask for both to be used.
    assert sum(placed) == 36 and all(n % 6 == 0 for n in placed), placed



@needs_router
def test_detached_router_is_recognised_as_ours_and_stopped(two_replicas, tmp_path):
    """`toa servers up/down` for a router: vllm-router renames its process (setproctitle), which must not make
    `down` think it is someone else's."""
    from infra.servers import detached_status, start_detached, stop_detached

    config = ServersConfig(managed=True, servers=[
        ServerSpec(name="fleet", kind="router", model="load", worker_urls=[s.root_url for s in two_replicas],
                   startup_timeout_s=60)])
    state = tmp_path / "state.json"
    try:
        [record] = start_detached(config, state, tmp_path / "logs")
        [status] = detached_status(state)
        assert status["running"] and status["healthy"] and record["proctitle"] == "vllm::router"
    finally:
        stopped = stop_detached(state)
    assert stopped == ["fleet"] and not state.exists()
