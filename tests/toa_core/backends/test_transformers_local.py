"""In-process generation: chat template, sampling parameters, seeds, token counts, one shared model per folder."""
from __future__ import annotations

import asyncio

import pytest

from toa_core.backends import transformers_local
from toa_core.backends.factory import aclose_all, build_agents
from toa_core.config import ModelConfig
from toa_core.interfaces import SamplingParams

QUESTION = [{"role": "user", "content": "What is two plus two?"}]


def _config(name, model, **extra):
    return ModelConfig(name=name, backend="transformers", model=model, **extra)


def test_generation_counts_tokens_and_honours_max_tokens(tiny_llama_dir):
    async def run():
        (agent,) = build_agents([_config("tiny", str(tiny_llama_dir))])
        try:
            return await agent.generate(QUESTION, SamplingParams(max_tokens=6, seed=1))
        finally:
            await aclose_all([agent])

    generation = asyncio.run(run())
    assert generation.ok and isinstance(generation.text, str)
    # "<|im_start|>user\n" + question + "<|im_end|>\n<|im_start|>assistant\n" is more than a handful of tokens
    assert generation.prompt_tokens > 8 and 1 <= generation.completion_tokens <= 6
    assert generation.finish_reason in ("stop", "length") and generation.latency_s > 0


def test_same_seed_same_text_and_agents_share_one_model(tiny_llama_dir):
    async def run():
        agents = build_agents([_config("a", "builtin:tiny-llama"), _config("b", str(tiny_llama_dir), max_tokens=5)])
        assert agents[0]._shared is agents[1]._shared  # one loaded model for one folder
        try:
            params = SamplingParams(temperature=1.0, max_tokens=12, seed=7)
            first = await agents[0].generate(QUESTION, params)
            second = await agents[0].generate(QUESTION, params)
            capped = await agents[1].generate(QUESTION, params)  # per-agent max_tokens wins
            other_seed = await agents[0].generate(QUESTION, SamplingParams(temperature=1.0, max_tokens=12, seed=8))
            return first, second, capped, other_seed
        finally:
            await aclose_all(agents)

    first, second, capped, other_seed = asyncio.run(run())
    assert first.text == second.text and first.completion_tokens == second.completion_tokens
    assert capped.completion_tokens <= 5
    assert other_seed.text != first.text
    assert not transformers_local._LOADED  # released with the last agent


def test_a_broken_model_costs_a_generation_not_a_crash(tiny_llama_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")

    async def run():
        (agent,) = build_agents([_config("broken", str(broken))])
        try:
            return await agent.generate(QUESTION, SamplingParams(max_tokens=4))
        finally:
            await aclose_all([agent])

    generation = asyncio.run(run())
    assert generation.text is None and generation.error


def _greedy_answers(model_dir, questions, concurrently, max_tokens=12):
    """Greedy answers of one agent to `questions`: all in flight at once (batched), or one after the other."""
    async def run():
        (agent,) = build_agents([_config("greedy", str(model_dir), system_prompt="Answer in one line.")])
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        try:
            if concurrently:
                return await asyncio.gather(*(agent.generate(q, params) for q in questions))
            return [await agent.generate(q, params) for q in questions]
        finally:
            await aclose_all([agent])

    return asyncio.run(run())


# prompts of different lengths, so the batch is left-padded
QUESTIONS = [[{"role": "user", "content": text}] for text in (
    "Hi.", "What is two plus two?", "Name three colours of the rainbow, please, in order.", "Why is the sky blue?",
    "Write one sentence about the sea without using any commas at all, and keep it short.")]


def test_concurrent_greedy_requests_are_batched_and_answer_as_one_at_a_time(tiny_llama_dir, monkeypatch):
    batch_sizes = []
    batched_generate = transformers_local._generate_greedy_batch

    def recording(shared, batch):
        batch_sizes.append(len(batch))
        return batched_generate(shared, batch)

    monkeypatch.setattr(transformers_local, "_generate_greedy_batch", recording)
    alone = _greedy_answers(tiny_llama_dir, QUESTIONS, concurrently=False)
    assert batch_sizes == [1] * len(QUESTIONS)
    batch_sizes.clear()
    together = _greedy_answers(tiny_llama_dir, QUESTIONS, concurrently=True)
    assert batch_sizes == [len(QUESTIONS)]  # one generate for all of them
    for one, batched in zip(alone, together):
        assert batched.ok and batched.text == one.text
        assert (batched.prompt_tokens, batched.completion_tokens, batched.finish_reason) == \
            (one.prompt_tokens, one.completion_tokens, one.finish_reason)
    assert not transformers_local._LOADED


def test_a_failed_batch_is_an_error_for_each_of_its_requests(tiny_llama_dir, monkeypatch):
    def broken(shared, batch):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(transformers_local, "_generate_greedy_batch", broken)
    generations = _greedy_answers(tiny_llama_dir, QUESTIONS[:3], concurrently=True)
    assert [g.text for g in generations] == [None] * 3
    assert all("out of memory" in g.error for g in generations)


@pytest.mark.slow
def test_smollm2_batched_greedy_answers_equal_one_at_a_time_on_heldout_prompts(smollm2_dir):
    # The demo's evaluation path: SmolLM2 answers the held-out constraint prompts greedily; batched, the base model's
    # answers (and so its pass rate) must stay those of one-at-a-time decoding. Measured on all 60 items: 60/60 equal.
    from evaluation.benchmarks import load_benchmark
    from evaluation.config import BenchmarkConfig

    items = load_benchmark(BenchmarkConfig(name="heldout", kind="verifiable")).items[:16]
    questions = [list(item.messages) for item in items]
    alone = _greedy_answers(smollm2_dir, questions, concurrently=False, max_tokens=40)
    together = _greedy_answers(smollm2_dir, questions, concurrently=True, max_tokens=40)
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.completion_tokens for g in together] == [g.completion_tokens for g in alone]
    assert any(g.finish_reason == "stop" for g in alone)  # some rows ended early: the padding after them is cut
