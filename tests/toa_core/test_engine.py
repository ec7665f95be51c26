"""The multi-prompt engine: bounded concurrency, complete results, streaming callbacks, lazy input."""
from __future__ import annotations

import asyncio

import pytest

from toa_core.config import SearchConfig
from toa_core.engine import run_search
from toa_core.records import Prompt, PromptResult
from toa_core.simulated import SimulatedAgent, SimulatedReward
from toa_core.strategies import SearchContext, Strategy, get_strategy


def prompts(n: int) -> list[Prompt]:
    return [Prompt.from_messages([{"role": "user", "content": f"question {i}"}]) for i in range(n)]


def context(strategy: str = "toa", budget: int = 12) -> SearchContext:
    agents = [SimulatedAgent(f"m{i}", 0.1 + 0.02 * i, refine_delta=0.01, noise=0.01) for i in range(3)]
    return SearchContext(agents, SimulatedReward(), SearchConfig(strategy=strategy, budget=budget))


class CountingStrategy(Strategy):
    """Wraps a real strategy and records how many prompts are being searched at once."""
    name = "counting"

    def __init__(self, inner: str = "toa"):
        self.inner = get_strategy(inner)
        self.in_flight = 0
        self.max_in_flight = 0

    async def run(self, prompt, ctx):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self.inner.run(prompt, ctx)
        finally:
            self.in_flight -= 1


def test_prompts_are_searched_concurrently_within_the_bound_and_all_complete():
    batch = prompts(20)
    strategy = CountingStrategy()
    results = asyncio.run(run_search(batch, context(), concurrency=4, strategy=strategy))
    assert 1 < strategy.max_in_flight <= 4
    assert [r.prompt.prompt_id for r in results] == [p.prompt_id for p in batch]  # input order
    assert all(len(r.candidates) == 12 and r.tree for r in results)


def test_concurrency_defaults_to_the_search_config_and_strategy_to_search_strategy():
    ctx = context(strategy="ensemble", budget=6)
    ctx.search.prompt_concurrency = 3
    results = asyncio.run(run_search(prompts(7), ctx))
    assert len(results) == 7 and {c.strategy for r in results for c in r.candidates} == {"ensemble"}


def test_streaming_results_to_a_callback_returns_the_count_and_reports_progress():
    received: list[PromptResult] = []
    progress: list[int] = []

    async def on_result(result: PromptResult) -> None:
        await asyncio.sleep(0)
        received.append(result)

    count = asyncio.run(run_search(prompts(9), context(), concurrency=3, on_result=on_result,
                                   progress=progress.append))
    assert count == 9 and len(received) == 9
    assert sorted(r.prompt.prompt_id for r in received) == sorted(p.prompt_id for p in prompts(9))
    assert progress == list(range(1, 10))


def test_a_plain_function_callback_works_too():
    received = []
    count = asyncio.run(run_search(prompts(3), context(), concurrency=2, on_result=received.append))
    assert count == 3 and len(received) == 3


def test_input_is_pulled_lazily_not_all_at_once():
    pulled = 0
    pulled_when_first_result_arrived = None

    def generate():
        nonlocal pulled
        for prompt in prompts(50):
            pulled += 1
            yield prompt

    def on_result(result):
        nonlocal pulled_when_first_result_arrived
        if pulled_when_first_result_arrived is None:
            pulled_when_first_result_arrived = pulled

    count = asyncio.run(run_search(generate(), context(budget=4), concurrency=5, on_result=on_result))
    assert count == 50
    assert pulled_when_first_result_arrived <= 5 + 1  # the workers' prompts, nothing queued up ahead


def test_async_iterables_are_accepted():
    async def stream():
        for prompt in prompts(6):
            await asyncio.sleep(0)
            yield prompt

    results = asyncio.run(run_search(stream(), context(budget=3), concurrency=4))
    assert [r.prompt.prompt_id for r in results] == [p.prompt_id for p in prompts(6)]


def test_a_strategy_bug_propagates_instead_of_hanging():
    class Broken(Strategy):
        name = "broken"

        async def run(self, prompt, ctx):
            raise RuntimeError("bug in a strategy")

    with pytest.raises(RuntimeError, match="bug in a strategy"):
        asyncio.run(run_search(prompts(5), context(), concurrency=2, strategy=Broken()))


def test_concurrency_must_be_positive():
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        asyncio.run(run_search(prompts(1), context(), concurrency=0))
