"""Reward-model judge: score the model's outputs and the baseline's outputs with the same reward model.

Gives the mean reward of the model's outputs and, per item, a preference (1 if the model's output scores higher
than the baseline's, 0 if lower, 0.5 on a tie) for the win rates. A pair the reward model fails to score is a
recorded error for that item, never a 0.0.
"""
from __future__ import annotations

from typing import Any, Sequence

from toa_core.interfaces import PairErrors, RewardError, RewardModel
from toa_core.records import Message


def _error_text(error: RewardError) -> str:
    return f"{type(error).__name__}: {error}"


async def _score_all(reward: RewardModel, pairs: list[tuple[list[Message], str]],
                     batch_size: int) -> list[float | str]:
    """Scores, or an error message per pair. A batch whose failed pairs the reward model names (PairErrors) keeps
    its other scores as they are; any other failing batch is retried pair by pair to isolate the culprit."""
    results: list[float | str] = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        try:
            results.extend(await reward.score_batch(batch))
            continue
        except PairErrors as errors:
            results.extend(_error_text(item) if isinstance(item, RewardError) else item for item in errors.results)
            continue
        except RewardError:
            pass
        for messages, response in batch:
            try:
                results.append(await reward.score(messages, response))
            except RewardError as error:
                results.append(_error_text(error))
    return results


async def judge_with_reward(reward: RewardModel, rows: Sequence[dict[str, Any]], *,
                            batch_size: int = 16) -> list[dict[str, Any]]:
    """Rows are {item_id, messages, output, baseline (or None)}; returns one judgment per row."""
    pairs: list[tuple[list[Message], str]] = []
    for row in rows:
        pairs.append((row["messages"], row["output"]))
        if row.get("baseline") is not None:
            pairs.append((row["messages"], row["baseline"]))
    scores = iter(await _score_all(reward, pairs, batch_size))
    judgments = []
    for row in rows:
        model_score = next(scores)
        baseline_score = next(scores) if row.get("baseline") is not None else None
        errors = [s for s in (model_score, baseline_score) if isinstance(s, str)]
        model_value = model_score if not isinstance(model_score, str) else None
        baseline_value = baseline_score if not isinstance(baseline_score, str) else None
        preference = None
        if model_value is not None and baseline_value is not None:
            preference = 1.0 if model_value > baseline_value else 0.0 if model_value < baseline_value else 0.5
        judgments.append({"item_id": row["item_id"], "reward_model": model_value, "reward_baseline": baseline_value,
                          "preference": preference, "error": "; ".join(errors) or None})
    return judgments
