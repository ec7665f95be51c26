"""A reward ensemble: several reward models judge every pair, and one combined score comes out.

Searching hard against one reward model over-optimises it: the more answers a search compares, the more surely the
one it ranks first is the one that exploits that model's blind spot (a style it likes, length). Models trained
differently rarely share every blind spot, so combining them pessimistically is the usual counter
(`reward.ensemble` in the run config; toa_core.config.RewardEnsembleConfig):
- mean:      the average of the members' scores;
- min:       the lowest member score (an answer is only as good as its harshest judge says);
- mean_std:  mean - std_weight x the members' population standard deviation (disagreement costs reward).
Members should share a scale (e.g. several ArmoRM-like scorers, or logit-scale scorers with each other): the
combination does not rescale them.

Failures: a pair is scored by every member or it fails. If any member cannot score a pair (RewardError), that pair
raises (PairErrors names it inside a batch, the other pairs keep their combined scores); the ensemble never
quietly combines fewer members than configured, which would change what the score means from pair to pair.
"""
from __future__ import annotations

import asyncio
import statistics
from typing import Literal, Sequence

from toa_core.interfaces import PairErrors, RewardError, RewardModel
from toa_core.records import Message

Combine = Literal["mean", "min", "mean_std"]


def combine_scores(scores: Sequence[float], combine: Combine, std_weight: float = 1.0) -> float:
    """The ensemble's score of one pair from its members' scores (in member order)."""
    if not scores:
        raise ValueError("combine_scores needs at least one member score")
    if combine == "mean":
        return statistics.fmean(scores)
    if combine == "min":
        return min(scores)
    if combine == "mean_std":
        return statistics.fmean(scores) - std_weight * statistics.pstdev(scores)
    raise ValueError(f"unknown ensemble combination {combine!r}; use mean, min or mean_std")


class EnsembleReward:
    """A RewardModel over `members` (each a RewardModel with its own batching/retries) combined by `combine`."""

    def __init__(self, members: Sequence[RewardModel], combine: Combine = "mean", std_weight: float = 1.0,
                 name: str | None = None):
        if len(members) < 2:
            raise ValueError("a reward ensemble needs at least two members")
        combine_scores([0.0], combine)  # validates the rule name early
        self.members = list(members)
        self.combine = combine
        self.std_weight = std_weight
        self.name = name or f"ensemble({combine}: {', '.join(m.name for m in self.members)})"

    def _combine(self, scores: Sequence[float]) -> float:
        return combine_scores(scores, self.combine, self.std_weight)

    async def score(self, messages: list[Message], response: str) -> float:
        results = await asyncio.gather(*(m.score(messages, response) for m in self.members), return_exceptions=True)
        for member, result in zip(self.members, results):
            if isinstance(result, BaseException):
                detail = result if isinstance(result, RewardError) else f"{type(result).__name__}: {result}"
                raise RewardError(f"{self.name}: member {member.name} failed, so the pair has no ensemble score: "
                                  f"{detail}", permanent=getattr(result, "permanent", False))
        return self._combine([float(r) for r in results])

    async def score_batch(self, pairs: Sequence[tuple[list[Message], str]]) -> list[float]:
        pairs = list(pairs)
        outcomes = await asyncio.gather(*(m.score_batch(pairs) for m in self.members), return_exceptions=True)
        per_pair: list[list[float]] = [[] for _ in pairs]
        failures: list[RewardError | None] = [None] * len(pairs)
        for member, outcome in zip(self.members, outcomes):
            if isinstance(outcome, PairErrors):
                items: Sequence[object] = outcome.results
            elif isinstance(outcome, BaseException):
                items = [outcome] * len(pairs)  # the whole batch failed for this member
            else:
                items = outcome
            for index, item in enumerate(items):
                if isinstance(item, BaseException):
                    if failures[index] is None:
                        failures[index] = RewardError(f"{self.name}: member {member.name} failed: {item}",
                                                      permanent=getattr(item, "permanent", False))
                else:
                    per_pair[index].append(float(item))
        if any(f is not None for f in failures):
            raise PairErrors(self.name, [failures[i] if failures[i] is not None else self._combine(per_pair[i])
                                         for i in range(len(pairs))])
        return [self._combine(scores) for scores in per_pair]

    async def aclose(self) -> None:
        await asyncio.gather(*(m.aclose() for m in self.members), return_exceptions=True)
