"""TOA (MCTS) semantics, pinned with scripted models and rewards (toa_method.md section 1)."""
from __future__ import annotations

import asyncio
import collections
import math
import re

import pytest

from toa_core.config import SearchConfig
from toa_core.prompts import Templates
from toa_core.records import Prompt
from toa_core.simulated import ScriptedChatModel, ScriptedReward, SimulatedAgent, SimulatedReward
from toa_core.strategies import SearchContext, get_strategy, render_tree
from toa_core.strategies.base import stable_sigmoid

PROMPT = Prompt.from_messages([{"role": "user", "content": "What is TOA?"}])

# Templates whose refine prompt a scripted model can parse: "REFINE<answer>".
TEMPLATES = Templates(refine="{question} REFINE<{answer}>", aggregate="AGG", translate="T {source}",
                      refine_translation="{source} RT<{translation}>", aggregate_translation="{source} AT {translation}")


def scripted_agent(name: str, refine_label: str = "refine", **kwargs) -> ScriptedChatModel:
    """Fresh answers are '<name>.f<call>', refinements '<name>.<refine_label>(<answer>)' (so depth shows in the
    text)."""
    def script(messages, call_index):
        refined = re.search(r"REFINE<(.*)>$", messages[-1]["content"], re.S)
        return f"{name}.{refine_label}({refined.group(1)})" if refined else f"{name}.f{call_index}"
    return ScriptedChatModel(name, script, **kwargs)


def rule_reward(fresh: dict[str, float | list[float]], refine: dict[str, float], **kwargs) -> ScriptedReward:
    """Fresh answers score fresh[model] (or fresh[model][call]); a refinement scores refine[refiner]."""
    def score(messages, text):
        assert messages == PROMPT.messages, "the reward must judge against the original prompt"
        refined = re.match(r"(\w+)\.refine\(", text)
        if refined:
            return refine[refined.group(1)]
        model, call = re.fullmatch(r"(\w+)\.f(\d+)", text).groups()
        value = fresh[model]
        return value[int(call)] if isinstance(value, list) else value
    return ScriptedReward(score, **kwargs)


def run_toa(agents, reward, **search):
    search.setdefault("tau", 0.1)
    search.setdefault("alpha", 0.01)
    ctx = SearchContext(agents, reward, SearchConfig(strategy="toa", **search), templates=TEMPLATES)
    return asyncio.run(get_strategy("toa").run(PROMPT, ctx))


def cid(index: int) -> str:
    return f"{PROMPT.prompt_id}-{index:04d}"


def tree_nodes(result, **match):
    return [n for n in result.tree if all(n[k] == v for k, v in match.items())]


def test_first_k_plays_try_each_model_once_in_configured_order():
    names = ["zeta", "alpha", "mid"]  # not alphabetical: the configured order decides, not the names
    agents = [scripted_agent(n) for n in names]
    result = run_toa(agents, ScriptedReward(default=0.1), budget=6)
    assert [c.model for c in result.candidates[:3]] == names
    assert all(c.kind == "fresh" and c.parent_id is None and c.depth == 1 for c in result.candidates[:3])


def test_width_layer_first_then_models_refine_the_best_response():
    agents = [scripted_agent(n) for n in "ABC"]
    reward = rule_reward(fresh={"A": 0.1, "B": 0.5, "C": 0.3}, refine={"A": 0.9, "B": 0.9, "C": 0.9})
    result = run_toa(agents, reward, budget=9, width=6)
    cands = result.candidates
    # Plays 1-6: the first layer (width 6), a UCB bandit over fresh answers: each model once, then B (best).
    assert [c.model for c in cands[:6]] == ["A", "B", "C", "B", "B", "B"]
    assert all(c.kind == "fresh" for c in cands[:6])
    # Then the best model's best response (ties: the oldest, B's first) is refined by each model in order:
    # the refine arms are untried (+inf) and ties go to the configured order.
    assert [(c.model, c.kind, c.parent_id, c.depth) for c in cands[6:]] == [
        (m, "refine", cid(1), 2) for m in "ABC"]
    layers = collections.Counter(n["depth"] for n in tree_nodes(result, type="response"))
    assert layers == {2: 6, 4: 3}
    refine_arms = tree_nodes(result, type="model", arm="refine")
    (parent_response,) = tree_nodes(result, candidate_id=cid(1))
    assert {n["parent_id"] for n in refine_arms} == {parent_response["node_id"]}
    assert [n["model"] for n in refine_arms] == ["A", "B", "C"]


def test_values_are_sigmoid_rewards_backed_up_as_means():
    agents = [scripted_agent(n) for n in "ABC"]
    reward = rule_reward(fresh={"A": 0.1, "B": 0.5, "C": 0.3}, refine={"A": 0.9, "B": 0.2, "C": 0.4})
    result = run_toa(agents, reward, budget=9, width=6)
    for c in result.candidates:
        assert c.reward_norm == pytest.approx(stable_sigmoid(c.reward / 0.1))
    (root,) = tree_nodes(result, type="root")
    assert root["visits"] == 1 + 9  # visits start at 1, +1 per backed-up play
    assert root["value_mean"] == pytest.approx(sum(c.reward_norm for c in result.candidates) / 9)
    # B's root-level arm: its 4 fresh answers and the 3 refinements below its best response.
    (b_arm,) = tree_nodes(result, type="model", model="B", depth=1)
    in_subtree = [c for c in result.candidates if c.model == "B" and c.kind == "fresh"] + result.candidates[6:]
    assert b_arm["visits"] == 1 + len(in_subtree)
    assert b_arm["value_mean"] == pytest.approx(sum(c.reward_norm for c in in_subtree) / len(in_subtree))
    # The refined response itself is on the backup path of its refinements; the other responses are leaves.
    (refined,) = tree_nodes(result, candidate_id=cid(1))
    assert refined["visits"] == 4
    assert all(n["visits"] == 1 for n in tree_nodes(result, type="response") if n["candidate_id"] != cid(1))


def test_a_refinement_that_beats_its_parent_lets_selection_descend():
    agents = [scripted_agent(n) for n in "AB"]
    reward = rule_reward(fresh={"A": 0.5, "B": 0.1}, refine={"A": 0.3, "B": 0.9})
    result = run_toa(agents, reward, budget=5, width=2)
    cands = result.candidates
    assert [(c.model, c.kind, c.parent_id) for c in cands[:4]] == [
        ("A", "fresh", None), ("B", "fresh", None), ("A", "refine", cid(0)), ("B", "refine", cid(0))]
    # Layer 4 is full and B's refinement (0.9) beat its parent (0.5): the descent goes through it.
    assert (cands[4].model, cands[4].kind, cands[4].parent_id, cands[4].depth) == ("A", "refine", cid(3), 3)


def test_a_refinement_that_only_ties_its_parent_keeps_its_arm_expanding_past_width():
    agents = [scripted_agent(n) for n in "AB"]
    reward = rule_reward(fresh={"A": 0.5, "B": 0.1}, refine={"A": 0.3, "B": 0.5})
    result = run_toa(agents, reward, budget=5, width=2)
    # B's refinement equals its parent (not strictly better), so B's refine arm is expanded again although
    # layer 4 already holds `width` responses: the width cap is soft.
    assert (result.candidates[4].model, result.candidates[4].kind, result.candidates[4].parent_id) == (
        "B", "refine", cid(0))
    layers = collections.Counter(n["depth"] for n in tree_nodes(result, type="response"))
    assert layers == {2: 2, 4: 3}


def test_fresh_arms_start_from_a_snapshot_of_the_root_statistics():
    agents = [scripted_agent(n) for n in "AB"]
    reward = rule_reward(fresh={"A": 0.5, "B": 0.1}, refine={"A": 0.3, "B": 0.49})
    result = run_toa(agents, reward, budget=5, width=2)
    # Neither refinement beats the parent and A's fresh arm (warm-started with A's root value) now scores best:
    # play 5 is a fresh answer from A, one level down (parent_id None: it saw no earlier answer).
    fifth = result.candidates[4]
    assert (fifth.model, fifth.kind, fifth.parent_id, fifth.depth) == ("A", "fresh", None, 1)
    (fresh_arm,) = tree_nodes(result, type="model", arm="fresh", depth=3)
    (root_a,) = tree_nodes(result, type="model", model="A", depth=1)
    (response,) = tree_nodes(result, candidate_id=fifth.candidate_id)
    assert response["parent_id"] == fresh_arm["node_id"] and response["depth"] == 4
    # Snapshot taken when the arms were created (root A then: visits 2, values [sig(5)]), plus its own play.
    assert fresh_arm["visits"] == 3
    assert fresh_arm["value_mean"] == pytest.approx(stable_sigmoid(5.0))
    # The live root statistics moved on (plays 1, 3, 4, 5 are in A's subtree); the copy did not follow them.
    assert root_a["visits"] == 5
    assert root_a["value_mean"] == pytest.approx(
        (2 * stable_sigmoid(5.0) + stable_sigmoid(3.0) + stable_sigmoid(4.9)) / 4)


@pytest.mark.parametrize("topk, expected_parent", [(1, 2), (2, 3)])
def test_topk_child_limits_which_responses_selection_can_descend_into(topk, expected_parent):
    agents = [scripted_agent(n) for n in "AB"]
    reward = rule_reward(fresh={"A": [0.2, 0.8, 0.4], "B": 0.0}, refine={"A": 0.9, "B": 0.9})
    result = run_toa(agents, reward, budget=6, width=4, topk_child=topk)
    assert [c.model for c in result.candidates[:4]] == ["A", "B", "A", "A"]
    assert result.candidates[4].parent_id == cid(2)  # A's best response (0.8) first
    # topk=1: only the best response is ever refined; topk=2: the untried second best (0.4) gets its turn.
    assert result.candidates[5].parent_id == cid(expected_parent)


def test_width_below_the_number_of_models_still_tries_every_model():
    agents = [scripted_agent(n) for n in "ABC"]
    result = run_toa(agents, ScriptedReward(default=0.2), budget=3, width=1)
    assert [c.model for c in result.candidates] == ["A", "B", "C"]


@pytest.mark.parametrize("budget, k", [(1, 3), (7, 3), (20, 4), (33, 5)])
def test_exactly_budget_generations_and_scores(budget, k):
    agents = [SimulatedAgent(f"m{i}", 0.1 + 0.01 * i, refine_delta=0.005, noise=0.01) for i in range(k)]
    reward = SimulatedReward()
    result = run_toa(agents, reward, budget=budget)
    assert len(result.candidates) == budget
    assert sum(a.calls for a in agents) == budget and reward.calls == budget
    assert [c.candidate_id for c in result.candidates] == [cid(i) for i in range(budget)]
    assert len(tree_nodes(result, type="response")) == budget


def test_records_form_a_tree_consistent_with_the_search_tree():
    agents = [SimulatedAgent(f"m{i}", s, refine_delta=0.01, noise=0.02) for i, s in enumerate([0.1, 0.15, 0.12])]
    result = run_toa(agents, SimulatedReward(noise=0.005), budget=40)
    by_id = {c.candidate_id: c for c in result.candidates}
    nodes = {n["node_id"]: n for n in result.tree}
    for node in tree_nodes(result, type="response"):
        cand = by_id[node["candidate_id"]]
        arm = nodes[node["parent_id"]]
        assert arm["type"] == "model" and arm["model"] == cand.model == node["model"]
        assert cand.kind == arm["arm"]
        if cand.kind == "refine":
            refined = nodes[arm["parent_id"]]
            assert cand.parent_id == refined["candidate_id"]
            assert cand.depth == by_id[cand.parent_id].depth + 1
        else:
            assert cand.parent_id is None and cand.depth == 1
    for node in result.tree:  # node types alternate: root, model, response, model, ...
        parent = nodes.get(node["parent_id"])
        expected_parent_type = {"root": None, "model": ("root", "response"), "response": ("model",)}[node["type"]]
        assert (parent is None) if expected_parent_type is None else parent["type"] in expected_parent_type


def simulated_pool(refine_deltas, seed=0, noise=0.02):
    skills = [0.08, 0.12, 0.15, 0.10, 0.06]  # m2 is the strongest
    return [SimulatedAgent(f"m{i}", skill, refine_delta=delta, noise=noise, seed=seed)
            for i, (skill, delta) in enumerate(zip(skills, refine_deltas))]


def test_same_seed_same_tree_and_candidates():
    def once(seed):
        return run_toa(simulated_pool([0.01] * 5), SimulatedReward(noise=0.01, seed=1), budget=60, seed=seed)
    first, second, other = once(3), once(3), once(4)
    assert first.tree == second.tree
    assert [c.to_row() for c in first.candidates] == [c.to_row() for c in second.candidates]
    assert [c.seed for c in first.candidates] != [c.seed for c in other.candidates]
    assert [c.text for c in first.candidates] != [c.text for c in other.candidates]


def test_when_refinement_helps_the_budget_goes_into_deep_chains_on_the_best_model():
    # toa_method.md 1.11, first case: K=5, N=160, width=53; refining helps (here: when m2 refines).
    result = run_toa(simulated_pool([0.0, 0.0, 0.03, 0.0, 0.0]), SimulatedReward(), budget=160)
    layers = collections.Counter(n["depth"] for n in tree_nodes(result, type="response"))
    assert layers == {2: 53, 4: 53, 6: 53, 8: 1}
    later = result.candidates[53:]
    assert all(c.kind == "refine" for c in later)
    assert sum(c.model == "m2" for c in later) >= 0.8 * len(later)
    assert result.best.kind == "refine" and result.best.depth >= 3


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_when_refinement_hurts_toa_falls_back_to_fresh_samples_of_the_best_model(seed):
    # toa_method.md 1.11, second case: refinements score worse than their parent.
    result = run_toa(simulated_pool([-0.1] * 5, seed=seed, noise=0.01), SimulatedReward(), budget=160, seed=seed)
    later = result.candidates[53:]
    # Each new response still gets its K untried refine arms once; everything else is fresh samples from m2.
    assert sum(c.kind == "fresh" and c.model == "m2" for c in later) >= 0.85 * len(later)
    if seed == 1:  # with this seed no fresh sample beats the best first-layer answer: layer 4 takes everything
        layers = collections.Counter(n["depth"] for n in tree_nodes(result, type="response"))
        assert layers == {2: 53, 4: 107}


def test_a_dead_model_is_recorded_then_excluded_and_the_search_finishes():
    agents = [scripted_agent("dead", fail=True), scripted_agent("A"), scripted_agent("B")]
    reward = rule_reward(fresh={"A": 0.3, "B": 0.5}, refine={"A": 0.6, "B": 0.7})
    result = run_toa(agents, reward, budget=30, width=6, max_model_failures=2)
    assert len(result.candidates) == 30
    dead = [c for c in result.candidates if c.model == "dead"]
    assert agents[0].calls == len(dead) == 2  # excluded from this tree after max_model_failures failures
    for c in dead:
        assert c.error and c.text is None and c.reward is None and c.reward_norm is None
    assert reward.calls == 28  # a failed generation is never scored
    assert not tree_nodes(result, type="response", model="dead")
    (dead_root_arm,) = tree_nodes(result, type="model", model="dead", depth=1)
    assert dead_root_arm["visits"] == 2 and dead_root_arm["value_mean"] is None
    assert agents[1].calls + agents[2].calls == 28


def test_when_every_model_is_dead_the_remaining_plays_are_recorded_without_requests():
    agents = [scripted_agent(n, fail=True) for n in "AB"]
    reward = ScriptedReward(default=0.5)
    result = run_toa(agents, reward, budget=10, max_model_failures=2)
    assert len(result.candidates) == 10 and all(c.error and c.reward is None for c in result.candidates)
    assert [a.calls for a in agents] == [2, 2] and reward.calls == 0
    assert all("not attempted" in c.error for c in result.candidates[4:])
    assert [c.candidate_id for c in result.candidates] == [cid(i) for i in range(10)]


def test_a_failed_reward_is_recorded_as_none_not_zero_and_keeps_the_text():
    agents = [scripted_agent(n) for n in "AB"]
    reward = rule_reward(fresh={"A": 0.3, "B": 0.5}, refine={"A": 0.6, "B": 0.7}, fail={"A.f0", "B.f1"})
    result = run_toa(agents, reward, budget=12, width=4)
    failed = [c for c in result.candidates if c.error]
    assert {c.text for c in failed} == {"A.f0", "B.f1"}
    for c in failed:
        assert c.reward is None and c.reward_norm is None and c.error.startswith("reward:")
    assert all(c.reward is not None for c in result.candidates if c.error is None)
    assert len(result.candidates) == 12
    assert {n["candidate_id"] for n in tree_nodes(result, type="response")}.isdisjoint(
        {c.candidate_id for c in failed})
    assert agents[0].calls + agents[1].calls == 12  # reward failures do not exclude a model


def test_render_tree_indents_by_depth():
    agents = [scripted_agent(n) for n in "AB"]
    result = run_toa(agents, rule_reward(fresh={"A": 0.5, "B": 0.1}, refine={"A": 0.3, "B": 0.9}), budget=5, width=2)
    lines = render_tree(result.tree).splitlines()
    assert lines[0].startswith("root visits=6")
    assert len(lines) == len(result.tree)
    deepest = next(line for line in lines if cid(4) in line)
    assert deepest.startswith("  " * 6) and "by A" in deepest
    assert math.isfinite(result.best.reward)


def test_ucb_score_uses_the_global_play_count_and_initial_visit():
    from toa_core.strategies.toa import _Tree

    tree = _Tree(n_models=2, width=4, topk_child=1, alpha=0.5)
    arm = tree.root_arms[0]
    assert tree.score(arm, t=7) == math.inf  # never backed up
    tree.backup(arm, 0.8)
    tree.backup(arm, 0.6)
    # visits = 1 (initial) + 2 backups; t is the play count passed in, not the parent's visits (3 here).
    assert tree.score(arm, t=7) == pytest.approx(0.7 + 0.5 * math.sqrt(2 * math.log(7) / 3))
    failed_only = tree.root_arms[1]
    failed_only.visits += 1  # what a failed play does
    assert tree.score(failed_only, t=7) == pytest.approx(0.5 * math.sqrt(2 * math.log(7) / 2))
