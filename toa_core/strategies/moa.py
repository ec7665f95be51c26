"""Mixture of agents: stacks of L = search.moa_layers layers, every model output is a candidate.

Layer 0: every agent answers fresh. Layer l >= 1: every agent aggregates the answers of layer l-1 of the same
stack that have text; the order in which they are listed is shuffled per (stack, layer) with an RNG seeded by
(search.seed, prompt_id, stack, layer) to remove the position bias of a fixed model order. Candidates of layer l
have kind "aggregate" and depth l + 1; their parent_id is the same agent's answer of the previous layer, or,
when that one failed, the first answer with text of that layer in configured model order (each aggregate really
builds on all of them; the parent id keeps the records a tree). If no answer of the previous layer has text,
the layer answers fresh instead (kind "fresh", depth 1, no parent).

Stacks run concurrently, the calls of one layer concurrently. Exactly N generations: ceil(N / (K*L)) stacks,
the last one cut short (whole layers first, then the first agents of its last layer in configured order).
Candidate ids follow the plan: stack s, layer l, agent k -> index s*K*L + l*K + k.

Self-MoA (`self_moa`, arXiv 2502.00674): the same plan over W samples of ONE model (search.model, default the
first agent) instead of the K models: every layer is W calls of that model (W = search.self_moa_width, default K),
each with its own request seed, so the samples of one layer differ; layers >= 1 aggregate the previous layer's
samples. The paper found that aggregating samples of the single best model beats mixing models of unequal
quality. Parents: the sample at the same position in the previous layer (for moa that is the same agent's answer).
"""
from __future__ import annotations

import asyncio
import random

from toa_core.interfaces import ChatModel
from toa_core.records import Candidate, Prompt, PromptResult
from toa_core.strategies.base import PromptSession, SearchContext, Strategy, derive_seed


class MoAStrategy(Strategy):
    name = "moa"

    def layer_agents(self, ctx: SearchContext) -> list[ChatModel]:
        """Who writes a full layer, in order: every configured model once."""
        return list(ctx.agents)

    async def run(self, prompt: Prompt, ctx: SearchContext) -> PromptResult:
        session = ctx.start(prompt, self.name)
        k, layers, budget = len(self.layer_agents(ctx)), ctx.search.moa_layers, ctx.search.budget
        per_stack = k * layers
        stacks = [self._stack(session, ctx, stack, min(per_stack, budget - stack * per_stack))
                  for stack in range(-(-budget // per_stack))]
        await asyncio.gather(*stacks)
        return session.result()

    async def _stack(self, session: PromptSession, ctx: SearchContext, stack: int, budget: int) -> None:
        layer_agents = self.layer_agents(ctx)
        k = len(layer_agents)
        prompt = session.prompt
        previous: list[Candidate] = []
        for layer in range(-(-budget // k)):
            agents = layer_agents[: min(k, budget - layer * k)]
            first_index = stack * k * ctx.search.moa_layers + layer * k
            inputs = [c for c in previous if c.text is not None]
            if layer == 0 or not inputs:
                messages = ctx.templates.fresh_messages(prompt)
                calls = [session.generate_and_score(agent, messages, "fresh", None, 1, index=first_index + i)
                         for i, agent in enumerate(agents)]
            else:
                shuffled = list(inputs)
                random.Random(derive_seed(ctx.seed, prompt.prompt_id, self.name, stack, layer)).shuffle(shuffled)
                messages = ctx.templates.aggregate_messages(prompt, [c.text for c in shuffled])
                calls = []
                for i, agent in enumerate(agents):
                    # The answer at the same position (moa: the same agent's) if it has text, else the first one.
                    parent = previous[i] if i < len(previous) and previous[i].text is not None else inputs[0]
                    calls.append(session.generate_and_score(agent, messages, "aggregate", parent,
                                                            parent.depth + 1, index=first_index + i))
            previous = await asyncio.gather(*calls)


class SelfMoAStrategy(MoAStrategy):
    """MoA over samples of one model (see the module docstring)."""
    name = "self_moa"

    def layer_agents(self, ctx: SearchContext) -> list[ChatModel]:
        width = ctx.search.self_moa_width or len(ctx.agents)
        return [ctx.agent()] * width
