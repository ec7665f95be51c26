"""The tree strategies' aggregate move (search.aggregate): structure, budget accounting and lineage."""
from __future__ import annotations

import asyncio
import hashlib
import re

import pytest

from toa_core.config import SearchConfig
from toa_core.simulated import ScriptedChatModel, ScriptedReward
from toa_core.strategies import SearchContext, get_strategy

from tests.toa_core.test_toa import PROMPT, TEMPLATES, cid, run_toa, tree_nodes


def aggregating_agent(name: str) -> ScriptedChatModel:
    """Fresh '<name>.f<call>'; refine '<name>.refine(<answer>)'; aggregate '<name>.agg{<n answers>}#<call>'."""
    def script(messages, call_index):
        if messages[0]["role"] == "system" and "AGG" in messages[0]["content"]:
            return f"{name}.agg{{{len(quoted_in(messages))}}}#{call_index}"
        refined = re.search(r"REFINE<(.*)>$", messages[-1]["content"], re.S)
        return f"{name}.refine({refined.group(1)})" if refined else f"{name}.f{call_index}"
    return ScriptedChatModel(name, script)


def quoted_in(messages) -> list[str]:
    """The answers an aggregate prompt lists, in the listed order."""
    return re.findall(r"## Response \d+:\n(.*?)(?=\n\n## Response|\Z)", messages[0]["content"], re.S)


def quoted_by(agents, candidate) -> list[str]:
    """What the request that wrote `candidate` (an aggregate) quoted."""
    agent = next(a for a in agents if a.name == candidate.model)
    return quoted_in(agent.requests[int(candidate.text.rsplit("#", 1)[1])].messages)


def scores(fresh, aggregate=0.9, refine=0.2):
    def score(messages, text):
        if ".agg{" in text:
            return aggregate
        if ".refine(" in text:
            return refine
        return fresh[text.split(".")[0]]
    return ScriptedReward(score)


def test_toa_aggregates_the_trees_top_k_once_it_holds_k_answers():
    agents = [aggregating_agent(n) for n in "ABC"]
    reward = scores({"A": 0.1, "B": 0.5, "C": 0.3})
    result = run_toa(agents, reward, budget=8, aggregate={"enabled": True, "k": 2, "models": ["B"]})
    cands = result.candidates
    # Plays 1-3: each model fresh in order (the aggregate arm comes after the fresh arms, so ties keep them first).
    assert [(c.model, c.kind) for c in cands[:3]] == [("A", "fresh"), ("B", "fresh"), ("C", "fresh")]
    # Play 4: B's untried aggregate arm (+inf) combines the two best answers: B's (0.5) and C's (0.3).
    agg = cands[3]
    assert (agg.model, agg.kind, agg.parent_id, agg.depth) == ("B", "aggregate", cid(1), 2)
    assert sorted(quoted_by(agents, agg)) == ["B.f0", "C.f0"]  # call indices count per agent
    (node,) = tree_nodes(result, type="response", candidate_id=agg.candidate_id)
    assert node["sources"] == [cid(1), cid(2)]  # lineage: the k answers, best first
    arm = next(n for n in result.tree if n["node_id"] == node["parent_id"])
    assert arm["type"] == "model" and arm["arm"] == "aggregate" and arm["model"] == "B"
    # Budget accounting: one aggregation = one play = one generation and one score.
    assert len(cands) == 8 and sum(a.calls for a in agents) == 8 and reward.calls == 8
    # Only B aggregates; no aggregate before k answers existed.
    assert all(c.model == "B" for c in cands if c.kind == "aggregate")


def test_toa_without_the_move_has_no_aggregate_arm():
    result = run_toa([aggregating_agent(n) for n in "ABC"], scores({"A": 0.1, "B": 0.5, "C": 0.3}), budget=12)
    assert all(c.kind != "aggregate" for c in result.candidates)
    assert all(n["arm"] != "aggregate" and "sources" not in n for n in result.tree)


def hashed_reward():
    """A fixed pseudo-random score per text (so answers differ), aggregates a little better on average."""
    def score(messages, text):
        base = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16**8
        return base + (0.2 if ".agg{" in text else 0.0)
    return ScriptedReward(score)


def run(strategy, budget, seed=0, **search):
    agents = [aggregating_agent(n) for n in "ABC"]
    reward = hashed_reward()
    ctx = SearchContext(agents, reward,
                        SearchConfig(strategy=strategy, budget=budget, tau=1.0, alpha=0.05, seed=seed, **search),
                        templates=TEMPLATES)
    return asyncio.run(get_strategy(strategy).run(PROMPT, ctx)), agents


@pytest.mark.parametrize("strategy", ["toa", "ab_mcts"])
def test_every_aggregate_combines_the_k_best_answers_before_it(strategy):
    result, agents = run(strategy, 40, aggregate={"enabled": True, "k": 3})
    cands = result.candidates
    assert len(cands) == 40 and sum(a.calls for a in agents) == 40
    by_id = {c.candidate_id: c for c in cands}
    aggregates = [c for c in cands if c.kind == "aggregate"]
    assert aggregates, "the aggregate move was never chosen"
    sources = {n["candidate_id"]: n["sources"] for n in result.tree if "sources" in n}
    assert set(sources) == {c.candidate_id for c in aggregates}
    for agg in aggregates:
        ids = sources[agg.candidate_id]
        assert len(ids) == 3 and agg.parent_id == ids[0] and agg.depth == by_id[ids[0]].depth + 1
        index = cands.index(agg)
        earlier = sorted((c for c in cands[:index] if c.reward is not None), key=lambda c: -c.reward)
        assert ids == [c.candidate_id for c in earlier[:3]]  # one rollout: every earlier answer is back
        # The prompt quoted exactly those answers.
        assert sorted(quoted_by(agents, agg)) == sorted(by_id[i].text for i in ids)


@pytest.mark.parametrize("strategy", ["toa", "ab_mcts"])
def test_aggregate_move_is_off_by_default_and_refused_for_fixed_plans(strategy):
    result, _ = run(strategy, 20)
    assert all(c.kind != "aggregate" for c in result.candidates)
    with pytest.raises(ValueError, match="aggregate move belongs to the tree strategies"):
        SearchConfig(strategy="moa", aggregate={"enabled": True})
    with pytest.raises(ValueError, match="unknown model"):
        run(strategy, 10, aggregate={"enabled": True, "models": ["nobody"]})
