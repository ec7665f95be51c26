"""The OpenAI-compatible client against the load/fault server: faults cost retries, never candidates or hangs."""
from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from bench.loadserver import LoadServer
from toa_core.backends.openai_http import EndpointPool, OpenAIChatModel, backoff_delay
from toa_core.config import ModelConfig, RetryConfig
from toa_core.interfaces import SamplingParams

FAST_RETRY = RetryConfig(max_attempts=4, backoff_initial_s=0.01, backoff_max_s=0.05,
                         connect_timeout_s=2, read_timeout_s=1.0)
QUESTION = [{"role": "user", "content": "What is two plus two?"}]
NO_FAULTS = {"error_rate": 0.0, "throttle_rate": 0.0, "slow_rate": 0.0, "drop_rate": 0.0, "dead_rate": 0.0,
             "max_faults_per_request": None}


@pytest.fixture(scope="module")
def server():
    with LoadServer(slots=16, response_tokens=6, slow_s=5, retry_after_s=0.01) as running:
        yield running


@pytest.fixture(scope="module")
def replica_b():
    with LoadServer(slots=16, response_tokens=6) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(server):
    server.set_faults(**NO_FAULTS)


def _agent(*endpoints, **overrides) -> OpenAIChatModel:
    config = ModelConfig(name="a", model="m", endpoints=list(endpoints), retry=FAST_RETRY, **overrides)
    return OpenAIChatModel(config)


async def _generate_many(agent, n, params=SamplingParams(max_tokens=4)):
    try:
        return await asyncio.gather(*[agent.generate(QUESTION, params) for _ in range(n)])
    finally:
        await agent.aclose()


def test_request_body_applies_agent_overrides_and_system_prompt(server):
    agent = _agent(server.base_url, temperature=0.2, max_tokens=7, system_prompt="Be brief.")
    body = agent.request_body(QUESTION, SamplingParams(temperature=0.9, top_p=0.5, max_tokens=100, seed=3))
    assert body == {"model": "m", "temperature": 0.2, "top_p": 0.5, "max_tokens": 7, "seed": 3,
                    "messages": [{"role": "system", "content": "Be brief."}, *QUESTION]}


def test_request_body_carries_configured_neutral_sampling_fields(server):
    """For a vLLM server toaflow does not start: the agent's top_k/min_p/repetition_penalty go in every request, so
    the server cannot fill them from the model's generation_config.json; unset, they are not sent at all."""
    agent = _agent(server.base_url, top_k=-1, min_p=0.0, repetition_penalty=1.0)
    body = agent.request_body(QUESTION, SamplingParams(temperature=0.7, top_p=1.0, max_tokens=10))
    assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (-1, 0.0, 1.0)
    plain = _agent(server.base_url).request_body(QUESTION, SamplingParams())
    assert not {"top_k", "min_p", "repetition_penalty"} & set(plain)


def test_completion_records_usage_and_finish_reason(server):
    (generation,) = asyncio.run(_generate_many(_agent(server.base_url), 1))
    assert generation.ok and generation.text == "w0 w1 w2 w3"
    assert (generation.prompt_tokens, generation.completion_tokens) == (5, 4)  # the load server counts words
    assert generation.finish_reason == "length" and generation.retries == 0 and generation.latency_s > 0


@pytest.mark.parametrize("fault", ["error_rate", "throttle_rate", "slow_rate", "drop_rate", "dead_rate"])
def test_each_fault_costs_one_retry_not_a_candidate(server, fault):
    # every request is faulted exactly once (per X-Request-Id), then served
    server.set_faults(**{fault: 1.0}, max_faults_per_request=1)
    generations = asyncio.run(_generate_many(_agent(server.base_url), 6))
    assert all(g.ok for g in generations), [g.error for g in generations]
    assert [g.retries for g in generations] == [1] * 6
    assert server.stats()[f"fault_{fault.removesuffix('_rate')}"] >= 6


def test_mixed_faults_at_load_lose_no_candidate(server):
    server.set_faults(error_rate=0.15, throttle_rate=0.15, drop_rate=0.1, dead_rate=0.1, max_faults_per_request=3)
    generations = asyncio.run(_generate_many(_agent(server.base_url), 200))
    assert all(g.ok for g in generations)
    assert sum(g.retries for g in generations) > 0


def test_dead_server_returns_an_error_after_bounded_retries():
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    generations = asyncio.run(_generate_many(_agent(dead_url), 3))
    for generation in generations:
        assert generation.text is None and not generation.ok
        assert "gave up after 4 attempts" in generation.error and "connection error" in generation.error
        assert generation.retries == 3


def test_client_errors_fail_fast_with_the_servers_message(tmp_path):
    with LoadServer(model="served-name") as strict:
        (generation,) = asyncio.run(_generate_many(_agent(strict.base_url), 1))
        assert generation.retries == 0 and "HTTP 404" in generation.error
        assert "The model `m` does not exist" in generation.error
        assert strict.stats()["received"] == 1


def test_replicas_are_used_in_turn_and_a_failing_replica_is_skipped(server, replica_b):
    before_a, before_b = server.stats().get("received", 0), replica_b.stats().get("received", 0)
    agent = _agent(server.base_url, replica_b.base_url)
    asyncio.run(_generate_many(agent, 10))
    assert server.stats()["received"] - before_a == 5 and replica_b.stats()["received"] - before_b == 5

    server.set_faults(error_rate=1.0)  # replica A is broken: every request's retry lands on B
    generations = asyncio.run(_generate_many(_agent(server.base_url, replica_b.base_url), 10))
    assert all(g.ok for g in generations)
    assert sorted(g.retries for g in generations) == [0] * 5 + [1] * 5


def test_concurrency_limit_holds_per_endpoint_across_agents_sharing_a_pool():
    with LoadServer(slots=100, token_delay_ms=5) as counting:
        config = ModelConfig(name="a", model="m", endpoints=[counting.base_url], retry=FAST_RETRY, max_concurrency=3)
        pool = EndpointPool(config.endpoints, config.max_concurrency, FAST_RETRY)
        agents = [OpenAIChatModel(config, pool=pool), OpenAIChatModel(config.model_copy(update={"name": "b"}), pool=pool)]

        async def run():
            try:
                return await asyncio.gather(*[agents[i % 2].generate(QUESTION, SamplingParams(max_tokens=4))
                                              for i in range(30)])
            finally:
                await pool.aclose()

        assert all(g.ok for g in asyncio.run(run()))
        stats = counting.stats()
        assert stats["served"] == 30 and stats["peak_in_flight"] <= 3


def test_api_key_never_appears_in_errors_logs_or_repr(monkeypatch, caplog):
    secret = "sk-test-very-secret-123"
    monkeypatch.setenv("TOAFLOW_TEST_KEY", "wrong-" + secret)
    with LoadServer(api_key=secret) as guarded, caplog.at_level(logging.DEBUG):
        agent = _agent(guarded.base_url, api_key_env="TOAFLOW_TEST_KEY")
        (generation,) = asyncio.run(_generate_many(agent, 1))
        assert "HTTP 401" in generation.error and "Incorrect API key provided: ***" in generation.error
        assert secret not in generation.error and secret not in repr(agent) and secret not in caplog.text

        monkeypatch.setenv("TOAFLOW_TEST_KEY", secret)
        (generation,) = asyncio.run(_generate_many(_agent(guarded.base_url, api_key_env="TOAFLOW_TEST_KEY"), 1))
        assert generation.ok


def test_missing_api_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TOAFLOW_ABSENT_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$TOAFLOW_ABSENT_KEY, which is not set"):
        _agent("http://127.0.0.1:1/v1", api_key_env="TOAFLOW_ABSENT_KEY")


def test_backoff_is_full_jitter_and_capped():
    import random

    rng = random.Random(0)
    delays = [backoff_delay(attempt, RetryConfig(backoff_initial_s=1, backoff_max_s=4), rng) for attempt in range(50)]
    assert all(0 <= d <= 4 for d in delays) and max(delays) > 2
