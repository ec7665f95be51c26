"""The load/fault server: answers like an OpenAI server, queues beyond its slots, injects the faults it is told to."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from bench.loadserver import Faults, LoadServer


@pytest.fixture(scope="module")
def server():
    with LoadServer(slots=4, response_tokens=8, token_delay_ms=1) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_faults(server):
    server.set_faults(**{k: 0.0 for k in ("error_rate", "throttle_rate", "slow_rate", "drop_rate", "dead_rate")},
                      max_faults_per_request=None)


def _chat(max_tokens=100):
    return {"model": "m", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": max_tokens}


def test_answers_with_usage_and_counts(server):
    before = server.stats()
    response = httpx.post(f"{server.base_url}/chat/completions", json=_chat(max_tokens=5), timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert body["choices"][0]["finish_reason"] == "length"
    after = server.stats()
    assert after["received"] - before.get("received", 0) == 1 and after["served"] - before.get("served", 0) == 1
    assert httpx.get(f"{server.base_url}/models", timeout=10).json()["data"][0]["id"] == "load"


def test_holds_many_concurrent_requests_within_its_slots(server):
    async def burst(n):
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*[client.post(f"{server.base_url}/chat/completions", json=_chat())
                                          for _ in range(n)])

    responses = asyncio.run(burst(150))
    assert all(r.status_code == 200 for r in responses)
    stats = server.stats()
    assert stats["peak_busy_slots"] <= 4 < stats["peak_in_flight"]


def test_faults_are_bounded_per_request_id(server):
    server.set_faults(error_rate=1.0, max_faults_per_request=1)
    url = f"{server.base_url}/chat/completions"
    headers = {"X-Request-Id": "abc"}
    assert httpx.post(url, json=_chat(), headers=headers, timeout=10).status_code == 500
    assert httpx.post(url, json=_chat(), headers=headers, timeout=10).status_code == 200


def test_throttle_sends_retry_after_and_drop_cuts_the_body(server):
    url = f"{server.base_url}/chat/completions"
    server.set_faults(throttle_rate=1.0, retry_after_s=2)
    response = httpx.post(url, json=_chat(), timeout=10)
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    server.set_faults(throttle_rate=0.0, drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(url, json=_chat(), timeout=10)
    server.set_faults(drop_rate=0.0, dead_rate=1.0)
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json=_chat(), timeout=10)


def test_bad_fault_settings_are_rejected(server):
    response = httpx.post(f"{server.root_url}/admin/faults", json={"error_rate": 0.8, "drop_rate": 0.8}, timeout=10)
    assert response.status_code == 400 and "sum to at most 1" in response.json()["error"]["message"]
    with pytest.raises(ValueError):
        Faults(error_rate=1.5).validate()


def test_prefix_cache_counts_hits_per_block_and_model_and_evicts_lru():
    with LoadServer(slots=4, response_tokens=2, prefix_cache_blocks=6, block_tokens=4, prefill_ms_per_token=0.01,
                    refine_marker="Improve:") as cached:
        url = f"{cached.base_url}/chat/completions"

        def ask(text, model="m"):
            body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 2}
            assert httpx.post(url, json=body, timeout=10).status_code == 200
            stats = cached.stats()
            return stats.get("prefix_cache_queries", 0), stats.get("prefix_cache_hits", 0)

        question = " ".join(f"q{i}" for i in range(11))  # "<|user|>" + 11 words = 12 tokens = 3 full blocks
        assert ask(question) == (12, 0)
        assert ask(question) == (24, 12)  # every full block found
        assert ask(question + " more words here") == (39, 24)  # the shared 3 blocks, then new ones
        assert ask(question, model="other") == (51, 24)  # another model's cache is its own
        assert ask("Improve: " + question) == (64, 24)  # a different start shares nothing
        stats = cached.stats()
        assert stats["refine_prefix_cache_queries"] == 13 and stats["prefix_cache_blocks_used"] <= 6
        assert ask(question) == (76, 24)  # evicted by the newer blocks (LRU, 6 blocks)
        assert stats["slot_seconds"] > 0 and stats["in_flight_seconds"] > 0
        cached.reset()
        assert cached.stats().get("prefix_cache_queries", 0) == 0 and cached.stats()["prefix_cache_blocks_used"] == 0
