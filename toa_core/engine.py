"""Run one search strategy over many prompts at once, with a bound on how many are in flight.

A fixed pool of `concurrency` workers pulls prompts from the (sync or async) iterable one at a time, so a run
over 100k prompts holds at most `concurrency` searches and never creates a task per prompt up front. TOA is
sequential inside one tree; throughput comes from many trees at once, and the backends batch and bound the
requests those trees send.

Adaptive budgets (`search.adaptive`, toa and ab_mcts): one BudgetPool per call collects the generations that
prompts stopping early did not spend and hands them to prompts still improving at their budget.

Timeouts: every network call is owned by a backend, which applies its own request timeouts and retries and
returns an error Generation (or raises RewardError) when a call fails for good. A search therefore always
finishes; this module adds no extra per-prompt timer.

If a strategy raises (a bug, not a failed request), the other workers are cancelled and that error propagates.

While searches run, the garbage collector runs full collections less often (toa_core/gc_tuning.py): they were a
third of the orchestrator's CPU per generation with a thousand trees in flight.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from typing import AsyncIterable, Awaitable, Callable, Iterable

from toa_core.adaptive import BudgetPool
from toa_core.gc_tuning import tuned_for_search
from toa_core.records import Prompt, PromptResult
from toa_core.strategies import SearchContext, Strategy, get_strategy

logger = logging.getLogger(__name__)


class _PromptSource:
    """Hands out (position, prompt) pairs from a sync or async iterable to concurrent workers."""

    def __init__(self, prompts: Iterable[Prompt] | AsyncIterable[Prompt]):
        self._lock = asyncio.Lock()  # an async iterator must not be advanced by two workers at once
        self._position = 0
        if hasattr(prompts, "__aiter__"):
            self._async_iter = prompts.__aiter__()
            self._sync_iter = None
        else:
            self._async_iter = None
            self._sync_iter = iter(prompts)

    async def next(self) -> tuple[int, Prompt] | None:
        async with self._lock:
            try:
                if self._sync_iter is not None:
                    prompt = next(self._sync_iter)
                else:
                    prompt = await self._async_iter.__anext__()
            except (StopIteration, StopAsyncIteration):
                return None
            position = self._position
            self._position += 1
            return position, prompt


async def run_search(
    prompts: Iterable[Prompt] | AsyncIterable[Prompt],
    ctx: SearchContext,
    *,
    concurrency: int | None = None,
    strategy: Strategy | str | None = None,
    on_result: Callable[[PromptResult], Awaitable[None] | None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[PromptResult] | int:
    """Search every prompt with `strategy` (default `ctx.search.strategy`), at most `concurrency` at a time
    (default `ctx.search.prompt_concurrency`).

    Without `on_result`, returns the results in input order. With `on_result`, each result is handed to it as
    soon as its search finishes (in completion order; awaited if it returns an awaitable, which also applies
    back-pressure) and not kept: the return value is then the number of prompts searched.
    `progress(done)` is called with the running count of finished prompts.
    """
    concurrency = concurrency if concurrency is not None else ctx.search.prompt_concurrency
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if ctx.search.adaptive.enabled and ctx.budget_pool is None:
        # Adaptive budgets: generations saved by prompts that stop early go to the prompts of this call that are
        # still improving at their budget, never beyond budget x prompts (toa_core/adaptive.py).
        ctx = dataclasses.replace(ctx, budget_pool=BudgetPool())
    if strategy is None or isinstance(strategy, str):
        strategy = get_strategy(strategy or ctx.search.strategy)
    source = _PromptSource(prompts)
    collected: dict[int, PromptResult] = {}
    done = 0

    async def worker() -> None:
        nonlocal done
        while (item := await source.next()) is not None:
            position, prompt = item
            result = await strategy.run(prompt, ctx)
            if on_result is not None:
                maybe_awaitable = on_result(result)
                if inspect.isawaitable(maybe_awaitable):
                    await maybe_awaitable
            else:
                collected[position] = result
            done += 1
            if progress is not None:
                progress(done)

    try:
        with tuned_for_search():  # fewer full collections while thousands of trees are alive (gc_tuning.py)
            async with asyncio.TaskGroup() as group:
                for _ in range(concurrency):
                    group.create_task(worker())
    except BaseExceptionGroup as failed:
        # Surface the error itself (usually one; several workers can hit the same bug at once).
        if len(failed.exceptions) > 1:
            logger.error("%d searches failed; raising the first", len(failed.exceptions))
        raise failed.exceptions[0]

    if on_result is not None:
        return done
    return [collected[i] for i in range(len(collected))]
