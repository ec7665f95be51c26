"""Circularity guard: is the evaluation judged by the very model that guided the synthesis?

If the reward model that ranked the training data also scores the evaluation (or serves as the LLM judge, or
COMET-Kiwi is both the MT search reward and the metric), a win says the policy learned to please that model,
not that it got better. The evaluation still runs; the report and scores.json say so loudly.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from evaluation.config import JudgesConfig
from toa_core.config import RewardConfig


def _model_id(name: str | None) -> str:
    """Compare model names by their last path part, case-insensitively ("./models/SmolLM2/" == "smollm2")."""
    if not name:
        return ""
    return PurePosixPath(str(name).rstrip("/").replace("\\", "/")).name.lower().removeprefix("builtin:")


def _same_reward(a: RewardConfig, b: RewardConfig) -> bool:
    if a.kind != b.kind:
        # The same checkpoint served over HTTP and loaded in process is still the same judge.
        return bool(a.model and b.model and _model_id(a.model) == _model_id(b.model))
    if a.kind == "plugin":
        return a.callable == b.callable
    if a.kind == "http" and not (a.model and b.model):
        return bool(set(a.endpoints) & set(b.endpoints))
    return _model_id(a.model) == _model_id(b.model)


def check_circularity(judges: JudgesConfig, synthesis_reward: RewardConfig | dict[str, Any] | None) -> dict[str, Any]:
    """{"circular": bool, "reasons": [...], "synthesis_reward": model id} comparing eval judges with the run's reward."""
    if synthesis_reward is None:
        return {"circular": False, "reasons": [], "synthesis_reward": None,
                "note": "the run's synthesis reward is unknown (no manifest, no `reward` in the config)"}
    if isinstance(synthesis_reward, dict):
        synthesis_reward = RewardConfig.model_validate(synthesis_reward)
    if synthesis_reward.kind == "verifier":
        # Programmatic checks are ground truth, not a model to please; only a ranker beside them can be circular.
        if synthesis_reward.ranker is None:
            return {"circular": False, "reasons": [], "synthesis_reward": "verifier"}
        synthesis_reward = synthesis_reward.ranker
    reasons = []
    if judges.reward is not None and _same_reward(judges.reward, synthesis_reward):
        reasons.append(f"the evaluation reward model ({judges.reward.kind}: {judges.reward.model or judges.reward.callable}) "
                       f"is the reward model that guided synthesis")
    if judges.llm_judge is not None and synthesis_reward.model and \
            _model_id(judges.llm_judge.model) == _model_id(synthesis_reward.model):
        reasons.append(f"the LLM judge ({judges.llm_judge.model}) is the model that guided synthesis")
    kiwi = judges.comet_kiwi_model
    if kiwi and "kiwi" in " ".join(filter(None, [synthesis_reward.model, synthesis_reward.callable])).lower():
        reasons.append(f"COMET-Kiwi ({kiwi}) is both the translation metric and the synthesis reward")
    return {"circular": bool(reasons), "reasons": reasons,
            "synthesis_reward": synthesis_reward.model or synthesis_reward.callable}
