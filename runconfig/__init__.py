"""The run config: one pydantic tree loaded from YAML and validated before any work starts.

Each section is a model class in the package that uses it; this module only composes them and turns
validation errors into messages that name the file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator

from evaluation.config import EvaluationConfig
from infra.config import ServersConfig, StoreConfig
from infra.hub import PublishConfig
from infra.incremental import AccumulationConfig
from infra.policy import PolicyAgentConfig
from toa_core.config import (ModelConfig, RewardConfig, SearchConfig, Section, describe_validation_error,
                             read_yaml_mapping, repeated_names)
from toa_core.credentials import remember_secret_env_names, secret_env_names_in
from toa_core.decontamination import DecontaminationConfig
from toa_core.ingest import IngestConfig
from toa_core.ranking import RankingConfig
from training.config import TrainingConfig


LOCAL_MAX_SHARDS_IN_FLIGHT = 8  # threads of the synthesize flow's task runner (flows/synthesize.py)


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and what to do."""


class SynthesisConfig(Section):
    """The synthesis flow: where prompts come from, how they are sharded, how candidates become datasets."""
    prompts: IngestConfig | None = Field(None, description="the prompt source; `toa synthesize --prompts` overrides it")
    prompt_roots: list[str] = Field(
        default_factory=list, description="where a run started from a deployment may read its `prompts` parameter: "
        "local folders, s3://bucket/prefix, hf:ORG/NAME (besides $TOAFLOW_PROMPT_ROOTS and the shipped data/prompts/)")
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    shard_size: int = Field(500, ge=1, description="prompts per shard (one Prefect task or flow run, one parquet "
                            "file); keep it >= 500 on a cluster: Prefect's server slows down with thousands of runs")
    executor: Literal["local", "workers"] = Field(
        "local", description="local: shards are tasks of the synthesis flow run, in its process; workers: each shard "
        "is a flow run of the `shard_deployment` deployment, picked up by the workers of its pool (one per host)")
    max_shards_in_flight: int = Field(
        1, ge=1, validation_alias=AliasChoices("max_shards_in_flight", "parallel_shards"),
        description="shards sampled at once (a sliding window: the next shard starts as soon as one ends); "
        "`parallel_shards` is its old name")
    processes_per_host: int = Field(
        1, ge=1, le=64, description="orchestrator processes one shard runs on its host, each searching a part of "
        "the shard's prompts (one event loop uses one core: ~2,000 generations/s)")
    shard_retries: int = Field(2, ge=0, description="attempts after the first for a shard that failed or crashed (it "
                               "resumes from its checkpoints)")
    shard_retry_delay_s: float = Field(10.0, ge=0)
    shard_deployment: str = Field("synthesize-shard/sample-shard", pattern=r"^[^/]+/[^/]+$",
                                  description="executor workers: the FLOW/DEPLOYMENT that runs one shard")
    progress_interval_s: float = Field(10.0, gt=0, description="how often shards report progress and the "
                                       "synthesis flow follows its shards")
    decontaminate: DecontaminationConfig = Field(
        default_factory=DecontaminationConfig,
        description="check prompts and chosen answers against the evaluation sets; `false` switches it off")
    policy_agent: PolicyAgentConfig = Field(
        default_factory=PolicyAgentConfig,
        description="the promoted model (`latest`) as one more agent, and which DPO pairs it may give (off by default)")

    @field_validator("decontaminate", mode="before")
    @classmethod
    def _decontaminate_shorthand(cls, value: object) -> object:
        return {"enabled": value} if isinstance(value, bool) else value


    @model_validator(mode="after")
    def _local_window_fits_the_thread_pool(self) -> "SynthesisConfig":
        if self.executor == "local" and self.max_shards_in_flight > LOCAL_MAX_SHARDS_IN_FLIGHT:
            raise ValueError(f"synthesis.max_shards_in_flight {self.max_shards_in_flight}: executor `local` runs at "
                             f"most {LOCAL_MAX_SHARDS_IN_FLIGHT} shards at once (threads of one process); use "
                             "`processes_per_host` for more cores, or `executor: workers` for more hosts")
        return self


class PipelineConfig(Section):
    """The nightly pipeline (flows/pipeline.py): how much of the earlier nights' data it trains on, and where a
    promoted model is published."""
    accumulate: AccumulationConfig = Field(
        default_factory=AccumulationConfig, description="bound the accumulated training data: a window of nights "
        "and/or a per-night decay (infra/incremental.py); default: every night, every row")
    publish: PublishConfig = Field(
        default_factory=PublishConfig, description="push a promoted model and its datasets to Hub repos (opt-in; "
        "tasks/publish.py)")


class RunConfig(Section):
    """Everything a run needs. See configs/*.yaml for annotated examples."""
    name: str = Field("run", description="a label for this config; run ids are generated from it")
    store: StoreConfig = Field(default_factory=StoreConfig)
    servers: ServersConfig = Field(default_factory=ServersConfig)
    models: list[ModelConfig] = Field(..., min_length=1, description="the agents, in tie-break order")
    reward: RewardConfig
    search: SearchConfig = Field(default_factory=SearchConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _unique_model_names(self) -> "RunConfig":
        names = [m.name for m in self.models]
        duplicates = repeated_names(names)
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        policy = self.synthesis.policy_agent
        if policy.enabled and policy.name in names:
            raise ValueError(f"synthesis.policy_agent.name '{policy.name}' is also the name of one of the models; "
                             "give the policy agent a name of its own")
        if policy.budget_share is not None and self.search.strategy != "ab_mcts":
            raise ValueError(f"synthesis.policy_agent.budget_share is reserved through AB-MCTS's exploration floor; "
                             f"search.strategy '{self.search.strategy}' has none: use ab_mcts or remove budget_share")
        if self.search.model is not None and self.search.model not in names:
            raise ValueError(f"search.model '{self.search.model}' is not one of the models: {', '.join(names)}")
        return self

    @model_validator(mode="after")
    def _continuous_batching_agents_sample_alike(self) -> "RunConfig":
        # transformers 5.23's continuous batching builds ONE generation config from the first request a server gets
        # and samples every later request with it: agents that differ in temperature/top_p would silently all
        # sample like whichever agent happened to ask first.
        for spec in (s for s in self.servers.servers if s.continuous_batching):
            for key, reward in (("reward", self.reward), ("reward.ranker", self.reward.ranker)):
                if reward is not None and reward.served_by == spec.name:
                    raise ValueError(f"{key}.served_by '{spec.name}': that server has continuous_batching on, so it "
                                     "samples every request like the first it got (an agent's); serve the reward "
                                     "model from a server of its own")
            settings = {m.name: self._sampling_settings(m) for m in self.models if m.served_by == spec.name}
            if len(set(settings.values())) > 1:
                shown = "; ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in values if v is not None)
                                  for name, values in settings.items())
                raise ValueError(f"server '{spec.name}' has continuous_batching on, and transformers serve then "
                                 f"samples every request with the settings of the first one it gets, but its agents "
                                 f"sample differently ({shown}); give them the same temperature/top_p/top_k/min_p/"
                                 f"repetition_penalty (models[].*, search.temperature/top_p), or turn "
                                 f"continuous_batching off")
        return self

    def _sampling_settings(self, model: ModelConfig) -> tuple[tuple[str, float | int | None], ...]:
        """What an agent's requests carry besides the prompt (its own settings win over the search's)."""
        return (("temperature", model.temperature if model.temperature is not None else self.search.temperature),
                ("top_p", model.top_p if model.top_p is not None else self.search.top_p),
                ("top_k", model.top_k), ("min_p", model.min_p), ("repetition_penalty", model.repetition_penalty))

    @model_validator(mode="after")
    def _reward_fits_its_server(self) -> "RunConfig":
        # The HTTP reward sends max_length as vLLM's truncate_prompt_tokens, which vLLM refuses above max_model_len.
        for key, reward in (("reward", self.reward), ("reward.ranker", self.reward.ranker)):
            spec = next((s for s in self.servers.servers if reward is not None and s.name == reward.served_by), None)
            if reward is not None and reward.kind == "http" and spec is not None and spec.max_model_len is not None \
                    and reward.max_length > spec.max_model_len:
                raise ValueError(f"{key}.max_length ({reward.max_length}) is more than servers '{spec.name}' "
                                 f"max_model_len ({spec.max_model_len}); vLLM refuses to truncate beyond it: lower "
                                 f"{key}.max_length")
        return self


def parse_config(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a config mapping; raise ConfigError naming `source` and each bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(source, error)) from None
    # Every variable the config names as holding a key is masked from now on (logs, states, files), whatever
    # its name looks like.
    remember_secret_env_names(secret_env_names_in(data))
    return config


def read_config_mapping(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The YAML mapping of a config file with `overrides` (dotted keys, e.g. {"search.budget": 12}) applied;
    not validated (training-only configs have no `models`)."""
    data = read_yaml_mapping(path, ConfigError)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load and validate a YAML run config. `overrides` maps dotted keys to values (e.g. {"search.budget": 12})."""
    return parse_config(read_config_mapping(path, overrides), source=str(path))
