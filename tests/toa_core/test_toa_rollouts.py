"""TOA with several rollouts in flight per tree (virtual loss), and the proof that one rollout is today's TOA."""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json

import pytest

from toa_core.config import SearchConfig
from toa_core.records import Prompt
from toa_core.simulated import ScriptedReward, SimulatedAgent, SimulatedReward
from toa_core.strategies import SearchContext, get_strategy
from toa_core.strategies.toa import _Tree

from tests.toa_core.test_toa import rule_reward, run_toa, scripted_agent, tree_nodes

TREE_KEYS = ("node_id", "parent_id", "type", "model", "arm", "depth", "visits", "value_mean", "expansions",
             "candidate_id", "reward")

# Fingerprints of TOA's trees and candidate rows as the sequential implementation produced them before parallel
# rollouts existed (commit 68df1ef). `rollouts_per_tree: 1` must reproduce them bit for bit.
GOLDEN = {
    (40, 0, (0.0, 0.03, -0.02), 0.0, 0.01): "98453e76b7419419",
    (160, 1, (0.0, 0.03, -0.02), 0.0, 0.01): "6a577d0c79615fa5",
    (60, 2, (-0.1, -0.1, -0.1), 0.1, 0.02): "98edc53957450ec0",  # with failed generations
}


def fingerprint(result) -> str:
    tree = [{k: n[k] for k in TREE_KEYS} for n in result.tree]
    rows = [c.to_row() for c in result.candidates]
    blob = json.dumps({"tree": tree, "rows": rows}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def golden_run(budget, seed, deltas, failure_rate, reward_noise, **search):
    agents = [SimulatedAgent(f"m{i}", s, refine_delta=d, noise=0.02, seed=seed, failure_rate=failure_rate)
              for i, (s, d) in enumerate(zip((0.10, 0.15, 0.12), deltas))]
    ctx = SearchContext(agents, SimulatedReward(noise=reward_noise, seed=seed),
                        SearchConfig(strategy="toa", budget=budget, tau=0.1, alpha=0.01, seed=seed, **search))
    prompt = Prompt.from_messages([{"role": "user", "content": f"golden question {seed}"}])
    return asyncio.run(get_strategy("toa").run(prompt, ctx)), agents


@pytest.mark.parametrize("case", list(GOLDEN))
def test_one_rollout_per_tree_reproduces_todays_trees_exactly(case):
    result, _ = golden_run(*case, rollouts_per_tree=1)
    assert fingerprint(result) == GOLDEN[case]
    assert result.search["round_trips"] == case[0] and result.search["rollouts_per_tree"] == 1


@pytest.mark.parametrize("rollouts", [2, 4])
def test_several_rollouts_spend_exactly_the_budget_in_fewer_round_trips(rollouts):
    result, agents = golden_run(60, 0, (0.0, 0.03, -0.02), 0.0, 0.01, rollouts_per_tree=rollouts)
    assert len(result.candidates) == 60 and sum(a.calls for a in agents) == 60
    assert result.search["round_trips"] == 60 // rollouts
    assert max(a.max_in_flight for a in agents) >= 1 and sum(a.max_in_flight for a in agents) >= rollouts
    assert len(tree_nodes(result, type="response")) == 60
    (root,) = tree_nodes(result, type="root")
    assert root["visits"] == 61  # every play backed up once, no virtual visit left behind


def test_virtual_loss_spreads_the_first_selections_over_the_models():
    agents = [scripted_agent(n) for n in "ABC"]
    reward = rule_reward(fresh={"A": 0.5, "B": 0.4, "C": 0.3}, refine={"A": 0.6, "B": 0.6, "C": 0.6})
    result = run_toa(agents, reward, budget=9, width=6, rollouts_per_tree=3)
    # The first three selections are in flight together: each untried model once, not A three times.
    assert [c.model for c in result.candidates[:3]] == ["A", "B", "C"]
    assert result.search["round_trips"] == 3


def test_pending_generations_count_toward_the_layer_width():
    agents = [scripted_agent(n) for n in "AB"]
    reward = rule_reward(fresh={"A": 0.5, "B": 0.1}, refine={"A": 0.9, "B": 0.9})
    result = run_toa(agents, reward, budget=8, width=4, rollouts_per_tree=4)
    layers = collections.Counter(n["depth"] for n in tree_nodes(result, type="response"))
    assert layers[2] == 4  # four fresh answers in flight fill the first layer (width 4), no more
    assert [c.kind for c in result.candidates[4:6]] == ["refine", "refine"]


def test_removing_a_virtual_loss_restores_the_statistics_exactly():
    tree = _Tree(n_models=2, width=4, topk_child=1, alpha=0.05)
    arm = tree.root_arms[0]
    tree.backup(arm, 0.3)
    before = (arm.visits, arm.value_sum, arm.value_count, tree.score(arm, t=5))
    charged = tree.add_pending(arm, virtual_loss=True)
    assert charged == 0.3 and arm.virtual_visits == 1 and tree.score(arm, t=5) < before[3]
    tree.remove_pending(arm, charged, virtual_loss=True)
    assert (arm.visits, arm.value_sum, arm.value_count, tree.score(arm, t=5)) == before
    assert arm.virtual_visits == 0 and arm.virtual_value_sum == 0.0 and tree.pending_at_depth[2] == 0


def test_a_pending_arm_that_was_never_backed_up_no_longer_scores_infinity():
    tree = _Tree(n_models=2, width=4, topk_child=1, alpha=0.05)
    arm = tree.root_arms[0]
    assert tree.score(arm, t=1) == float("inf")
    tree.add_pending(arm, virtual_loss=True)
    assert tree.score(arm, t=1) < float("inf")


def test_failures_with_parallel_rollouts_still_exclude_the_dead_model():
    agents = [scripted_agent("dead", fail=True), scripted_agent("A"), scripted_agent("B")]
    reward = ScriptedReward(default=0.4)
    result = run_toa(agents, reward, budget=30, width=6, max_model_failures=2, rollouts_per_tree=4)
    assert len(result.candidates) == 30
    assert agents[0].calls <= 2 + 3  # excluded after 2 failures; at most the other rollouts already in flight
