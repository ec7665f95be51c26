"""`reward.kind: verifier`: the reward of an answer is what programmatic checks say about it.

The checks come from the prompt's record (`metadata.verify`, toa_core/verifiers/checks.py), so the verifier
scores (prompt, response) rather than (messages, response): it implements PromptAwareReward, which every
strategy uses through PromptSession. Rules:

- verifier alone: reward = the share of the prompt's checks the answer passes, in [0, 1]; it passes when the
  reward is 1 (a gold math answer is one check: 1 right, 0 wrong).
- verifier + reward model (`reward.ranker`): the verifier decides pass/fail, the model ranks inside each class:
      reward = PASS_BONUS x [every check passes] + sigmoid(model score / ranker_scale)
  with PASS_BONUS = 2, so a passing answer's reward is in [2, 3] and a failing one's in [0, 1]: every passing
  answer ranks above every failing one, whatever the model says (even where the sigmoid rounds to 0 or 1).

A prompt without a usable `verify` field is a permanent RewardError naming the field, never a score of 0.
"""
from __future__ import annotations

import asyncio
from typing import Sequence

from toa_core.interfaces import RewardError, RewardModel
from toa_core.records import Message, Prompt
from toa_core.strategies.base import stable_sigmoid
from toa_core.verifiers.checks import VerifySpecError, checks_for_metadata, run_checks

PASS_BONUS = 2.0


def squash(score: float, scale: float) -> float:
    """The model's score mapped into [0, 1] (a logistic), monotone, so the model's order inside a class is kept."""
    return stable_sigmoid(score / scale)


def combined_reward(passed: bool, model_score: float, scale: float = 1.0) -> float:
    """The verifier + reward model rule of the module docstring."""
    return PASS_BONUS * float(passed) + squash(model_score, scale)


def passes(reward: float, with_ranker: bool) -> bool:
    """Whether an answer with this reward passed every check (the reward alone tells it, under either rule)."""
    return reward >= PASS_BONUS if with_ranker else reward >= 1.0


def pair_decided_by(chosen_reward: float, rejected_reward: float, with_ranker: bool) -> str:
    """Which reward put the chosen above the rejected in a DPO pair: "verifier" when the chosen passed more checks
    (or passed where the rejected failed), "reward model" when both are in the same class (with a ranker)."""
    if not with_ranker:
        return "verifier"
    return "verifier" if passes(chosen_reward, True) != passes(rejected_reward, True) else "reward model"


def pair_decisions(chosen_rewards: Sequence[float], rejected_rewards: Sequence[float], with_ranker: bool
                   ) -> dict[str, int]:
    """How many DPO pairs each reward decided ({"verifier": n, "reward model": m}; see pair_decided_by)."""
    counts = {"verifier": 0, "reward model": 0}
    for chosen, rejected in zip(chosen_rewards, rejected_rewards):
        counts[pair_decided_by(chosen, rejected, with_ranker)] += 1
    return counts


class VerifierReward:
    """RewardModel scoring answers with the checks their prompt's record names, optionally combined with a
    reward model (`ranker`, itself a batched RewardModel) that orders answers inside the pass and fail classes."""

    def __init__(self, ranker: RewardModel | None = None, *, ranker_scale: float = 1.0):
        if ranker_scale <= 0:
            raise ValueError(f"ranker_scale must be > 0, got {ranker_scale}")
        self.ranker = ranker
        self.ranker_scale = ranker_scale
        self.name = f"verifier+{ranker.name}" if ranker is not None else "verifier"

    def __repr__(self) -> str:
        return f"VerifierReward(ranker={self.ranker!r}, ranker_scale={self.ranker_scale})"

    async def score_prompt(self, prompt: Prompt, messages: list[Message], response: str) -> float:
        """The reward of `response` to `prompt` (its checks), judged by the ranker against `messages`."""
        try:
            checks = checks_for_metadata(prompt.metadata, prompt.prompt_id)
        except VerifySpecError as error:
            raise RewardError(f"{self.name}: {error}", permanent=True) from None
        # math-verify parses with sympy: off the event loop, so other trees keep going meanwhile.
        outcomes = await asyncio.to_thread(run_checks, checks, response)
        passed = sum(outcome.passed for outcome in outcomes)
        if self.ranker is None:
            return passed / len(outcomes)
        model_score = await self.ranker.score(messages, response)
        return combined_reward(passed == len(outcomes), model_score, self.ranker_scale)

    async def score(self, messages: list[Message], response: str) -> float:
        raise RewardError(f"{self.name}: needs the prompt's record (its `verify` field), not only its messages; "
                          "it scores through PromptSession.score_prompt in a search", permanent=True)

    async def score_batch(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]:
        return [await self.score(messages, response) for messages, response in pairs]

    async def aclose(self) -> None:
        if self.ranker is not None:
            await self.ranker.aclose()
