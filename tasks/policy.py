"""The policy agent of a synthesis run: the pinned `latest` model (infra/policy.py) added to the run's agents, with
the managed server that serves it.

    cfg = with_policy_agent(cfg, store, run_id)   # in the synthesize and synthesize-shard flows, after loading

How it is served (synthesis.policy_agent.serve):
- transformers / vllm_merged / in_process: the merged weights (a LoRA `latest` is merged into its base once and
  cached by content, as evaluation does: evaluation.generation);
- vllm_lora: `vllm serve <base> --enable-lora --lora-modules <name>=<adapter folder>`: the adapter as published.
The agent's name is stable (`policy` by default): candidates and datasets carry it, and policy.json says which
model version it was in this run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from infra.config import ServerSpec
from infra.policy import pin_policy
from infra.runtime import local_run_dir
from infra.servers import free_port
from infra.store import Store
from runconfig import RunConfig
from toa_core.config import ModelConfig

log = logging.getLogger(__name__)


def policy_record(cfg: RunConfig, store: Store, run_id: str) -> dict[str, Any] | None:
    """The pinned policy of the run when the policy agent is on and some model is `latest`; else None."""
    if not cfg.synthesis.policy_agent.enabled:
        return None
    record = pin_policy(store, run_id)
    return record if record.get("run_id") else None


def _merged_folder(cfg: RunConfig, store: Store, model_key: str) -> str:
    from evaluation.config import GenerationConfig
    from evaluation.generation import resolve_model_under_test

    generation = GenerationConfig(base_model=cfg.training.common.base_model)
    return resolve_model_under_test(model_key, generation, store).config.model


def _adapter_folder(store: Store, run_id: str, model_key: str) -> Path:
    from training.stage import download_published

    folder = local_run_dir(run_id) / "policy-adapter"
    if not (folder / "adapter_config.json").is_file():
        download_published(store, model_key, folder)
    return folder


def with_policy_agent(cfg: RunConfig, store: Store, run_id: str) -> RunConfig:
    """`cfg` with the policy agent (and its managed server) added, when it is enabled and some model is `latest`;
    `cfg` itself otherwise. Never changes `cfg`."""
    record = policy_record(cfg, store, run_id)
    if record is None:
        return cfg
    policy = cfg.synthesis.policy_agent
    cfg = cfg.model_copy(deep=True)
    server_name = f"{policy.name}-server"
    sampling = dict(system_prompt=policy.system_prompt, temperature=policy.temperature,
                    max_concurrency=policy.max_concurrency)
    server: ServerSpec | None = None
    if policy.serve == "vllm_lora":
        if record["weights"] != "lora_adapter":
            raise ValueError(f"synthesis.policy_agent.serve vllm_lora: `latest` ({record['model']}) has full weights, "
                             "not a LoRA adapter; use serve: vllm_merged")
        adapter = _adapter_folder(store, run_id, record["model"])
        # Requests must name the LoRA module, not the base model the server reports (which `served_by` would send),
        # so the agent gets the server's address directly: a port fixed now, on this host's loopback.
        port = free_port()
        server = ServerSpec(name=server_name, kind="vllm", model=record["base_model"] or cfg.training.common.base_model,
                            port=port, executable=policy.executable, gpus=policy.gpus,
                            max_model_len=policy.max_model_len, gpu_memory_utilization=policy.gpu_memory_utilization,
                            startup_timeout_s=policy.startup_timeout_s,
                            extra_args=["--enable-lora", "--max-lora-rank", str(policy.max_lora_rank),
                                        "--lora-modules", f"{policy.name}={adapter}"])
        agent = ModelConfig(name=policy.name, model=policy.name, endpoints=[f"http://127.0.0.1:{port}/v1"], **sampling)
    else:
        folder = _merged_folder(cfg, store, record["model"])
        if policy.serve == "in_process":
            agent = ModelConfig(name=policy.name, backend="transformers", model=folder, **sampling)
        else:
            kind = "transformers" if policy.serve == "transformers" else "vllm"
            server = ServerSpec(name=server_name, kind=kind, model=folder, served_model_name=policy.name
                                if kind == "vllm" else None, executable=policy.executable, gpus=policy.gpus,
                                max_model_len=policy.max_model_len, startup_timeout_s=policy.startup_timeout_s,
                                gpu_memory_utilization=policy.gpu_memory_utilization)
            agent = ModelConfig(name=policy.name, model=policy.name if kind == "vllm" else folder,
                                served_by=server_name, **sampling)
    cfg.models.append(agent)
    if server is not None:
        if not cfg.servers.managed:  # the other servers (if any are listed) are not this run's to start
            cfg.servers.servers = []
            cfg.servers.managed = True
        cfg.servers.servers.append(server)
    if policy.budget_share is not None:
        floor = cfg.search.ab_mcts.exploration_floor
        others = {m.name: floor for m in cfg.models[:-1]} if not isinstance(floor, dict) else dict(floor)
        cfg.search.ab_mcts.exploration_floor = {**others, policy.name: policy.budget_share}
    log.info("policy agent %s: %s (latest = run %s), served %s", policy.name, record["model"], record["run_id"],
             policy.serve)
    return cfg


def model_versions(cfg: RunConfig, record: dict[str, Any] | None) -> dict[str, str]:
    """{agent name: the model version that wrote its candidates}: the policy's store key, else the agent's model."""
    versions = {model.name: model.model for model in cfg.models}
    if record and record.get("model"):
        versions[cfg.synthesis.policy_agent.name] = record["model"]
    return versions
