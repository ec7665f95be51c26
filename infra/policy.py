"""The policy in the loop: the promoted model (`latest`) as one of the agents of the next synthesis, and as the
starting point of the next training (iterative DPO).

Pure store operations and config (no Prefect). A run that uses the policy pins it once, in
`runs/<run_id>/policy.json`: {"run_id" (the run `latest` pointed at, null when there was none), "model" (its store
key, runs/<id>/models/dpo or .../sft), "weights" (lora_adapter | full), "base_model", "promoted_at", "pinned_at"}.
Synthesis and training both read that record, so a resumed run (or a retried stage) uses the same model version
even if `latest` moved meanwhile, and the manifest, the datasets and the model card can say which version it was.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import Field, model_validator

from infra.registry import read_latest
from infra.run_ids import check_run_id
from infra.store import Store
from toa_core.config import Section

POLICY_FILE = "policy.json"


class PolicyAgentConfig(Section):
    """`synthesis.policy_agent`: the current `latest` model joins the agents (off by default).

    serve:
    - transformers: a managed `transformers serve` on the merged weights (CPU hosts, tests);
    - vllm_lora: a managed `vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER` (the adapter as published,
      no merged copy; needs a LoRA `latest`);
    - vllm_merged: a managed `vllm serve MERGED` on the merged weights;
    - in_process: the in-process transformers backend on the merged weights (tiny models, no server).
    pairs (DPO): all = the usual ranking over every agent; on_policy = chosen and rejected both written by the
    policy (its best vs its k-th); mixed = chosen from any agent (the usual target), rejected written by the policy.
    """
    enabled: bool = False
    name: str = Field("policy", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="the agent's stable name in candidates and datasets (the version is in policy.json)")
    serve: Literal["transformers", "vllm_lora", "vllm_merged", "in_process"] = "transformers"
    system_prompt: str | None = None
    temperature: float | None = Field(None, ge=0, description="overrides search.temperature for this agent")
    max_concurrency: int = Field(8, ge=1)
    budget_share: float | None = Field(
        None, gt=0, lt=1, description="share of each prompt's generations reserved for the policy (search.strategy "
                                      "ab_mcts: its exploration floor for this agent); empty = no reservation")
    pairs: Literal["all", "on_policy", "mixed"] = Field(
        "all", description="DPO pairs: all agents; on_policy (both sides from the policy); mixed (rejected from it)")
    # The managed server (serve transformers / vllm_*): what the operator's config sets for other servers too.
    executable: str | None = Field(None, description="the `vllm` / `transformers` binary (default: next to this Python)")
    gpus: list[int] | None = Field(None, description="GPU ids for CUDA_VISIBLE_DEVICES (vllm_*)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=16)
    max_lora_rank: int = Field(64, ge=1, description="vllm_lora: vLLM --max-lora-rank (at least the adapter's r)")
    startup_timeout_s: float = Field(900.0, gt=0)

    @model_validator(mode="after")
    def _pairs_need_the_agent(self) -> "PolicyAgentConfig":
        if not self.enabled and (self.pairs != "all" or self.budget_share is not None):
            raise ValueError("pairs / budget_share apply to the policy agent: set enabled: true, or remove them")
        return self


def policy_key(run_id: str) -> str:
    return f"runs/{check_run_id(run_id)}/{POLICY_FILE}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def final_model_key(store: Store, run_id: str) -> str | None:
    """The published final policy of a run: models/dpo when complete, else models/sft, else None."""
    for stage in ("dpo", "sft"):
        prefix = f"runs/{check_run_id(run_id)}/models/{stage}"
        if store.dir_complete(prefix):
            return prefix
    return None


def pin_policy(store: Store, run_id: str) -> dict[str, Any]:
    """The policy record of `run_id`: the pinned one when it exists, else `latest` now, pinned for good."""
    key = policy_key(run_id)
    if store.exists(key):
        return store.read_json(key)
    pointer = read_latest(store)
    record: dict[str, Any] = {"run_id": None, "model": None, "weights": None, "base_model": None,
                              "promoted_at": None, "pinned_at": _now()}
    if pointer is not None and pointer["run_id"] != run_id:
        latest = pointer["run_id"]
        model = final_model_key(store, latest)
        if model is None:
            raise FileNotFoundError(f"`latest` points at run '{latest}', which has no finished model under "
                                    f"{store.uri(f'runs/{latest}/models/')}; restore it or move `latest`")
        metrics_key = f"{model}/training_metrics.json"
        metrics = store.read_json(metrics_key) if store.exists(metrics_key) else {}
        record.update(run_id=latest, model=model, promoted_at=pointer.get("promoted_at"),
                      weights=metrics.get("weights") or ("lora_adapter" if store.exists(f"{model}/adapter_config.json")
                                                         else "full"),
                      base_model=metrics.get("base_model"))
    store.write_json(key, record)
    return record


def policy_version(record: dict[str, Any] | None) -> str | None:
    """How datasets name the policy's model version: its store key (runs/<id>/models/dpo), or None."""
    return (record or {}).get("model")
