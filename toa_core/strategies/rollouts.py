"""The play loop shared by the tree strategies (toa, ab_mcts): up to `search.rollouts_per_tree` generations in
flight in one tree, a per-prompt budget that may stop early, and the CPU time of the search logic.

One play = the strategy selects (synchronously: `select(play_index)`), one generation runs, and the strategy
takes the result in (`take(token, candidate)`). With one rollout this is exactly the paper's sequential loop:
select -> generate -> backup -> select ... With R rollouts, the loop selects until R generations are in flight,
waits for the first to finish, takes every finished one in (in play order, so a run is reproducible), and
selects again; the strategy's selection sees the pending plays (TOA charges them a virtual loss).

`select` returns a Pending (its token and the generation's awaitable), a finished Candidate (a play recorded
without a request, e.g. when every model has been excluded), or None when the tree can do nothing more (the
budget then gives up with reason "models_failed").
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from toa_core.adaptive import PromptBudget
from toa_core.records import Candidate


@dataclass
class Pending:
    token: Any
    generation: Awaitable[Candidate]


@dataclass
class PlayStats:
    """What the loop measured for one prompt."""
    search_cpu_s: float = 0.0  # thread CPU time spent in select/take (the search logic, not the requests)
    plays: int = 0

    def as_dict(self) -> dict[str, float]:
        per_generation = self.search_cpu_s / self.plays if self.plays else 0.0
        return {"search_cpu_s": self.search_cpu_s, "search_cpu_ms_per_generation": 1000.0 * per_generation}


async def run_plays(budget: PromptBudget, rollouts: int,
                    select: Callable[[int], Pending | Candidate | None],
                    take: Callable[[Any, Candidate], None]) -> PlayStats:
    """Run plays until the budget says stop and nothing is in flight."""
    stats = PlayStats()
    in_flight: dict[asyncio.Future, tuple[int, Any]] = {}
    try:
        while True:
            while len(in_flight) < rollouts and budget.may_start():
                play = budget.started
                cpu = time.thread_time()
                selected = select(play)
                stats.search_cpu_s += time.thread_time() - cpu
                if selected is None:
                    budget.give_up("models_failed")
                    break
                budget.start()
                stats.plays += 1
                if isinstance(selected, Candidate):
                    budget.finished(selected)
                    continue
                in_flight[asyncio.ensure_future(selected.generation)] = (play, selected.token)
            if not in_flight:
                return stats
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: in_flight[f][0]):
                _, token = in_flight.pop(future)
                candidate = future.result()
                cpu = time.thread_time()
                take(token, candidate)
                stats.search_cpu_s += time.thread_time() - cpu
                budget.finished(candidate)
    finally:
        for future in in_flight:
            future.cancel()
