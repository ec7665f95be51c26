"""Random sampling: N independent fresh answers from one agent (`search.model`, default the first agent).

All N requests are independent, so they run concurrently (the backend bounds requests in flight).
"""
from __future__ import annotations

import asyncio

from toa_core.records import Prompt, PromptResult
from toa_core.strategies.base import SearchContext, Strategy


class RandomSamplingStrategy(Strategy):
    name = "random"

    async def run(self, prompt: Prompt, ctx: SearchContext) -> PromptResult:
        session = ctx.start(prompt, self.name)
        agent = ctx.agent()
        messages = ctx.templates.fresh_messages(prompt)
        await asyncio.gather(*(session.generate_and_score(agent, messages, "fresh", None, 1)
                               for _ in range(ctx.search.budget)))
        return session.result()
