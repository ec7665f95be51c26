"""Scripted AB-MCTS runs whose plays are pinned in tests/toa_core/data/ab_mcts_plays.json.

The fixture was recorded from the treequest-backed implementation (before toa_core/strategies/ab_mcts_core.py
took over its hot loop); test_ab_mcts.py replays every scenario and compares play by play, so a change that is
meant to be only about speed cannot change a decision unnoticed. Re-record (only for a deliberate change of
behaviour, and say so in the commit):

    PYTHONPATH=$PWD .venv/bin/python -m tests.toa_core.ab_mcts_scenarios
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from tests.toa_core.test_toa import TEMPLATES
from tests.toa_core.test_toa import scripted_agent as toa_scripted_agent
from toa_core.config import SearchConfig
from toa_core.records import Prompt, PromptResult
from toa_core.simulated import ENVIRONMENTS, ScriptedReward, SimulatedAgent, SimulatedReward
from toa_core.strategies import SearchContext, get_strategy

FIXTURE = Path(__file__).parent / "data" / "ab_mcts_plays.json"
PROMPT = Prompt.from_messages([{"role": "user", "content": "Explain AB-MCTS."}])
scripted_agent = functools.partial(toa_scripted_agent, refine_label="r")


def text_value(text: str) -> float:
    """A fixed pseudo-random number in [0, 1) for a response text."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "big") / 2**48


def scripted_reward(refine_gain: float) -> ScriptedReward:
    """Rewards that vary from answer to answer; each level of refinement adds `refine_gain` on average."""
    return ScriptedReward(lambda m, text: 0.5 * text_value(text) + refine_gain * text.count(".r("),
                          fail=lambda text: text_value(text + "#fail") < 0.03)


# name -> (agents factory, reward factory, search overrides)
SCENARIOS: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
for _seed in range(4):
    SCENARIOS[f"scripted-deepen-s{_seed}"] = (lambda: [scripted_agent(n) for n in "ABC"],
                                              lambda: scripted_reward(0.15), {"budget": 60, "seed": _seed})
    SCENARIOS[f"scripted-widen-s{_seed}"] = (lambda: [scripted_agent(n) for n in "ABC"],
                                             lambda: scripted_reward(-0.1),
                                             {"budget": 60, "seed": _seed, "ab_mcts": {"exploration_floor": 0.0}})
for _seed in range(2):
    SCENARIOS[f"scripted-beta-s{_seed}"] = (lambda: [scripted_agent(n) for n in "ABC"],
                                            lambda: scripted_reward(0.05),
                                            {"budget": 60, "seed": _seed, "ab_mcts": {"dist_type": "beta"}})
    SCENARIOS[f"scripted-r4-s{_seed}"] = (lambda: [scripted_agent(n) for n in "ABCD"],
                                          lambda: scripted_reward(0.1),
                                          {"budget": 80, "seed": _seed, "rollouts_per_tree": 4})
SCENARIOS["scripted-dead-model"] = (
    lambda: [scripted_agent("dead", fail=True), scripted_agent("A"), scripted_agent("B", fail={5, 9})],
    lambda: scripted_reward(0.1), {"budget": 50, "seed": 3, "max_model_failures": 2})
SCENARIOS["scripted-one-model"] = (lambda: [scripted_agent("solo")], lambda: scripted_reward(0.1),
                                   {"budget": 30, "seed": 1})
SCENARIOS["scripted-budget-160"] = (lambda: [scripted_agent(n) for n in "ABC"], lambda: scripted_reward(0.08),
                                    {"budget": 160, "seed": 7})
SCENARIOS["simulated-adaptive"] = (
    lambda: [SimulatedAgent(f"m{i}", 0.4 + 0.05 * i, refine_delta=0.03, noise=0.05, seed=1) for i in range(3)],
    lambda: SimulatedReward(noise=0.02, seed=1), {"budget": 40, "seed": 2, "adaptive": {"enabled": True}})
# The simulator as it was when these plays were recorded (before issue 25's realistic agents).
_ENV = ENVIRONMENTS["specialist"].with_perception(oracle=True, writes_length=False)
SCENARIOS["specialist-environment"] = (lambda: _ENV.agents(seed=0), lambda: _ENV.reward(seed=0),
                                       {"budget": 80, "seed": 0})


# the scenarios whose whole exported tree (posteriors included) is pinned too
TREE_SCENARIOS = ("scripted-deepen-s0", "scripted-beta-s0", "scripted-r4-s0", "scripted-dead-model")


def run_scenario(name: str) -> PromptResult:
    agents, reward, search = SCENARIOS[name]
    search = {"tau": 1.0, **search}
    ctx = SearchContext(agents(), reward(), SearchConfig(strategy="ab_mcts", **search), templates=TEMPLATES)
    return asyncio.run(get_strategy("ab_mcts").run(PROMPT, ctx))


def plays_of(result: PromptResult) -> list[list[Any]]:
    """One row per generation: candidate id suffix, model, arm, parent id suffix, decision, tree score."""
    decisions = {n["candidate_id"]: n["decision"] for n in result.tree if n["type"] == "response"}
    return [[c.candidate_id[-4:], c.model, c.kind, c.parent_id[-4:] if c.parent_id else None,
             decisions.get(c.candidate_id), c.reward_norm] for c in result.candidates]


def record() -> None:
    recorded = {}
    for name in SCENARIOS:
        result = run_scenario(name)
        recorded[name] = {"plays": plays_of(result), "tree": result.tree if name in TREE_SCENARIOS else None}
    FIXTURE.write_text(json.dumps(recorded, indent=None, separators=(",", ":")) + "\n")
    print(f"recorded {len(recorded)} scenarios in {FIXTURE}")


if __name__ == "__main__":
    record()
