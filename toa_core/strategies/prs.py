"""PRS without feedback: floor(N/2) fresh answers from one agent, then N - floor(N/2) refinements, each of the
single best-rewarded fresh answer, by the same agent. Each layer runs concurrently.

If no fresh answer got a reward (every request or score failed, or N = 1 so there is no fresh layer), there is
nothing to refine: the second layer falls back to fresh answers, so the budget is still spent.
"""
from __future__ import annotations

import asyncio

from toa_core.records import Prompt, PromptResult
from toa_core.strategies.base import SearchContext, Strategy


class PRSStrategy(Strategy):
    name = "prs"

    async def run(self, prompt: Prompt, ctx: SearchContext) -> PromptResult:
        session = ctx.start(prompt, self.name)
        agent = ctx.agent()
        n_fresh = ctx.search.budget // 2
        fresh_messages = ctx.templates.fresh_messages(prompt)
        fresh = await asyncio.gather(*(session.generate_and_score(agent, fresh_messages, "fresh", None, 1)
                                       for _ in range(n_fresh)))
        scored = [c for c in fresh if c.reward is not None]
        best = max(scored, key=lambda c: c.reward) if scored else None  # max keeps the first on ties
        n_second = ctx.search.budget - n_fresh
        if best is None:
            second = (session.generate_and_score(agent, fresh_messages, "fresh", None, 1) for _ in range(n_second))
        else:
            refine_messages = ctx.templates.refine_messages(prompt, best.text)
            second = (session.generate_and_score(agent, refine_messages, "refine", best, best.depth + 1)
                      for _ in range(n_second))
        await asyncio.gather(*second)
        return session.result()
