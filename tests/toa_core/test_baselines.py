"""The five baselines: who is called how often, who refines or aggregates what, and valid parent links."""
from __future__ import annotations

import asyncio
import re

import pytest

from toa_core.config import SearchConfig
from toa_core.prompts import Templates, load_templates
from toa_core.records import Prompt
from toa_core.simulated import ScriptedChatModel, ScriptedReward, SimulatedAgent, SimulatedReward
from toa_core.strategies import SearchContext, get_strategy

PROMPT = Prompt.from_messages([{"role": "user", "content": "Name a prime."}])
TEMPLATES = Templates(refine="{question} REFINE<{answer}>", aggregate="AGG", translate="T {source}",
                      refine_translation="{source} RT<{translation}>", aggregate_translation="{source} AT {translation}")


def agent(name: str, **kwargs) -> ScriptedChatModel:
    """Fresh: '<name>.f<call>'; refine: '<name>.refine(<answer>)'; aggregate: '<name>.agg[<n inputs>]'."""
    def script(messages, call_index):
        refined = re.search(r"REFINE<(.*)>$", messages[-1]["content"], re.S)
        if refined:
            return f"{name}.refine({refined.group(1)})"
        if messages[0]["role"] == "system":
            return f"{name}.agg[{messages[0]['content'].count('## Response')}]#{call_index}"
        return f"{name}.f{call_index}"
    return ScriptedChatModel(name, script, **kwargs)


def run(strategy, agents, reward=None, prompt=PROMPT, templates=TEMPLATES, **search):
    reward = reward if reward is not None else ScriptedReward(lambda messages, text: float(len(text)))
    ctx = SearchContext(agents, reward, SearchConfig(strategy=strategy, **search), templates=templates)
    return asyncio.run(get_strategy(strategy).run(prompt, ctx))


def assert_valid_records(result, budget, strategy):
    """Exactly `budget` candidates with plan-ordered ids; every parent exists, has text and is one level up."""
    cands = result.candidates
    assert len(cands) == budget
    assert [c.candidate_id for c in cands] == [f"{result.prompt.prompt_id}-{i:04d}" for i in range(budget)]
    by_id = {c.candidate_id: c for c in cands}
    for c in cands:
        assert c.strategy == strategy and c.prompt_id == result.prompt.prompt_id
        if c.parent_id is None:
            assert c.kind == "fresh" and c.depth == 1
        else:
            parent = by_id[c.parent_id]
            assert c.kind in ("refine", "aggregate") and parent.text is not None
            assert c.depth == parent.depth + 1
        if c.error is None:
            assert c.reward is not None and c.reward_norm is not None
            if strategy != "toa":  # baselines keep the raw reward as reward_norm; TOA stores its tree value
                assert c.reward_norm == c.reward
        else:
            assert c.reward is None and c.reward_norm is None


def assert_rewards_judge_the_original_prompt(reward: ScriptedReward, prompt=PROMPT):
    assert reward.requests and all(messages == prompt.messages for messages, _ in reward.requests)


# --- random -------------------------------------------------------------------------------------------------

def test_random_sampling_draws_every_sample_fresh_from_the_configured_model_concurrently():
    agents = [agent("A"), agent("B"), agent("C")]
    reward = ScriptedReward(default=1.0)
    result = run("random", agents, reward, budget=9, model="B")
    assert_valid_records(result, 9, "random")
    assert [a.calls for a in agents] == [0, 9, 0]
    assert all(c.kind == "fresh" and c.model == "B" for c in result.candidates)
    assert all(call.messages == PROMPT.messages for call in agents[1].requests)
    assert agents[1].max_in_flight > 1
    assert_rewards_judge_the_original_prompt(reward)


def test_random_sampling_defaults_to_the_first_model_and_rejects_an_unknown_one():
    agents = [agent("A"), agent("B")]
    assert {c.model for c in run("random", agents, budget=3).candidates} == {"A"}
    with pytest.raises(ValueError, match="search.model 'nope'.*A, B"):
        run("random", agents, budget=3, model="nope")


def test_request_seeds_are_distinct_and_derived_from_the_search_seed():
    agents = [agent("A")]
    first = run("random", agents, budget=5, seed=1)
    again = run("random", [agent("A")], budget=5, seed=1)
    other = run("random", [agent("A")], budget=5, seed=2)
    seeds = [c.seed for c in first.candidates]
    assert len(set(seeds)) == 5 and seeds == [c.seed for c in again.candidates]
    assert seeds != [c.seed for c in other.candidates]
    assert [call.params.seed for call in agents[0].requests] == seeds
    assert agents[0].requests[0].params.temperature == 0.7 and agents[0].requests[0].params.max_tokens == 2048


# --- ensemble -----------------------------------------------------------------------------------------------

def test_ensemble_splits_the_budget_with_the_remainder_to_the_first_models():
    agents = [agent(n) for n in "ABC"]
    result = run("ensemble", agents, budget=11)
    assert_valid_records(result, 11, "ensemble")
    assert [a.calls for a in agents] == [4, 4, 3]
    assert all(c.kind == "fresh" for c in result.candidates)
    assert max(a.max_in_flight for a in agents) > 1


def test_ensemble_order_is_shuffled_reproducibly_by_the_seed():
    def order(seed):
        return [c.model for c in run("ensemble", [agent(n) for n in "ABC"], budget=12, seed=seed).candidates]
    assert order(5) == order(5)
    assert order(5) != ["A"] * 4 + ["B"] * 4 + ["C"] * 4
    assert order(5) != order(6)


# --- PRS ----------------------------------------------------------------------------------------------------

def test_prs_refines_the_single_best_fresh_answer():
    model = agent("A")
    scores = {"A.f0": 0.2, "A.f1": 0.9, "A.f2": 0.5}
    reward = ScriptedReward(lambda messages, text: scores.get(text, 0.1))
    result = run("prs", [agent("X"), model], reward, budget=7, model="A")
    assert_valid_records(result, 7, "prs")
    fresh, refined = result.candidates[:3], result.candidates[3:]
    assert all(c.kind == "fresh" for c in fresh) and len(refined) == 4
    best = fresh[1]
    assert all(c.kind == "refine" and c.parent_id == best.candidate_id and c.depth == 2 for c in refined)
    assert all(c.text == "A.refine(A.f1)" for c in refined)
    assert model.calls == 7
    assert_rewards_judge_the_original_prompt(reward)


def test_prs_falls_back_to_fresh_answers_when_no_fresh_answer_was_scored():
    model = agent("A", fail={0, 1})
    result = run("prs", [model], budget=5)
    assert_valid_records(result, 5, "prs")
    assert [c.error is not None for c in result.candidates[:2]] == [True, True]
    assert all(c.kind == "fresh" and c.error is None for c in result.candidates[2:])
    # A budget of one has no fresh layer at all: the one generation is a fresh answer.
    single = run("prs", [agent("A")], budget=1)
    assert [c.kind for c in single.candidates] == ["fresh"]


# --- sequential refine --------------------------------------------------------------------------------------

def chains_of(result, k):
    return [result.candidates[i:i + k] for i in range(0, len(result.candidates), k)]


def test_seq_refine_builds_chains_through_a_seeded_permutation_of_the_models():
    agents = [agent(n) for n in "ABC"]
    reward = ScriptedReward(default=0.5)
    result = run("seq_refine", agents, reward, budget=10)
    assert_valid_records(result, 10, "seq_refine")
    chains = chains_of(result, 3)
    assert [len(chain) for chain in chains] == [3, 3, 3, 1]  # ceil(10/3) chains, the last one cut short
    for chain in chains:
        if len(chain) == 3:
            assert sorted(c.model for c in chain) == ["A", "B", "C"]  # each model once per chain
        assert chain[0].kind == "fresh" and chain[0].parent_id is None
        for previous, step in zip(chain, chain[1:]):
            assert step.kind == "refine" and step.parent_id == previous.candidate_id
            assert step.text == f"{step.model}.refine({previous.text})"
    assert len({tuple(c.model for c in chain) for chain in chains[:3]}) > 1  # the order changes between chains
    again = run("seq_refine", [agent(n) for n in "ABC"], budget=10)
    assert [c.model for c in again.candidates] == [c.model for c in result.candidates]
    assert [a.calls for a in agents] == [sum(c.model == n for c in result.candidates) for n in "ABC"]
    assert_rewards_judge_the_original_prompt(reward)


def test_seq_refine_chains_run_concurrently():
    agents = [agent(n) for n in "AB"]
    run("seq_refine", agents, budget=12)
    assert sum(a.max_in_flight for a in agents) > 2


def test_seq_refine_skips_over_a_failed_step():
    agents = [agent("A", fail=True), agent("B"), agent("C")]
    result = run("seq_refine", agents, budget=9)
    assert_valid_records(result, 9, "seq_refine")
    for chain in chains_of(result, 3):
        ok = [c for c in chain if c.error is None]
        assert ok[0].kind == "fresh" and ok[0].parent_id is None  # the first step with text answers fresh
        assert ok[1].kind == "refine" and ok[1].parent_id == ok[0].candidate_id  # refines across the failure
        assert [c.model for c in chain if c.error] == ["A"]


# --- MoA ----------------------------------------------------------------------------------------------------

def test_moa_stacks_layers_where_every_model_aggregates_the_previous_layer():
    agents = [agent(n) for n in "ABC"]
    reward = ScriptedReward(default=0.5)
    result = run("moa", agents, reward, budget=20, moa_layers=2)
    assert_valid_records(result, 20, "moa")
    cands = result.candidates
    stacks = [cands[i:i + 6] for i in range(0, 20, 6)]
    assert [len(s) for s in stacks] == [6, 6, 6, 2]  # ceil(20/6) stacks, the last one cut short
    for stack in stacks[:3]:
        layer0, layer1 = stack[:3], stack[3:]
        assert [c.model for c in layer0] == ["A", "B", "C"] and all(c.kind == "fresh" for c in layer0)
        for c, same_model_before in zip(layer1, layer0):
            assert c.kind == "aggregate" and c.depth == 2 and c.parent_id == same_model_before.candidate_id
            assert c.text.startswith(f"{c.model}.agg[3]")
    assert [c.kind for c in stacks[3]] == ["fresh", "fresh"] and [c.model for c in stacks[3]] == ["A", "B"]
    assert_rewards_judge_the_original_prompt(reward)
    assert max(a.max_in_flight for a in agents) > 1


def test_self_moa_stacks_layers_of_samples_of_one_model():
    agents = [agent(n) for n in "ABC"]
    reward = ScriptedReward(default=0.5)
    result = run("self_moa", agents, reward, budget=14, moa_layers=2, model="B", self_moa_width=4)
    assert_valid_records(result, 14, "self_moa")
    assert [a.calls for a in agents] == [0, 14, 0]  # only the chosen model writes
    cands = result.candidates
    stacks = [cands[i:i + 8] for i in range(0, 14, 8)]
    assert [len(s) for s in stacks] == [8, 6]  # W=4 samples per layer, 2 layers; the last stack cut short
    for stack in stacks:
        layer0, layer1 = stack[:4], stack[4:]
        assert all(c.kind == "fresh" for c in layer0)
        assert len({c.seed for c in layer0}) == 4  # four different samples, not one answer repeated
        for c, same_position_before in zip(layer1, layer0):
            assert c.kind == "aggregate" and c.parent_id == same_position_before.candidate_id
            assert c.text.startswith("B.agg[4]")  # every aggregate reads the whole previous layer
    assert_rewards_judge_the_original_prompt(reward)


def test_self_moa_defaults_to_the_first_model_and_moas_width():
    agents = [agent(n) for n in "ABC"]
    result = run("self_moa", agents, budget=6, moa_layers=2)
    assert [a.calls for a in agents] == [6, 0, 0]
    assert [c.kind for c in result.candidates] == ["fresh"] * 3 + ["aggregate"] * 3


def test_moa_aggregation_prompt_lists_the_previous_answers_in_a_seeded_shuffled_order():
    agents = [agent(n) for n in "ABCD"]
    run("moa", agents, budget=32, moa_layers=2)
    orders = []
    for call in agents[0].requests:
        if call.messages[0]["role"] != "system":
            continue
        system, user = call.messages
        assert user == PROMPT.messages[0]  # the user turn is the original question
        assert system["content"].startswith("AGG\n\n## Response 1:\n")
        orders.append(tuple(re.findall(r"## Response \d+:\n(\w)\.f", system["content"])))
    assert len(orders) == 4 and all(sorted(order) == ["A", "B", "C", "D"] for order in orders)
    assert any(order != ("A", "B", "C", "D") for order in orders)  # no fixed position bias
    again = [agent(n) for n in "ABCD"]
    run("moa", again, budget=32, moa_layers=2)
    assert [c.messages for c in again[0].requests] == [c.messages for c in agents[0].requests]


def test_moa_leaves_failed_answers_out_and_links_to_an_answer_that_exists():
    agents = [agent("A", fail={0}), agent("B"), agent("C")]
    result = run("moa", agents, budget=9, moa_layers=3)
    assert_valid_records(result, 9, "moa")
    layer1 = result.candidates[3:6]
    assert all(c.text.startswith(f"{c.model}.agg[2]") for c in layer1[1:])  # A's failed answer is not listed
    assert layer1[1].parent_id == result.candidates[1].candidate_id
    assert layer1[0].parent_id == result.candidates[1].candidate_id  # A failed before: first answer with text
    assert all(c.text.startswith(f"{c.model}.agg[3]") for c in result.candidates[6:])


def test_moa_layer_answers_fresh_when_the_whole_previous_layer_failed():
    agents = [agent(n, fail={0}) for n in "AB"]
    result = run("moa", agents, budget=4, moa_layers=2)
    assert_valid_records(result, 4, "moa")
    assert [c.error is not None for c in result.candidates] == [True, True, False, False]
    assert all(c.kind == "fresh" for c in result.candidates[2:])


# --- shared behaviour ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["random", "ensemble", "prs", "seq_refine", "moa", "self_moa", "toa"])
@pytest.mark.parametrize("budget", [1, 5, 17])
def test_every_strategy_spends_exactly_the_budget(strategy, budget):
    agents = [SimulatedAgent(f"m{i}", 0.1 * (i + 1), refine_delta=0.01, noise=0.01) for i in range(3)]
    reward = SimulatedReward()
    result = run(strategy, agents, reward, templates=None, budget=budget, moa_layers=2)
    assert_valid_records(result, budget, strategy)
    assert sum(a.calls for a in agents) == budget and reward.calls == budget


@pytest.mark.parametrize("strategy", ["random", "ensemble", "prs", "seq_refine", "moa", "self_moa"])
def test_failed_generations_and_rewards_become_error_records_never_zero(strategy):
    agents = [agent("A", fail={1, 3}), agent("B", fail={0})]
    reward = ScriptedReward(lambda messages, text: 1.0, fail=lambda text: text.endswith("f2"))
    result = run(strategy, agents, reward, budget=8, moa_layers=2)
    assert_valid_records(result, 8, strategy)
    failed = [c for c in result.candidates if c.error]
    assert failed and all(c.reward is None for c in failed)
    for c in failed:
        assert (c.text is None) or c.error.startswith("reward:")
    assert reward.calls == sum(c.text is not None for c in result.candidates)


def test_translation_task_uses_the_translation_templates():
    source = Prompt.from_messages([{"role": "user", "content": "Guten Morgen"}])
    templates = load_templates(task="translation")
    agents = [ScriptedChatModel("A", ["Good morning"]), ScriptedChatModel("B", ["Morning!"])]
    reward = ScriptedReward(default=0.8)
    run("seq_refine", agents, reward, prompt=source, templates=templates, budget=2, task="translation")
    first, second = (agents[0].requests + agents[1].requests)[:2]
    messages = [first.messages, second.messages]
    fresh = next(m for m in messages if "Good morning" not in m[0]["content"] and "Morning!" not in m[0]["content"])
    refine = next(m for m in messages if m is not fresh)
    assert fresh == [{"role": "user", "content": templates.translate.format(source="Guten Morgen")}]
    assert refine[0]["content"].startswith(templates.refine_translation.split("{")[0])
    assert "Guten Morgen" in refine[0]["content"] and len(refine) == 1
    assert_rewards_judge_the_original_prompt(reward, source)

    moa_agents = [ScriptedChatModel("A", ["Good morning"]), ScriptedChatModel("B", ["Morning!"])]
    run("moa", moa_agents, ScriptedReward(default=0.8), prompt=source, templates=templates, budget=4,
        moa_layers=2, task="translation")
    (aggregate,) = moa_agents[0].requests[1].messages
    assert aggregate["role"] == "user" and "## Translation 1:" in aggregate["content"]
    assert "## Translation 2:" in aggregate["content"] and "Guten Morgen" in aggregate["content"]


def test_unknown_strategy_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown search strategy 'tao'.*toa"):
        get_strategy("tao")
