"""Reward models: batched scores equal single ones, the batcher gathers concurrent calls, errors never become 0.0."""
from __future__ import annotations

import asyncio

import pytest

from bench.loadserver import LoadServer
from toa_core.config import RetryConfig
from toa_core.interfaces import RewardError
from toa_core.rewards.batching import BatchingReward
from toa_core.rewards.hf_classifier import HFClassifierReward
from toa_core.rewards.http import HTTPReward, extract_score
from toa_core.rewards.llm_judge import LLMJudgeReward
from toa_core.rewards.plugin import PluginReward

PAIRS = [
    ([{"role": "user", "content": "What is two plus two?"}], "four"),
    ([{"role": "user", "content": "Name a colour."}], "The sky is blue and the grass is green, mostly."),
    ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}], "Hello there, friend!"),
    ([{"role": "user", "content": "Count to three."}], "one two three"),
    ([{"role": "user", "content": "Say nothing."}], ""),
]
FAST = RetryConfig(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02, connect_timeout_s=2, read_timeout_s=2)


@pytest.fixture(scope="module")
def classifier(tiny_reward_dir):
    return HFClassifierReward(tiny_reward_dir, batch_size=16)


def test_classifier_batched_scores_equal_single_scores(classifier):
    async def run():
        batched = await classifier.score_batch(PAIRS)
        singles = [await classifier.score(m, r) for m, r in PAIRS]
        return batched, singles

    batched, singles = asyncio.run(run())
    assert batched == pytest.approx(singles, abs=1e-4)
    assert len(set(round(s, 5) for s in batched)) == len(PAIRS)  # the random head still tells pairs apart


def test_classifier_truncates_long_pairs(tiny_reward_dir):
    short = HFClassifierReward(tiny_reward_dir, max_length=24)
    long_answer = "the cat sees a red apple " * 200
    (score,) = asyncio.run(short.score_batch([(PAIRS[0][0], long_answer)]))
    assert score == pytest.approx(asyncio.run(short.score(PAIRS[0][0], long_answer + " and more")), abs=1e-5)


def test_batcher_gathers_concurrent_calls_into_few_forward_passes(classifier):
    batcher = BatchingReward(classifier, batch_size=8, batch_wait_ms=50)

    async def run():
        before = classifier.forward_calls
        scores = await asyncio.gather(*[batcher.score(*PAIRS[i % len(PAIRS)]) for i in range(20)])
        return scores, classifier.forward_calls - before

    scores, forwards = asyncio.run(run())
    assert forwards == 3  # 20 concurrent calls -> batches of 8 + 8 + 4
    reference = asyncio.run(classifier.score_batch(PAIRS))
    assert scores == pytest.approx([reference[i % len(PAIRS)] for i in range(20)], abs=1e-4)


def test_llm_judge_plumbing_on_tiny_llama(tiny_llama_dir):
    judge = LLMJudgeReward(tiny_llama_dir, batch_size=4)

    async def run():
        batched = await judge.score_batch(PAIRS)
        singles = [await judge.score(m, r) for m, r in PAIRS[:2]]
        return batched, singles

    batched, singles = asyncio.run(run())
    assert batched[:2] == pytest.approx(singles, abs=1e-3)
    assert len(batched) == len(PAIRS) and len(set(batched)) == len(PAIRS)
    assert judge.forward_calls == 2 * 3 + 2 * 3  # verdict, likelihood, relevance per batch
    with pytest.raises(ValueError, match="subset"):
        LLMJudgeReward(tiny_llama_dir, terms=["vibes"])


def test_plugins_sync_async_and_failures():
    async def run():
        sync = PluginReward("tests.toa_core.rewards.plugins:length_reward")
        asynchronous = PluginReward("tests.toa_core.rewards.plugins:async_overlap_reward")
        return (await sync.score_batch(PAIRS[:2]),
                await asynchronous.score([{"role": "user", "content": "one two three"}], "two three four"))

    assert asyncio.run(run()) == ([4.0, 47.0], 2.0)
    for broken, message in [("broken_reward", "the plug-in is broken"), ("nan_reward", "non-finite")]:
        with pytest.raises(RewardError, match=message):
            asyncio.run(PluginReward(f"tests.toa_core.rewards.plugins:{broken}").score([], "x"))
    hanging = PluginReward("tests.toa_core.rewards.plugins:hanging_reward", timeout_s=0.2)
    with pytest.raises(RewardError, match="no result within 0.2s"):
        asyncio.run(hanging.score([], "x"))
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        PluginReward("tests.toa_core.rewards.plugins:missing")
    with pytest.raises(ValueError, match="expected 'package.module:function'"):
        PluginReward("no_colon_here")


@pytest.fixture(scope="module")
def pooling_server():
    with LoadServer(retry_after_s=0.01) as server:
        yield server


@pytest.mark.parametrize("api", ["classify", "pooling"])
def test_http_reward_scores_raw_values_and_survives_faults(pooling_server, api):
    pooling_server.set_faults(error_rate=0.0, throttle_rate=0.0, max_faults_per_request=None)
    reward = HTTPReward([pooling_server.base_url], "rm", api=api, retry=FAST)

    async def run():
        try:
            return await reward.score_batch(PAIRS[:4])
        finally:
            await reward.aclose()

    # the fake server scores by word count; /classify would squash it with a sigmoid unless use_activation=false
    assert asyncio.run(run()) == [1.0, 10.0, 3.0, 3.0]
    pooling_server.set_faults(error_rate=0.5, throttle_rate=0.5, max_faults_per_request=2)
    reward = HTTPReward([pooling_server.base_url], "rm", api=api, retry=FAST)
    assert asyncio.run(run()) == [1.0, 10.0, 3.0, 3.0]


def test_http_reward_dead_server_is_a_reward_error_never_zero():
    reward = HTTPReward(["http://127.0.0.1:9/v1"], "rm", retry=FAST)
    with pytest.raises(RewardError, match="gave up after 3 attempts"):
        asyncio.run(reward.score(*PAIRS[0]))


def test_extract_score_handles_nested_and_rejects_malformed():
    assert extract_score("pooling", {"data": [{"data": [[0.1], [0.2], [1.5]]}]}) == 1.5
    assert extract_score("classify", {"data": [{"probs": [2.5]}]}) == 2.5
    with pytest.raises((KeyError, ValueError)):
        extract_score("classify", {"data": [{"probs": []}]})
