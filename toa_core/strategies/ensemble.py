"""Parallel ensemble: N fresh answers spread over the K agents, N // K each, the remainder going to the first
agents in configured order. The call order is shuffled with an RNG seeded by (search.seed, prompt_id), as the
reference shuffles it (unseeded there); the calls run concurrently and candidate ids follow the shuffled order.
"""
from __future__ import annotations

import asyncio
import random

from toa_core.records import Prompt, PromptResult
from toa_core.strategies.base import SearchContext, Strategy, derive_seed


def per_model_counts(budget: int, n_models: int) -> list[int]:
    """budget // K for every model, plus one for each of the first budget % K models."""
    base, extra = divmod(budget, n_models)
    return [base + (1 if k < extra else 0) for k in range(n_models)]


class EnsembleStrategy(Strategy):
    name = "ensemble"

    async def run(self, prompt: Prompt, ctx: SearchContext) -> PromptResult:
        session = ctx.start(prompt, self.name)
        order = [agent for agent, count in zip(ctx.agents, per_model_counts(ctx.search.budget, len(ctx.agents)))
                 for _ in range(count)]
        random.Random(derive_seed(ctx.seed, prompt.prompt_id, self.name)).shuffle(order)
        messages = ctx.templates.fresh_messages(prompt)
        await asyncio.gather(*(session.generate_and_score(agent, messages, "fresh", None, 1) for agent in order))
        return session.result()
