"""Sequential refinement: ceil(N/K) chains. Each chain walks the agents in its own seeded random order (seed =
(search.seed, prompt_id, chain)); the first answers fresh, each next one refines the previous response of the
chain. Chains run concurrently, the steps of one chain in sequence. Exactly N generations: the last chain is cut
short when K does not divide N.

A failed step (no text) is recorded and skipped over: the next step refines the last response of the chain that
has text, or answers fresh if there is none yet. Candidate ids are chain-major: chain c, step s -> index c*K + s.
"""
from __future__ import annotations

import asyncio
import random

from toa_core.interfaces import ChatModel
from toa_core.records import Candidate, Prompt, PromptResult
from toa_core.strategies.base import PromptSession, SearchContext, Strategy, derive_seed


class SeqRefineStrategy(Strategy):
    name = "seq_refine"

    async def run(self, prompt: Prompt, ctx: SearchContext) -> PromptResult:
        session = ctx.start(prompt, self.name)
        k, budget = len(ctx.agents), ctx.search.budget
        chains = []
        for chain in range(-(-budget // k)):
            order = random.Random(derive_seed(ctx.seed, prompt.prompt_id, self.name, chain)).sample(ctx.agents, k)
            length = min(k, budget - chain * k)
            chains.append(self._chain(session, ctx, order[:length], first_index=chain * k))
        await asyncio.gather(*chains)
        return session.result()

    @staticmethod
    async def _chain(session: PromptSession, ctx: SearchContext, agents: list[ChatModel], first_index: int) -> None:
        last: Candidate | None = None  # the latest response of this chain that has text
        for step, agent in enumerate(agents):
            if last is None:
                messages, kind = ctx.templates.fresh_messages(session.prompt), "fresh"
            else:
                messages, kind = ctx.templates.refine_messages(session.prompt, last.text), "refine"
            candidate = await session.generate_and_score(
                agent, messages, kind, last, 1 if last is None else last.depth + 1, index=first_index + step)
            if candidate.text is not None:
                last = candidate
