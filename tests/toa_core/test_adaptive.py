"""Adaptive budgets: the stop rule, the shared pool of saved generations, the stop reasons, and the config."""
from __future__ import annotations

import asyncio
import math

import pytest
from pydantic import ValidationError

from toa_core.adaptive import BudgetPool, PromptBudget
from toa_core.config import AdaptiveConfig, SearchConfig
from toa_core.engine import run_search
from toa_core.records import Candidate, Prompt
from toa_core.simulated import ScriptedChatModel, ScriptedReward
from toa_core.strategies import SearchContext


def scored(reward: float | None) -> Candidate:
    return Candidate(prompt_id="p", candidate_id="p-0000", parent_id=None, kind="fresh", model="m", depth=1,
                     text=None if reward is None else "x", reward=reward, reward_norm=reward, prompt_tokens=0,
                     completion_tokens=0, latency_s=0.0, finish_reason=None, strategy="toa", seed=0,
                     error="failed" if reward is None else None)


def budget(n=20, minimum=6, patience=3, margin=0.0, factor=2.0, pool=None) -> PromptBudget:
    adaptive = AdaptiveConfig(enabled=True, min_generations=minimum, patience=patience, margin=margin,
                              max_budget_factor=factor)
    return PromptBudget(n, adaptive, pool if pool is not None else BudgetPool(), min_generations=minimum,
                        patience=patience)


def feed(b: PromptBudget, rewards) -> list[int]:
    """Start and finish generations one at a time; returns the generation counts at which it was asked."""
    for reward in rewards:
        if not b.may_start():
            break
        b.start()
        b.finished(scored(reward))
    return b.started


def test_fixed_budget_spends_exactly_n_whatever_the_rewards():
    b = PromptBudget(5)
    assert feed(b, [0.1] * 10) == 5
    assert b.stop_reason == "budget" and b.summary()["generations"] == 5


def test_stops_when_the_best_has_not_improved_over_the_last_m_generations():
    pool = BudgetPool()
    b = budget(n=20, minimum=6, patience=3, pool=pool)
    # best: .1 .2 .3 .3 .3 .3 -> at g=6 the best of g-3=3 (.3) equals the best now: plateau.
    assert feed(b, [0.1, 0.2, 0.3, 0.25, 0.3, 0.1, 0.9]) == 6
    assert b.stop_reason == "plateau"
    assert pool.available == 14 and b.summary()["allowance"] == 6


def test_never_stops_before_the_minimum():
    b = budget(n=20, minimum=8, patience=2)
    assert feed(b, [0.5] * 20) == 8
    assert b.stop_reason == "plateau"


def test_an_improvement_must_exceed_margin_times_the_spread():
    rewards = [0.0, 1.0, 0.0, 1.0, 1.01, 1.02, 1.03, 1.04]  # spread (std) ~0.5, then +0.01 per generation
    small = budget(n=20, minimum=6, patience=2, margin=0.1)  # needs > 0.05 over 2 generations
    assert feed(small, rewards) == 6 and small.stop_reason == "plateau"
    none = budget(n=20, minimum=6, patience=2, margin=0.0)  # any improvement counts
    assert feed(none, rewards) == 8 and none.stop_reason is None


def test_failed_generations_count_as_spent():
    b = budget(n=20, minimum=4, patience=2)
    assert feed(b, [0.5, None, None, None]) == 4
    assert b.stop_reason == "plateau"


def test_a_prompt_still_improving_at_its_budget_takes_saved_generations_up_to_the_cap():
    pool = BudgetPool()
    pool.deposit(3)
    b = budget(n=5, minimum=2, patience=2, factor=2.0, pool=pool)
    assert feed(b, [0.1 * i for i in range(1, 20)]) == 8  # 5 + the 3 saved ones
    assert b.stop_reason == "pool_empty" and pool.withdrawn == 3
    rich = BudgetPool()
    rich.deposit(100)
    capped = budget(n=5, minimum=2, patience=2, factor=2.0, pool=rich)
    assert feed(capped, [0.1 * i for i in range(1, 20)]) == 10
    assert capped.stop_reason == "budget_cap" and rich.available == 95


def test_a_prompt_that_is_not_improving_at_its_budget_takes_nothing():
    pool = BudgetPool()
    pool.deposit(10)
    b = budget(n=5, minimum=10, patience=2, pool=pool)  # the minimum is never reached inside the budget
    assert feed(b, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]) == 5
    assert b.stop_reason == "budget" and pool.available == 10


def test_generations_in_flight_are_waited_for_before_deciding_to_extend():
    pool = BudgetPool()
    pool.deposit(5)
    b = budget(n=2, minimum=1, patience=1, pool=pool)
    assert b.may_start() and (b.start() or True) and b.may_start()
    b.start()
    assert not b.may_start() and b.stop_reason is None  # two in flight: nothing to judge yet
    b.finished(scored(0.1))
    b.finished(scored(0.2))
    assert b.may_start() and b.allowance == 3  # improving: one more from the pool


def test_adaptive_needs_a_tree_strategy():
    with pytest.raises(ValidationError, match="adaptive.enabled.*cannot stop early"):
        SearchConfig(strategy="ensemble", adaptive={"enabled": True})
    SearchConfig(strategy="ab_mcts", adaptive={"enabled": True})
    SearchConfig(strategy="ensemble", adaptive={"enabled": False})


def test_defaults_are_off_and_scale_with_the_budget():
    from toa_core.adaptive import resolved_adaptive, toa_width
    assert SearchConfig().adaptive.enabled is False
    on = {"enabled": True}
    assert resolved_adaptive(SearchConfig(strategy="ab_mcts", budget=160, adaptive=on), 4) == (80, 40)
    assert resolved_adaptive(SearchConfig(strategy="ab_mcts", budget=8, adaptive=on), 4) == (5, 4)
    # TOA plans its layers for the generations it is sure to spend (a third of the minimum), and waits at least
    # one layer before it calls a prompt stuck.
    adaptive_toa = SearchConfig(strategy="toa", budget=160, adaptive=on)
    assert toa_width(adaptive_toa, 4) == 26 and resolved_adaptive(adaptive_toa, 4) == (80, 40)
    assert toa_width(SearchConfig(strategy="toa", budget=160), 4) == 53  # fixed budget: the paper's N/3
    assert toa_width(SearchConfig(strategy="toa", budget=160, width=30, adaptive=on), 4) == 30
    assert resolved_adaptive(SearchConfig(strategy="toa", budget=160, width=60, adaptive=on), 4) == (80, 61)


@pytest.mark.parametrize("strategy", ["toa", "ab_mcts"])
def test_saved_generations_move_to_prompts_still_improving_within_the_run_total(strategy):
    """Flat prompts (every answer scores the same) stop early; climbing prompts (every refinement is better)
    get their savings; the run spends at most budget x prompts, and each record says why it stopped."""
    def script(messages, call_index):  # "<kind>:<refinement level>:<call>"
        text = messages[-1]["content"]
        if " REFINE " in text:
            kind, level, _ = text.split(" REFINE ")[1].split(":")
            return f"{kind}:{int(level) + 1}:{call_index}"
        return f"{text.split(':')[0]}:1:{call_index}"

    def score(messages, response):  # flat: every answer alike; climb: every newer answer is better
        kind, level, call = response.split(":")
        return 0.5 if kind == "flat" else 0.05 * int(level) + 0.001 * int(call)

    from toa_core.prompts import Templates
    templates = Templates(refine="{question} REFINE {answer}", aggregate="AGG", translate="T {source}",
                          refine_translation="RT", aggregate_translation="AT")
    agents = [ScriptedChatModel("A", script), ScriptedChatModel("B", script)]
    search = SearchConfig(strategy=strategy, budget=24, tau=1.0, prompt_concurrency=8,
                          adaptive={"enabled": True, "min_generations": 12, "patience": 9, "max_budget_factor": 2})
    ctx = SearchContext(agents, ScriptedReward(score), search, templates=templates)
    prompts = [Prompt.from_messages([{"role": "user", "content": f"{kind}: task {i}"}])
               for i, kind in enumerate(["flat"] * 4 + ["climb"] * 4)]
    results = asyncio.run(run_search(prompts, ctx))
    spent = {r.prompt.messages[0]["content"]: len(r.candidates) for r in results}
    assert sum(spent.values()) <= 24 * len(prompts)
    flat = [r for r in results if r.prompt.messages[0]["content"].startswith("flat")]
    climb = [r for r in results if r.prompt.messages[0]["content"].startswith("climb")]
    assert all(r.search["stop_reason"] == "plateau" and len(r.candidates) < 24 for r in flat)
    assert any(len(r.candidates) > 24 for r in climb)
    for r in results:
        assert r.search["generations"] == len(r.candidates) <= 48
        assert r.search["stop_reason"] in {"plateau", "budget", "pool_empty", "budget_cap"}
    assert math.isfinite(results[0].search["search_cpu_s"])


def test_the_search_record_travels_with_the_tree_file():
    import json

    from toa_core.candidate_table import trees_to_jsonl
    record = {"stop_reason": "plateau", "generations": 12, "round_trips": 12}
    lines = trees_to_jsonl([("p1", [{"node_id": 0}], record), ("p2", [{"node_id": 0}])]).splitlines()
    assert json.loads(lines[0]) == {"prompt_id": "p1", "nodes": [{"node_id": 0}], "search": record}
    assert json.loads(lines[1]) == {"prompt_id": "p2", "nodes": [{"node_id": 0}]}
