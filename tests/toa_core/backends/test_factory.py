"""The factory: agents in config order, shared pools, served_by resolution, reward kinds wrapped in the batcher."""
from __future__ import annotations

import asyncio

import pytest

from toa_core.backends.factory import FactoryError, ServedEndpoint, aclose_all, build_agents, build_reward
from toa_core.backends.openai_http import OpenAIChatModel
from toa_core.config import ModelConfig, RewardConfig
from toa_core.rewards.batching import BatchingReward
from toa_core.rewards.http import HTTPReward


def test_agents_keep_order_share_pools_and_resolve_served_by():
    configs = [
        ModelConfig(name="a", model="m1", endpoints=["http://127.0.0.1:1/v1"]),
        ModelConfig(name="b", model="m2", endpoints=["http://127.0.0.1:1/v1"]),
        ModelConfig(name="c", model="builtin:tiny-llama", served_by="cpu"),
    ]
    agents = build_agents(configs, {"cpu": ServedEndpoint("http://127.0.0.1:2/v1", "/cache/tiny-llama-v1")})
    assert [a.name for a in agents] == ["a", "b", "c"] and all(isinstance(a, OpenAIChatModel) for a in agents)
    assert agents[0]._pool is agents[1]._pool and agents[2]._pool is not agents[0]._pool
    assert agents[2].endpoints == ["http://127.0.0.1:2/v1"]
    assert agents[2].config.model == "/cache/tiny-llama-v1"  # transformers serve wants its served path
    asyncio.run(aclose_all(agents))


def test_unknown_server_and_duplicate_names_are_clear_errors():
    with pytest.raises(FactoryError, match="served_by 'gpu0' names no running server"):
        build_agents([ModelConfig(name="a", model="m", served_by="gpu0")], {"cpu": "http://127.0.0.1:1/v1"})
    twice = ModelConfig(name="a", model="m", endpoints=["http://127.0.0.1:1/v1"])
    with pytest.raises(FactoryError, match="repeated: \\['a'\\]"):
        build_agents([twice, twice])


def test_rewards_are_wrapped_in_the_batcher():
    reward = build_reward(RewardConfig(kind="http", model="rm", endpoints=["http://127.0.0.1:1/v1"], batch_size=4,
                                       max_length=2048))
    assert isinstance(reward, BatchingReward) and isinstance(reward.inner, HTTPReward)
    assert reward.inner.endpoints == ["http://127.0.0.1:1"] and reward.batch_size == 4 and reward.max_attempts == 1
    assert reward.inner.request_body([], "x")["truncate_prompt_tokens"] == 2048  # vLLM truncates like we would
    asyncio.run(reward.aclose())
    plugin = build_reward(RewardConfig(kind="plugin", callable="tests.toa_core.rewards.plugins:length_reward"))
    assert asyncio.run(plugin.score([{"role": "user", "content": "q"}], "abcd")) == 4.0


def test_reward_max_length_must_fit_its_managed_vllm_server():
    from runconfig import ConfigError, parse_config

    data = {"models": [{"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:1/v1"]}],
            "servers": {"managed": True, "servers": [{"name": "rm", "kind": "vllm_reward", "model": "org/rm",
                                                      "max_model_len": 2048}]},
            "reward": {"kind": "http", "served_by": "rm", "max_length": 4096}}
    with pytest.raises(ConfigError, match="reward.max_length \\(4096\\) is more than servers 'rm' max_model_len"):
        parse_config(data)
    data["reward"]["max_length"] = 2048
    assert parse_config(data).reward.max_length == 2048
