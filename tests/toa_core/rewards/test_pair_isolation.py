"""One bad pair fails alone: batched scores of the other pairs stand, a failed batch is rescored pair by pair, and a
pair that fails for good is neither retried nor sent again."""
from __future__ import annotations

import asyncio
import math

import pytest

from tests.evaluation.fake_judge import FakeJudge
from toa_core.config import RetryConfig
from toa_core.interfaces import PairErrors, RewardError
from toa_core.rewards.batching import BatchingReward
from toa_core.rewards.http import HTTPReward
from toa_core.rewards.in_process import InProcessReward
from toa_core.rewards.plugin import PluginReward

FAST = RetryConfig(max_attempts=3, backoff_initial_s=0.001, backoff_max_s=0.002, connect_timeout_s=2, read_timeout_s=2)
QUESTION = [{"role": "user", "content": "Say something."}]
POISON = "poison"


def sixteen_pairs(bad: dict[int, str]) -> list[tuple[list[dict], str]]:
    """16 pairs with distinct answers; pair i's answer is `bad[i]` where given."""
    return [(QUESTION, bad.get(i, "answer " + "word " * i)) for i in range(16)]


def score_concurrently(batcher: BatchingReward, pairs) -> list[float | BaseException]:
    """Every pair through `score()` at once, as 16 trees would: they land in one batch of 16."""
    async def run():
        return await asyncio.gather(*[batcher.score(m, r) for m, r in pairs], return_exceptions=True)
    return asyncio.run(run())


class ScriptedModel(InProcessReward):
    """An in-process reward whose scores are the answer's length, NaN for "nan" answers; `fail_on_poison` makes
    any batch holding the poison answer raise, as a model crashing on one input would."""
    name = "scripted"

    def __init__(self, fail_on_poison: bool = False):
        self.fail_on_poison = fail_on_poison
        self.batches: list[int] = []

    def _score_sync(self, pairs):
        self.batches.append(len(pairs))
        if self.fail_on_poison and any(response == POISON for _, response in pairs):
            raise ValueError("tokenizer exploded on this input")
        return [math.nan if response == "nan" else float(len(response)) for _, response in pairs]


def test_one_nan_among_16_batched_pairs_fails_only_that_pair():
    model = ScriptedModel()
    batcher = BatchingReward(model, batch_size=16, batch_wait_ms=1000, retry=FAST)
    pairs = sixteen_pairs({5: "nan"})

    results = score_concurrently(batcher, pairs)

    assert model.batches == [16]  # one forward pass: the NaN is known per row, nothing is rescored or retried
    assert isinstance(results[5], RewardError) and "non-finite" in str(results[5]) and results[5].permanent
    assert results[:5] + results[6:] == [float(len(r)) for i, (_, r) in enumerate(pairs) if i != 5]
    # The same bad pair asked again fails at once, without reaching the model.
    with pytest.raises(RewardError, match="non-finite"):
        asyncio.run(batcher.score(*pairs[5]))
    assert model.batches == [16]


def test_a_batch_that_fails_as_a_whole_is_rescored_pair_by_pair():
    model = ScriptedModel(fail_on_poison=True)
    batcher = BatchingReward(model, batch_size=16, batch_wait_ms=1000, retry=FAST)
    pairs = sixteen_pairs({9: POISON})

    results = score_concurrently(batcher, pairs)

    assert isinstance(results[9], RewardError) and "tokenizer exploded" in str(results[9])
    assert results[:9] + results[10:] == [float(len(r)) for i, (_, r) in enumerate(pairs) if i != 9]
    # the batch once, then each pair alone; the poison pair fails the same way alone, so it is not retried
    assert model.batches == [16] + [1] * 16
    assert batcher.batches_split == 1


def test_score_batch_reports_failed_pairs_with_the_good_scores():
    batcher = BatchingReward(ScriptedModel(), batch_size=4, retry=FAST)
    with pytest.raises(PairErrors) as caught:
        asyncio.run(batcher.score_batch(sixteen_pairs({2: "nan", 13: "nan"})))
    results = caught.value.results
    assert [i for i, r in enumerate(results) if isinstance(r, RewardError)] == [2, 13]
    assert results[0] == float(len("answer "))


def test_transient_failures_are_retried_per_pair_then_reported():
    class Flaky:
        name = "flaky"

        def __init__(self, failures):
            self.failures, self.calls = failures, 0

        async def score_batch(self, pairs):
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionError("transient")
            return [float(len(r)) for _, r in pairs]

        async def aclose(self):
            pass

    pairs = sixteen_pairs({})[:3]
    recovered = Flaky(failures=2)  # the batch fails, so does the first pair alone; its retry succeeds
    assert score_concurrently(BatchingReward(recovered, batch_size=4, batch_wait_ms=1, retry=FAST), pairs) == \
        [float(len(r)) for _, r in pairs]
    assert recovered.calls == 1 + 3 + 1
    dead = Flaky(failures=99)
    results = score_concurrently(BatchingReward(dead, batch_size=4, batch_wait_ms=1, retry=FAST), pairs)
    assert all(isinstance(r, RewardError) and "after 3 attempts" in str(r) and not r.permanent for r in results)
    assert dead.calls == 1 + 3 * 3  # the batch, then three attempts per pair: bounded


def test_plugin_nan_fails_only_its_pair_and_is_asked_once(monkeypatch):
    import tests.toa_core.rewards.plugins as plugins

    calls = []
    monkeypatch.setattr(plugins, "length_reward", lambda m, r: calls.append(r) or (math.nan if r == "nan" else len(r)))
    batcher = BatchingReward(PluginReward("tests.toa_core.rewards.plugins:length_reward"), batch_size=16,
                             batch_wait_ms=1000, retry=FAST)
    pairs = sixteen_pairs({0: "nan"})
    results = score_concurrently(batcher, pairs)
    assert isinstance(results[0], RewardError) and all(isinstance(r, float) for r in results[1:])
    assert calls.count("nan") == 1 and len(calls) == 16


# -- HTTP: a small vLLM-like /classify server that rejects one pair and scores another NaN ----------------------

def classify(body: dict) -> tuple[int, dict]:
    """One pair per request: 400 for the poison answer, NaN for "nan" (written as the bare token NaN, as Python
    servers do), else the answer's word count."""
    answer = body["messages"][-1]["content"]
    if answer == POISON:
        return 400, {"error": {"message": "this input cannot be tokenized", "code": 400}}
    score = math.nan if answer == "nan" else float(len(answer.split()))
    return 200, {"data": [{"index": 0, "probs": [score]}]}


@pytest.fixture
def classify_server():
    with FakeJudge(classify) as server:  # the scripted loopback server the evaluation tests use
        yield server.endpoint, server.requests


def test_http_reward_isolates_pairs_and_sends_the_truncation_setting(classify_server):
    url, bodies = classify_server
    # As the factory builds it: the HTTP client retries each pair itself, the batcher never resends.
    batcher = BatchingReward(HTTPReward([url], "rm", retry=FAST, max_length=512), batch_size=16,
                             batch_wait_ms=1000, max_attempts=1)
    pairs = sixteen_pairs({3: POISON, 11: "nan"})

    async def run():
        try:
            return await asyncio.gather(*[batcher.score(m, r) for m, r in pairs], return_exceptions=True)
        finally:
            await batcher.aclose()

    results = asyncio.run(run())
    assert isinstance(results[3], RewardError) and "HTTP 400" in str(results[3]) and results[3].permanent
    assert isinstance(results[11], RewardError) and "non-finite" in str(results[11]) and results[11].permanent
    good = [i for i in range(16) if i not in (3, 11)]
    assert [results[i] for i in good] == [float(len(pairs[i][1].split())) for i in good]
    assert len(bodies) == 16  # one request per pair: the rejected and the NaN pair were not retried
    assert all(b["truncate_prompt_tokens"] == 512 and b["truncation_side"] == "right" for b in bodies)
