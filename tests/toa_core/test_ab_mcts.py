"""ab_mcts (treequest's AB-MCTS-A, run by ab_mcts_core): budget, warm-up, score mapping, exploration floor, widen vs deepen,
failures, exported tree, reproducibility."""
from __future__ import annotations

import asyncio
import collections
import functools
import json
import statistics

import numpy as np
import pytest

from tests.toa_core.ab_mcts_scenarios import FIXTURE, SCENARIOS, plays_of, run_scenario
from tests.toa_core.test_toa import TEMPLATES
from tests.toa_core.test_toa import scripted_agent as toa_scripted_agent
from toa_core.config import SearchConfig
from toa_core.records import Prompt
from toa_core.simulated import ScriptedReward, SimulatedAgent, SimulatedReward
from toa_core.strategies import SearchContext, get_strategy
from toa_core.strategies.base import stable_sigmoid

PROMPT = Prompt.from_messages([{"role": "user", "content": "Explain AB-MCTS."}])
# Fresh answers are '<name>.f<call>'; a refinement of X is '<name>.r(X)' (so depth shows in the text).
scripted_agent = functools.partial(toa_scripted_agent, refine_label="r")
GOLDEN = json.loads(FIXTURE.read_text())


def depth_of(text: str) -> int:
    return text.count(".r(") + 1


def run_ab(agents, reward, **search):
    search.setdefault("tau", 1.0)
    ctx = SearchContext(agents, reward, SearchConfig(strategy="ab_mcts", **search), templates=TEMPLATES)
    return asyncio.run(get_strategy("ab_mcts").run(PROMPT, ctx))


def plays(result, decision):
    by_id = {n["candidate_id"]: n for n in result.tree if n["type"] == "response"}
    return [c for c in result.candidates if c.candidate_id in by_id and by_id[c.candidate_id]["decision"] == decision]


@pytest.mark.parametrize("budget, k, rollouts", [(1, 3, 1), (2, 3, 1), (7, 3, 1), (25, 4, 1), (40, 3, 4)])
def test_exactly_budget_generations_and_scores(budget, k, rollouts):
    agents = [SimulatedAgent(f"m{i}", 0.4 + 0.05 * i, refine_delta=0.02, noise=0.05) for i in range(k)]
    reward = SimulatedReward(noise=0.01)
    result = run_ab(agents, reward, budget=budget, rollouts_per_tree=rollouts)
    assert len(result.candidates) == budget
    assert sum(a.calls for a in agents) == budget and reward.calls == budget
    assert [c.candidate_id for c in result.candidates] == [f"{PROMPT.prompt_id}-{i:04d}" for i in range(budget)]
    assert all(0.0 <= c.reward_norm <= 1.0 for c in result.candidates)
    assert result.search["generations"] == budget and result.search["stop_reason"] == "budget"
    assert result.search["search_cpu_s"] >= 0
    assert len([n for n in result.tree if n["type"] == "response"]) == budget


def test_warm_up_is_one_fresh_answer_per_model_in_order_and_fixes_the_score_mapping():
    names = ["zeta", "alpha", "mid"]
    agents = [scripted_agent(n) for n in names]
    fresh = {"zeta": 0.2, "alpha": 0.5, "mid": 0.8}
    reward = ScriptedReward(lambda m, text: fresh.get(text.split(".")[0], 0.0) if ".r(" not in text else 0.6)
    result = run_ab(agents, reward, budget=12)
    warmup = result.candidates[:3]
    assert [(c.model, c.kind) for c in warmup] == [(n, "fresh") for n in names]
    assert [c.candidate_id for c in plays(result, "warmup")] == [c.candidate_id for c in warmup]
    center = statistics.fmean([0.2, 0.5, 0.8])
    scale = 2 * statistics.pstdev([0.2, 0.5, 0.8])
    for c in result.candidates:
        assert c.reward_norm == pytest.approx(stable_sigmoid((c.reward - center) / scale))
    (root,) = [n for n in result.tree if n["type"] == "root"]
    assert root["score_center"] == pytest.approx(center) and root["score_scale"] == pytest.approx(scale)


@pytest.mark.parametrize("floor", [0.1, 0.25])
def test_the_exploration_floor_keeps_a_weak_model_writing(floor):
    agents = [scripted_agent("good"), scripted_agent("weak")]
    reward = ScriptedReward(lambda m, text: 0.1 if text.startswith("weak") else 0.9)
    budget = 60
    result = run_ab(agents, reward, budget=budget, ab_mcts={"exploration_floor": floor})
    weak = [c for c in result.candidates if c.model == "weak"]
    assert len(weak) >= floor * budget
    # The floor holds along the way, not only at the end: after p plays the weak model wrote >= floor * p - 1.
    for p in range(1, budget + 1):
        assert sum(c.model == "weak" for c in result.candidates[:p]) >= floor * p - 1
    assert all(c.kind == "fresh" for c in plays(result, "floor"))


def test_without_a_floor_a_weak_model_is_left_alone():
    agents = [scripted_agent("good"), scripted_agent("weak")]
    reward = ScriptedReward(lambda m, text: 0.1 if text.startswith("weak") else 0.9)
    result = run_ab(agents, reward, budget=60, ab_mcts={"exploration_floor": 0.0})
    assert sum(c.model == "weak" for c in result.candidates) < 0.25 * 60  # what a 0.25 floor would force
    assert not plays(result, "floor")


def test_a_per_model_floor_names_models_and_unknown_names_are_errors():
    agents = [scripted_agent("good"), scripted_agent("weak")]
    reward = ScriptedReward(lambda m, text: 0.1 if text.startswith("weak") else 0.9)
    result = run_ab(agents, reward, budget=40, ab_mcts={"exploration_floor": {"weak": 0.3}})
    assert sum(c.model == "weak" for c in result.candidates) >= 12
    with pytest.raises(ValueError, match="unknown model.*nobody"):
        run_ab(agents, reward, budget=10, ab_mcts={"exploration_floor": {"nobody": 0.3}})
    with pytest.raises(ValueError, match="more than the whole budget"):
        run_ab(agents, reward, budget=10, ab_mcts={"exploration_floor": 0.6})


def test_deepens_when_refining_clearly_pays():
    agents = [scripted_agent(n) for n in "AB"]
    # Each refinement is better than what it refines; fresh answers stay mediocre.
    reward = ScriptedReward(lambda m, text: min(1.0, 0.3 + 0.1 * depth_of(text)))
    result = run_ab(agents, reward, budget=60, ab_mcts={"exploration_floor": 0.0})
    searched = plays(result, "thompson")
    refines = [c for c in searched if c.kind == "refine"]
    assert len(refines) > 0.5 * len(searched)  # AB-MCTS keeps widening too: Thompson sampling, not greed
    assert max(c.depth for c in result.candidates) >= 4
    assert result.best.kind == "refine"


def test_widens_when_fresh_answers_clearly_pay():
    agents = [scripted_agent(n) for n in "AB"]
    # Fresh answers vary and are sometimes great; any refinement ruins an answer.
    reward = ScriptedReward(lambda m, text: 0.0 if ".r(" in text else (int(text.split(".f")[1]) * 7 % 10) / 10)
    result = run_ab(agents, reward, budget=60, ab_mcts={"exploration_floor": 0.0})
    searched = plays(result, "thompson")
    fresh = [c for c in searched if c.kind == "fresh"]
    assert len(fresh) > 0.5 * len(searched)
    assert result.best.kind == "fresh"


def test_same_seed_same_search_and_numpy_global_state_untouched():
    def once(seed):
        agents = [SimulatedAgent(f"m{i}", 0.4 + 0.05 * i, refine_delta=0.03, noise=0.05, seed=1) for i in range(3)]
        return run_ab(agents, SimulatedReward(noise=0.02, seed=1), budget=30, seed=seed)
    np.random.seed(123)
    expected_next = np.random.RandomState(123).random_sample()
    first = once(5)
    assert np.random.random_sample() == expected_next  # the draws used the tree's own generator
    second, other = once(5), once(6)
    assert first.tree == second.tree
    assert [c.to_row() for c in first.candidates] == [c.to_row() for c in second.candidates]
    assert [c.to_row() for c in first.candidates] != [c.to_row() for c in other.candidates]


def test_a_dead_model_is_excluded_and_failures_are_never_told():
    agents = [scripted_agent("dead", fail=True), scripted_agent("A"), scripted_agent("B")]
    reward = ScriptedReward(lambda m, text: 0.3 + 0.1 * depth_of(text))
    result = run_ab(agents, reward, budget=30, max_model_failures=2)
    assert len(result.candidates) == 30
    dead = [c for c in result.candidates if c.model == "dead"]
    assert len(dead) == 2 and agents[0].calls == 2
    assert all(c.error and c.reward is None and c.reward_norm is None for c in dead)
    assert reward.calls == 28
    responses = [n for n in result.tree if n["type"] == "response"]
    assert len(responses) == 28 and not [n for n in responses if n["model"] == "dead"]


def test_every_model_dead_records_the_rest_without_requests():
    agents = [scripted_agent(n, fail=True) for n in "AB"]
    result = run_ab(agents, ScriptedReward(default=0.5), budget=10, max_model_failures=2)
    assert len(result.candidates) == 10 and [a.calls for a in agents] == [2, 2]
    assert all("not attempted" in c.error for c in result.candidates[4:])


def test_exported_tree_matches_the_candidate_records():
    agents = [SimulatedAgent(f"m{i}", s, refine_delta=0.03, noise=0.05) for i, s in enumerate([0.3, 0.5, 0.4])]
    result = run_ab(agents, SimulatedReward(noise=0.01), budget=40)
    nodes = {n["node_id"]: n for n in result.tree}
    by_id = {c.candidate_id: c for c in result.candidates}
    (root,) = [n for n in nodes.values() if n["type"] == "root"]
    assert set(root["models"]) == {"m0", "m1", "m2"} and sum(m["n"] for m in root["models"].values()) == 40
    assert root["gen_posterior"] and root["cont_posterior"]
    for node in nodes.values():
        if node["type"] != "response":
            continue
        cand = by_id[node["candidate_id"]]
        parent = nodes[node["parent_id"]]
        assert node["arm"] == cand.kind and node["model"] == cand.model and node["depth"] == cand.depth
        assert node["score"] == pytest.approx(cand.reward_norm)
        assert node["decision"] in {"warmup", "floor", "thompson", "redirected"}
        assert node["posterior"] is not None and node["visits"] >= 1
        if cand.kind == "fresh":
            assert parent["type"] == "root" and cand.parent_id is None
        else:
            assert parent["candidate_id"] == cand.parent_id
    decisions = collections.Counter(n["decision"] for n in nodes.values() if n["type"] == "response")
    assert decisions["warmup"] == 3 and decisions["floor"] + decisions["thompson"] == 37


def test_parallel_rollouts_cut_round_trips():
    agents = [SimulatedAgent(f"m{i}", 0.4 + 0.05 * i, refine_delta=0.02, noise=0.05) for i in range(3)]
    sequential = run_ab(agents, SimulatedReward(), budget=40)
    parallel = run_ab(agents, SimulatedReward(), budget=40, rollouts_per_tree=4)
    assert sequential.search["round_trips"] == 40
    assert parallel.search["round_trips"] == 10
    assert max(a.max_in_flight for a in agents) > 1


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_plays_are_the_ones_recorded_from_the_treequest_backed_implementation(name):
    """Speed work must not change a decision: every play (model, arm, parent, decision, score) of the scripted
    scenarios is the one the treequest-backed strategy made (tests/toa_core/ab_mcts_scenarios.py recorded them)."""
    recorded = GOLDEN[name]
    result = run_scenario(name)
    assert plays_of(result) == recorded["plays"]
    if recorded["tree"] is not None:
        assert result.tree == recorded["tree"]  # posteriors included: the same floats, not just close ones
