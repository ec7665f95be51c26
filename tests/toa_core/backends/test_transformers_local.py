"""In-process generation: chat template, sampling parameters, seeds, token counts, one shared model per folder."""
from __future__ import annotations

import asyncio

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
