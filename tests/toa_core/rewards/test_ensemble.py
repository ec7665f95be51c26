"""The reward ensemble: its combination rules, a failed member failing the pair, and its config / factory."""
from __future__ import annotations

import asyncio
import statistics

import pytest
from pydantic import ValidationError

from toa_core.backends.factory import build_reward
from toa_core.config import RewardConfig
from toa_core.interfaces import PairErrors, RewardError
from toa_core.rewards.ensemble import EnsembleReward, combine_scores
from toa_core.simulated import ScriptedReward

Q = [{"role": "user", "content": "q"}]


class PairwiseReward(ScriptedReward):
    """A ScriptedReward whose batches name the failed pairs (PairErrors), as the real reward models do."""

    async def score_batch(self, pairs):
        results = await asyncio.gather(*(self.score(m, r) for m, r in pairs), return_exceptions=True)
        return PairErrors.collect(self.name, results)


def members(*tables, fail=None):
    return [PairwiseReward(table, name=f"m{i}", fail=fail if i == 1 else None) for i, table in enumerate(tables)]


@pytest.mark.parametrize("combine, expected", [
    ("mean", statistics.fmean([1.0, 2.0, 6.0])),
    ("min", 1.0),
    ("mean_std", 3.0 - 0.5 * statistics.pstdev([1.0, 2.0, 6.0])),
])
def test_combination_rules(combine, expected):
    reward = EnsembleReward(members({"a": 1.0}, {"a": 2.0}, {"a": 6.0}), combine, std_weight=0.5)
    assert asyncio.run(reward.score(Q, "a")) == pytest.approx(expected)
    assert asyncio.run(reward.score_batch([(Q, "a")])) == [pytest.approx(expected)]
    assert combine_scores([1.0, 2.0, 6.0], combine, 0.5) == pytest.approx(expected)


def test_mean_std_punishes_disagreement_that_the_mean_hides():
    # Same mean: an answer one member loves scores below one every member finds decent.
    reward = EnsembleReward(members({"hack": 0.9, "solid": 0.5}, {"hack": 0.3, "solid": 0.5},
                                    {"hack": 0.3, "solid": 0.5}), "mean_std")
    assert asyncio.run(reward.score(Q, "hack")) < asyncio.run(reward.score(Q, "solid"))


def test_one_failed_member_fails_the_pair_never_fewer_members():
    reward = EnsembleReward(members({"a": 1.0, "b": 1.0}, {"a": 5.0, "b": 5.0}, {"a": 3.0, "b": 3.0},
                                    fail={"b"}), "mean")
    with pytest.raises(RewardError, match="member m1"):
        asyncio.run(reward.score(Q, "b"))
    # In a batch only the failed pair fails; the others keep the score of ALL members.
    with pytest.raises(PairErrors) as caught:
        asyncio.run(reward.score_batch([(Q, "a"), (Q, "b")]))
    results = caught.value.results
    assert results[0] == pytest.approx(3.0) and isinstance(results[1], RewardError)
    assert "m1" in str(results[1])


def test_a_member_failing_the_whole_batch_fails_every_pair():
    class Down(ScriptedReward):
        async def score_batch(self, pairs):
            raise RewardError("server down")

    reward = EnsembleReward([ScriptedReward({"a": 1.0}, name="up"), Down(name="down")], "min")
    with pytest.raises(PairErrors) as caught:
        asyncio.run(reward.score_batch([(Q, "a"), (Q, "a")]))
    assert all(isinstance(item, RewardError) for item in caught.value.results)


def test_ensemble_needs_two_members_and_a_known_rule():
    with pytest.raises(ValueError, match="two members"):
        EnsembleReward(members({"a": 1.0}))
    with pytest.raises(ValueError, match="unknown ensemble combination"):
        EnsembleReward(members({"a": 1.0}, {"a": 1.0}), "median")


def test_config_builds_an_ensemble_of_configured_members():
    plugin = {"kind": "plugin", "callable": "tests.toa_core.rewards.plugins:length_reward"}
    config = RewardConfig.model_validate({"ensemble": {"members": [plugin, plugin], "combine": "min"}})
    reward = build_reward(config)
    assert isinstance(reward, EnsembleReward) and reward.combine == "min" and len(reward.members) == 2
    assert asyncio.run(reward.score(Q, "abcd")) == 4.0
    asyncio.run(reward.aclose())


@pytest.mark.parametrize("data, message", [
    ({"ensemble": {"members": [{"kind": "plugin", "callable": "x:y"}]}}, "at least 2"),
    ({"model": "m", "ensemble": {"members": [{"kind": "plugin", "callable": "x:y"}] * 2}}, "move model"),
    ({"ensemble": {"members": [{"kind": "plugin", "callable": "x:y"}] * 2, "combine": "median"}}, "combine"),
    ({"ensemble": {"members": [{"ensemble": {"members": [{"kind": "plugin", "callable": "x:y"}] * 2}},
                               {"kind": "plugin", "callable": "x:y"}]}}, "itself an ensemble"),
])
def test_bad_ensemble_configs_are_named(data, message):
    with pytest.raises(ValidationError, match=message):
        RewardConfig.model_validate(data)
