"""reward.kind verifier: scores from the prompt's checks, the verifier + reward model rule, every strategy."""
from __future__ import annotations

import asyncio

import pyarrow as pa
import pytest

from tests.toa_core.test_toa import TEMPLATES, scripted_agent
from toa_core.backends.factory import build_reward
from toa_core.config import STRATEGIES, RewardConfig, SearchConfig
from toa_core.interfaces import RewardError
from toa_core.ranking import RankingConfig, build_datasets
from toa_core.records import Prompt
from toa_core.rewards.verifier import PASS_BONUS, VerifierReward, pair_decided_by, pair_decisions, passes
from toa_core.simulated import ScriptedReward
from toa_core.strategies import SearchContext, get_strategy

CHECKS = [{"kind": "math_answer", "answer": "12"}, {"kind": "ends_with", "text": "Done."}]
PROMPT = Prompt.from_messages([{"role": "user", "content": "What is 3 x 4? End with 'Done.'"}], verify=CHECKS)


def score(reward, text, prompt=PROMPT):
    return asyncio.run(reward.score_prompt(prompt, prompt.messages, text))


def test_verifier_alone_is_the_share_of_checks_passed():
    reward = VerifierReward()
    assert score(reward, "3 x 4 = \\boxed{12}. Done.") == 1.0
    assert score(reward, "3 x 4 = \\boxed{12}.") == 0.5
    assert score(reward, "It is \\boxed{7}.") == 0.0


def test_with_a_ranker_every_passing_answer_ranks_above_every_failing_one():
    # The ranker loves the failing answers and hates the passing ones, on scales far beyond the sigmoid's range.
    texts = {"\\boxed{12}. Done.": -1e6, "12, I think. Done.": -3.0, "So \\boxed{12}. Done.": 0.5,
             "\\boxed{13}. Done.": 1e6, "\\boxed{12}": 40.0, "no idea": 2.0, "\\boxed{11}. Done.": -1e6}
    reward = VerifierReward(ScriptedReward(dict(texts)), ranker_scale=2.0)
    rewards = {text: score(reward, text) for text in texts}
    passing = [r for t, r in rewards.items() if t.endswith("Done.") and "12" in t]
    failing = [r for t, r in rewards.items() if not (t.endswith("Done.") and "12" in t)]
    assert len(passing) == 3 and len(failing) == 4
    assert min(passing) > max(failing)
    assert all(passes(r, with_ranker=True) for r in passing) and not any(passes(r, True) for r in failing)
    # inside a class the ranker's order stands
    assert rewards["So \\boxed{12}. Done."] > rewards["12, I think. Done."] > rewards["\\boxed{12}. Done."]
    assert rewards["\\boxed{13}. Done."] > rewards["no idea"] > rewards["\\boxed{11}. Done."]
    assert PASS_BONUS <= min(passing) and max(failing) <= 1.0


def test_a_prompt_without_checks_is_an_error_naming_the_field_not_a_zero():
    bare = Prompt.from_messages([{"role": "user", "content": "Say hi."}])
    with pytest.raises(RewardError, match=r"metadata\.verify: prompt [0-9a-f]+: missing") as caught:
        score(VerifierReward(), "hi", bare)
    assert caught.value.permanent
    broken = Prompt.from_messages([{"role": "user", "content": "Say hi."}], verify=[{"kind": "word_count"}])
    with pytest.raises(RewardError, match=r"metadata\.verify\[0\]\.min"):
        score(VerifierReward(), "hi", broken)
    with pytest.raises(RewardError, match="needs the prompt's record"):  # the messages alone do not say the checks
        asyncio.run(VerifierReward().score(PROMPT.messages, "12. Done."))


def answer_agent(name, answer):
    """Fresh answers are `answer`; refinements and aggregations append ' Done.' (they fix the ending)."""
    agent = scripted_agent(name)
    agent.script = lambda messages, call: (answer + " Done.") if ("REFINE" in messages[-1]["content"]
                                                                  or messages[-1]["content"] == "AGG") else answer
    return agent


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_scores_with_the_prompts_checks(strategy):
    agents = [answer_agent("right", "3 x 4 = \\boxed{12}."), answer_agent("wrong", "It is \\boxed{7}.")]
    ctx = SearchContext(agents, VerifierReward(), SearchConfig(strategy=strategy, budget=6, tau=0.25, moa_layers=2),
                        templates=TEMPLATES)
    result = asyncio.run(get_strategy(strategy).run(PROMPT, ctx))
    assert result.candidates and all(c.error is None for c in result.candidates)
    for candidate in result.candidates:
        expected = ("12" in candidate.text) * 0.5 + candidate.text.endswith("Done.") * 0.5
        assert candidate.reward == expected, (candidate.text, candidate.reward)


def test_a_context_whose_reward_is_swapped_scores_with_the_new_one():
    # The context remembers whether its reward reads the prompt's record; swapping the reward must not reuse that.
    ctx = SearchContext([answer_agent("a", "3 x 4 = \\boxed{12}.")], ScriptedReward({"3 x 4 = \\boxed{12}.": 7.0}),
                        SearchConfig(strategy="random", budget=2), templates=TEMPLATES)
    assert {c.reward for c in asyncio.run(get_strategy("random").run(PROMPT, ctx)).candidates} == {7.0}
    ctx.reward = VerifierReward()
    assert {c.reward for c in asyncio.run(get_strategy("random").run(PROMPT, ctx)).candidates} == {0.5}
    ctx.reward = ScriptedReward({"3 x 4 = \\boxed{12}.": -1.0})
    assert {c.reward for c in asyncio.run(get_strategy("random").run(PROMPT, ctx)).candidates} == {-1.0}


def test_search_without_checks_records_the_error_on_each_candidate():
    bare = Prompt.from_messages([{"role": "user", "content": "Say hi."}])
    ctx = SearchContext([answer_agent("a", "hi")], VerifierReward(), SearchConfig(strategy="random", budget=2))
    result = asyncio.run(get_strategy("random").run(bare, ctx))
    assert all(c.reward is None and "metadata.verify" in c.error for c in result.candidates)


def test_config_builds_a_verifier_with_its_ranker_batched():
    reward = build_reward(RewardConfig(kind="verifier", ranker={"kind": "plugin",
                                                                "callable": "tests.toa_core.rewards.plugins:length_reward"},
                                       ranker_scale=3.0))
    assert isinstance(reward, VerifierReward) and reward.ranker_scale == 3.0
    assert type(reward.ranker).__name__ == "BatchingReward"
    asyncio.run(reward.aclose())
    with pytest.raises(ValueError, match="takes no `model`"):
        RewardConfig(kind="verifier", model="builtin:smollm2")
    with pytest.raises(ValueError, match="`ranker` combines"):
        RewardConfig(kind="llm_judge", model="x", ranker={"kind": "plugin", "callable": "a:b"})


def test_pairs_say_which_reward_decided_them():
    assert pair_decided_by(1.0, 0.5, with_ranker=False) == "verifier"
    assert pair_decided_by(2.7, 0.9, with_ranker=True) == "verifier"
    assert pair_decided_by(2.7, 2.1, with_ranker=True) == "reward model"
    assert pair_decided_by(0.8, 0.2, with_ranker=True) == "reward model"
    assert pair_decisions([2.5, 2.5, 0.9], [0.1, 2.2, 0.3], True) == {"verifier": 1, "reward model": 2}


def test_ranking_on_verifier_rewards_pairs_a_passing_chosen_with_a_failing_rejected():
    rewards = [1.0, 0.5, 1.0, 0.0, 0.5, 0.0]
    table = pa.table({
        "prompt_id": [PROMPT.prompt_id] * 6, "candidate_id": [f"{PROMPT.prompt_id}-{i:04d}" for i in range(6)],
        "parent_id": [None] * 6, "kind": ["fresh"] * 6, "model": ["m"] * 6, "depth": [1] * 6,
        "text": [f"answer {i}" for i in range(6)], "reward": rewards, "reward_norm": rewards,
        "prompt_tokens": [1] * 6, "completion_tokens": [1] * 6, "latency_s": [0.0] * 6,
        "finish_reason": ["stop"] * 6, "strategy": ["toa"] * 6, "seed": [0] * 6, "error": [None] * 6})
    sft, _, dpo, _, _ = build_datasets([table], [PROMPT], RankingConfig(dpo_rejected_rank=4, test_fraction=0.0), "r")
    assert sft.column("reward").to_pylist() == [1.0]
    assert dpo.column("chosen_reward").to_pylist() == [1.0] and dpo.column("rejected_reward").to_pylist() == [0.0]
