"""Build the agents and the reward model a run's config names.

`build_agents(models)` returns one ChatModel per ModelConfig, in config order. OpenAI agents that list the same
endpoints (and routing) share one connection pool, one concurrency limit per endpoint and one replica router. An agent with `served_by: NAME` gets
its endpoint (and the model id that server serves) from `endpoints_override[NAME]`, which is what
`infra.servers.managed_servers` yields. `build_reward(config)` returns the reward model wrapped in a
BatchingReward. `aclose_all(...)` closes whatever these built.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Iterable, Mapping, Union

from toa_core.backends.openai_http import EndpointPool, OpenAIChatModel
from toa_core.config import ModelConfig, RewardConfig, repeated_names
from toa_core.interfaces import ChatModel, RewardModel


@dataclass(frozen=True)
class ServedEndpoint:
    """A running server as the clients see it: its base URL (ending in /v1) and the model id it serves."""
    base_url: str
    model_id: str | None = None


EndpointOverride = Union[ServedEndpoint, str, list[str]]


class FactoryError(ValueError):
    """A model or reward config cannot be built; the message names the agent and the fix."""


def _resolve(name: str, served_by: str | None, configured: list[str], model: str | None,
             overrides: Mapping[str, EndpointOverride] | None) -> tuple[list[str], str | None]:
    """Endpoints and the model id to send, from the config or the running server named by `served_by`."""
    if served_by is None:
        return list(configured), model
    if not overrides or served_by not in overrides:
        known = ", ".join(sorted(overrides)) if overrides else "none are running"
        raise FactoryError(f"{name}: served_by '{served_by}' names no running server ({known}); "
                           f"add it to `servers.servers` with `servers.managed: true`, or set `endpoints`")
    override = overrides[served_by]
    if isinstance(override, ServedEndpoint):
        return [override.base_url], override.model_id or model
    return ([override] if isinstance(override, str) else list(override)), model


def build_agents(models: list[ModelConfig], endpoints_override: Mapping[str, EndpointOverride] | None = None
                 ) -> list[ChatModel]:
    """One ChatModel per config, in order (the order is the search's deterministic tie-break)."""
    names = [m.name for m in models]
    duplicates = repeated_names(names)
    if duplicates:
        raise FactoryError(f"agent names must be unique; repeated: {duplicates}")
    pools: dict[tuple, EndpointPool] = {}
    agents: list[ChatModel] = []
    for config in models:
        if config.backend == "transformers":
            from toa_core.backends.transformers_local import TransformersChatModel  # torch only when needed

            agents.append(TransformersChatModel(config))
            continue
        endpoints, model_id = _resolve(f"model '{config.name}'", config.served_by, config.endpoints,
                                       config.model, endpoints_override)
        if not endpoints:
            raise FactoryError(f"model '{config.name}': no endpoints")
        key = (tuple(endpoints), config.routing, config.affinity_load_factor)
        pool = pools.get(key)
        if pool is None:
            pool = pools[key] = EndpointPool(endpoints, config.max_concurrency, config.retry, config.routing,
                                             config.affinity_load_factor)
        if model_id != config.model:
            config = config.model_copy(update={"model": model_id})
        agents.append(OpenAIChatModel(config, endpoints, pool=pool))
    return agents


def build_reward(config: RewardConfig, endpoints_override: Mapping[str, EndpointOverride] | None = None
                 ) -> RewardModel:
    """The configured reward model, wrapped in a BatchingReward (batch_size / batch_wait_ms from the config).
    A verifier is returned as it is, with its ranker (if any) built and batched the same way; with `ensemble`:
    an EnsembleReward over its members, each built (and batched) as a reward model of its own."""
    from toa_core.rewards.batching import BatchingReward

    if config.ensemble is not None:
        from toa_core.rewards.ensemble import EnsembleReward

        members = [build_reward(member, endpoints_override) for member in config.ensemble.members]
        return EnsembleReward(members, config.ensemble.combine, config.ensemble.std_weight)
    if config.kind == "verifier":
        from toa_core.rewards.verifier import VerifierReward

        # Not batched itself (its checks are local and cheap); its ranker is a batched reward model of its own.
        ranker = build_reward(config.ranker, endpoints_override) if config.ranker is not None else None
        return VerifierReward(ranker, ranker_scale=config.ranker_scale)

    inner: RewardModel
    max_attempts: int | None = None
    if config.kind == "hf_classifier":
        from toa_core.rewards.hf_classifier import HFClassifierReward

        inner = HFClassifierReward(config.model, head=config.head, trust_remote_code=config.trust_remote_code,
                                   max_length=config.max_length, batch_size=config.batch_size,
                                   device=config.device, dtype=config.dtype)
    elif config.kind == "llm_judge":
        from toa_core.rewards.llm_judge import LLMJudgeReward

        inner = LLMJudgeReward(config.model, max_length=config.max_length, batch_size=config.batch_size)
    elif config.kind == "http":
        from toa_core.rewards.http import HTTPReward

        endpoints, model_id = _resolve("reward", config.served_by, config.endpoints, config.model, endpoints_override)
        if not model_id:
            raise FactoryError("reward kind 'http' needs `model` (the served model name) or a `served_by` server")
        inner = HTTPReward(endpoints, model_id, api=config.api, api_key_env=config.api_key_env, retry=config.retry,
                           max_length=config.max_length, routing=config.routing,
                           load_factor=config.affinity_load_factor)
        max_attempts = 1  # the HTTP client retries each pair itself
    elif config.kind == "plugin":
        from toa_core.rewards.plugin import PluginReward

        inner = PluginReward(config.callable, timeout_s=config.retry.read_timeout_s)
    else:  # pragma: no cover - RewardConfig's Literal rejects anything else
        raise FactoryError(f"unknown reward kind {config.kind!r}")
    return BatchingReward(inner, batch_size=config.batch_size, batch_wait_ms=config.batch_wait_ms,
                          retry=config.retry, max_attempts=max_attempts)


async def aclose_all(agents: Iterable[ChatModel] = (), reward: RewardModel | None = None) -> None:
    """Close agents (their shared pools close with the last one) and the reward model; errors are not raised."""
    closers = [agent.aclose() for agent in agents]
    if reward is not None:
        closers.append(reward.aclose())
    await asyncio.gather(*closers, return_exceptions=True)
