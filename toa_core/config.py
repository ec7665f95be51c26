"""Config sections owned by the engine: the agents, the reward model and the search.

Every section forbids unknown keys, so a typo in a YAML file is an error that names the key.
The whole run config (`runconfig.RunConfig`) composes these with the other packages' sections.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STRATEGIES = ("toa", "ab_mcts", "random", "ensemble", "prs", "seq_refine", "moa", "self_moa")
# Strategies whose generations are decided one at a time, so they can stop early and run several in one tree.
TREE_STRATEGIES = ("toa", "ab_mcts")


def repeated_names(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, sorted: what a "names must be unique" error lists."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RetryConfig(Section):
    """How a backend call that fails is retried: exponential backoff with full jitter, bounded attempts."""
    max_attempts: int = Field(4, ge=1, description="attempts per request, the first included")
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(20.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(600.0, gt=0, description="per request; generation of 2048 tokens can be slow")


class ModelConfig(Section):
    """One agent. Agents are tried in the order they are listed (the deterministic tie-break)."""
    name: str = Field(..., description="unique agent name used in records")
    backend: Literal["openai", "transformers"] = "openai"
    model: str = Field(..., description="served model id (openai) or HF folder / hub id / builtin:NAME (transformers)")
    endpoints: list[str] = Field(default_factory=list, description="base URLs ending in /v1; several = replicas")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (never the key)")
    system_prompt: str | None = None
    temperature: float | None = Field(None, ge=0, description="overrides search.temperature for this agent")
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    # vLLM (and SGLang) fill sampling fields a request leaves out from the model's generation_config.json. Managed
    # vLLM servers turn that off (servers.servers[].generation_config: vllm); for a server toaflow does not start,
    # set these to send neutral values explicitly (top_k -1, min_p 0, repetition_penalty 1). Unset = not sent
    # (hosted APIs such as OpenAI's reject these fields).
    top_k: int | None = Field(None, ge=-1, description="sent as `top_k` when set; -1 (or 0) = off")
    min_p: float | None = Field(None, ge=0, le=1, description="sent as `min_p` when set; 0 = off")
    repetition_penalty: float | None = Field(None, gt=0, description="sent as `repetition_penalty` when set; 1 = off")
    max_concurrency: int = Field(64, ge=1, description="requests in flight per endpoint")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    served_by: str | None = Field(None, description="name of a managed server in `servers` that provides this model")
    routing: Literal["round_robin", "affinity"] | None = Field(
        None, description="replica choice: affinity keeps each prompt's requests on one replica (its prefix cache) "
                          "under a load bound; round_robin uses replicas in turn; default: affinity with several endpoints")
    affinity_load_factor: float = Field(1.25, ge=1.0, description="affinity: no replica above this x the mean in-flight requests")

    @model_validator(mode="after")
    def _endpoints_for_http(self) -> "ModelConfig":
        if self.backend == "openai" and not self.endpoints and not self.served_by:
            raise ValueError(f"model '{self.name}': backend 'openai' needs `endpoints` or `served_by`")
        return self


class RewardConfig(Section):
    """The reward model. kinds:
    - hf_classifier: in-process sequence classifier; `head: logits` (Skywork-style logits[0]) or `score` (ArmoRM).
    - http: a vLLM pooling server; `api: classify` or `pooling`.
    - llm_judge: a causal LM's next-token probabilities of a yes/no verdict (the CPU demo's judge).
    - plugin: `callable: "module:function"`, an async or sync function (messages, response) -> float.
    - verifier: programmatic checks named by each prompt's record (`metadata.verify`: a gold math answer checked
      with math-verify, IFEval-style constraints); reward = share of checks passed. With `ranker` (another reward
      config) the verifier decides pass/fail and the ranker orders answers inside each class:
      reward = 2 x [all checks pass] + sigmoid(ranker score / ranker_scale) (toa_core/rewards/verifier.py).
    """
    kind: Literal["hf_classifier", "http", "llm_judge", "plugin", "verifier"] = "hf_classifier"
    ensemble: "RewardEnsembleConfig | None" = Field(
        None, description="several reward models combined into one score (against reward over-optimisation); "
                          "when set, the members are configured there and this section's own model keys stay unset")
    model: str | None = Field(None, description="HF folder / hub id / builtin:NAME, or the served model name")
    head: Literal["logits", "score"] = "logits"
    trust_remote_code: bool = Field(False, description="load the model's own code (ArmoRM needs it); off unless set")
    device: str = Field("auto", description="hf_classifier: torch device; auto = cuda when available, else cpu")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="hf_classifier weights; auto = bfloat16 on CUDA (ArmoRM/Skywork as published), float32 on CPU")
    endpoints: list[str] = Field(default_factory=list)
    api: Literal["classify", "pooling"] = "classify"
    api_key_env: str | None = None
    callable: str | None = None
    max_length: int = Field(4096, ge=16, description="tokens per scored pair; longer pairs lose the end of the response "
                            "(kind http: sent as vLLM's truncate_prompt_tokens, at most the server's max_model_len)")
    batch_size: int = Field(16, ge=1, description="pairs scored per forward pass / request")
    batch_wait_ms: float = Field(5.0, ge=0, description="how long the batcher waits to fill a batch")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    served_by: str | None = None
    routing: Literal["round_robin", "affinity"] | None = Field(
        None, description="http: replica choice; affinity sends every pair of one prompt to one replica (its prefix "
                          "cache holds the prompt) under a load bound; default: affinity with several endpoints")
    affinity_load_factor: float = Field(1.25, ge=1.0, description="http affinity: no replica above this x the mean in-flight pairs")
    ranker: "RewardConfig | None" = Field(
        None, description="verifier only: a reward model ranking answers inside the pass and the fail class")
    ranker_scale: float = Field(1.0, gt=0, description="verifier with ranker: the ranker's score is squashed as "
                                                       "sigmoid(score / ranker_scale) into [0, 1]")

    @model_validator(mode="after")
    def _kind_needs(self) -> "RewardConfig":
        if self.ranker is not None and self.kind != "verifier":
            raise ValueError(f"`ranker` combines a reward model with `kind: verifier`; reward kind '{self.kind}' "
                             "takes none (drop `ranker`, or set kind: verifier)")
        if self.ranker is not None and self.ranker.kind == "verifier":
            raise ValueError("`ranker` must be a reward model (hf_classifier, http, llm_judge, plugin), not a verifier")
        if self.kind == "verifier" and self.model:
            raise ValueError("reward kind 'verifier' checks answers itself and takes no `model`; to combine it with "
                             "a reward model, put that model's settings under `ranker`")
        if self.ensemble is not None:
            own = [key for key in ("model", "callable", "served_by") if getattr(self, key)] + (
                ["endpoints"] if self.endpoints else [])
            if own:
                raise ValueError(f"reward.ensemble is set, so the members name the models: move {', '.join(own)} "
                                 "into reward.ensemble.members")
            return self
        if self.kind in ("hf_classifier", "llm_judge") and not self.model:
            raise ValueError(f"reward kind '{self.kind}' needs `model`")
        if self.kind == "http" and not (self.endpoints or self.served_by):
            raise ValueError("reward kind 'http' needs `endpoints` or `served_by`")
        if self.kind == "plugin" and not self.callable:
            raise ValueError("reward kind 'plugin' needs `callable: module:function`")
        return self


class RewardEnsembleConfig(Section):
    """Several reward models judge every pair; their scores are combined into one (toa_core/rewards/ensemble.py).
    Every strategy and the ranking see only the combined score. A pair that any member fails to score fails (it
    is never scored by fewer members). Members should share a scale: the combination does not rescale them."""
    members: list[RewardConfig] = Field(..., min_length=2, description="the reward models (each a reward section)")
    combine: Literal["mean", "min", "mean_std"] = Field(
        "mean_std", description="mean; min (the harshest member); mean_std = mean - std_weight x std across members")
    std_weight: float = Field(1.0, ge=0, description="k of mean_std")

    @model_validator(mode="after")
    def _flat(self) -> "RewardEnsembleConfig":
        nested = [i for i, member in enumerate(self.members) if member.ensemble is not None]
        if nested:
            raise ValueError(f"reward.ensemble.members[{nested[0]}] is itself an ensemble; list its members directly")
        return self


RewardConfig.model_rebuild()


class AggregateMoveConfig(Section):
    """The tree strategies' third move (toa and ab_mcts): besides "answer fresh" and "refine one answer", a model
    may "aggregate the tree's top-k answers" (by reward) with the aggregate template, as MoA's layers do. Off by
    default: the paper's TOA has no such move, and its trees stay exactly the paper's."""
    enabled: bool = False
    k: int = Field(3, ge=2, description="answers combined per aggregation (the tree's k best by reward)")
    models: list[str] | None = Field(None, description="the models that may aggregate (default: every model)")

    def aggregators(self, model_names: list[str]) -> list[int]:
        """Indices of the models that may aggregate; ValueError names an unknown model."""
        if self.models is None:
            return list(range(len(model_names)))
        unknown = sorted(set(self.models) - set(model_names))
        if unknown:
            raise ValueError(f"search.aggregate.models names unknown model(s) {', '.join(unknown)}; "
                             f"models: {', '.join(model_names)}")
        return [i for i, name in enumerate(model_names) if name in self.models]


class AdaptiveConfig(Section):
    """Adaptive budget (toa and ab_mcts): a prompt whose best reward has stopped improving stops early, and the
    generations it saved go to prompts that are still improving when they reach `search.budget`, never beyond the
    run's total (budget x prompts). Off by default: the paper spends exactly N generations on every prompt.

    The stop rule, checked after every finished generation g (failed ones count as spent): stop when
    g >= min_generations and best(g) - best(g - patience) <= margin x spread, where best(i) is the best reward
    after i generations and spread the standard deviation of the prompt's rewards so far (so the margin has no
    unit: it works the same for ArmoRM's 0.05..0.2 and a logit-scale reward). See toa_core/adaptive.py.
    """
    enabled: bool = False
    min_generations: int | None = Field(
        None, ge=1, description="never stop before this many generations; default budget // 2, at least models + 1")
    patience: int | None = Field(
        None, ge=1, description="M: the window of generations without enough improvement; default budget // 4, "
                                "at least the number of models (toa: at least its width + 1)")
    margin: float = Field(
        0.1, ge=0, description="an improvement counts only above margin x the prompt's reward spread (std)")
    max_budget_factor: float = Field(
        2.0, ge=1, description="a still-improving prompt may spend up to this many times search.budget from the "
                               "saved pool")


class ABMCTSConfig(Section):
    """AB-MCTS-A (treequest): Thompson sampling decides per node whether to widen (a new answer) or deepen (refine
    an existing one), and which model acts. See toa_core/strategies/ab_mcts.py for the reward mapping."""
    exploration_floor: float | dict[str, float] = Field(
        0.1, description="minimum share of the generations each model writes (one number for every model, or "
                         "model name -> share); below it the model answers fresh regardless of the posteriors")
    dist_type: Literal["gaussian", "beta"] = Field("gaussian", description="treequest's posterior family")

    @model_validator(mode="after")
    def _floor_in_range(self) -> "ABMCTSConfig":
        floor = self.exploration_floor
        shares = list(floor.values()) if isinstance(floor, dict) else [floor]
        if any(not 0 <= share <= 1 for share in shares):
            raise ValueError("exploration_floor: every share must be between 0 and 1")
        if isinstance(self.exploration_floor, dict) and sum(shares) > 1:
            raise ValueError("exploration_floor: the shares add up to more than 1")
        return self

    def floor_for(self, model_names: list[str]) -> list[float]:
        """The floor share of each model, in the given order; ValueError names an unknown model."""
        if not isinstance(self.exploration_floor, dict):
            if self.exploration_floor * len(model_names) > 1:
                raise ValueError(f"search.ab_mcts.exploration_floor {self.exploration_floor} x {len(model_names)} "
                                 "models is more than the whole budget; use at most 1 / number of models")
            return [self.exploration_floor] * len(model_names)
        unknown = sorted(set(self.exploration_floor) - set(model_names))
        if unknown:
            raise ValueError(f"search.ab_mcts.exploration_floor names unknown model(s) {', '.join(unknown)}; "
                             f"models: {', '.join(model_names)}")
        return [self.exploration_floor.get(name, 0.0) for name in model_names]


class SearchConfig(Section):
    """The search strategy and its budget. One generation = one completion + one reward score."""
    strategy: Literal["toa", "ab_mcts", "random", "ensemble", "prs", "seq_refine", "moa", "self_moa"] = "toa"
    budget: int = Field(
        160, ge=1, description="generations per prompt (N); every strategy spends exactly N unless adaptive")
    task: Literal["chat", "translation"] = "chat"
    # TOA
    tau: float = Field(0.1, gt=0, description="value = sigmoid(reward / tau); 0.1 for ArmoRM-scale rewards, 1 for KIWI")
    alpha: float = Field(0.01, ge=0, description="UCB exploration weight on the normalised scale")
    width: int | None = Field(None, ge=1, description="responses per tree depth before the beat-your-parent rule; default floor(N/3)")
    topk_child: int = Field(1, ge=1)
    max_model_failures: int = Field(2, ge=1, description="failed generations after which an agent is dropped from one tree")
    # toa and ab_mcts
    rollouts_per_tree: int = Field(
        1, ge=1, description="selections in flight per tree (virtual loss for toa); 1 = the paper's sequential search")
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    ab_mcts: ABMCTSConfig = Field(default_factory=ABMCTSConfig)
    aggregate: AggregateMoveConfig = Field(default_factory=AggregateMoveConfig)
    # baselines
    model: str | None = Field(None, description="the single agent for random, prs and self_moa (default: the first agent)")
    moa_layers: int = Field(4, ge=1, description="MoA (and Self-MoA) stack depth L")
    self_moa_width: int | None = Field(
        None, ge=1, description="self_moa: samples per layer (default: the number of models, MoA's layer width)")
    # sampling
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(2048, ge=1)
    seed: int = 0
    prompt_concurrency: int = Field(64, ge=1, description="prompts searched at once")
    prompts: dict[str, str] = Field(default_factory=dict, description="override template files: refine, aggregate, translate, ...")

    @model_validator(mode="after")
    def _aggregate_needs_a_tree_strategy(self) -> "SearchConfig":
        if self.aggregate.enabled and self.strategy not in TREE_STRATEGIES:
            raise ValueError(f"aggregate.enabled: the aggregate move belongs to the tree strategies "
                             f"({', '.join(TREE_STRATEGIES)}); strategy '{self.strategy}' has its own plan "
                             "(moa and self_moa aggregate already)")
        return self

    @model_validator(mode="after")
    def _adaptive_needs_a_tree_strategy(self) -> "SearchConfig":
        if self.adaptive.enabled and self.strategy not in TREE_STRATEGIES:
            raise ValueError(f"adaptive.enabled: strategy '{self.strategy}' spends a fixed plan and cannot stop "
                             f"early; use one of {', '.join(TREE_STRATEGIES)} or set adaptive.enabled: false")
        return self

    def effective_width(self, n_models: int) -> int:
        """floor(K*n/3) with N = K*n, never below K (a narrower first layer could leave a model untried)."""
        return self.width if self.width is not None else max(n_models, self.budget // 3)



def describe_validation_error(source: str, error: ValidationError, what: str = "config") -> str:
    """One line per problem, each naming the dotted key: `source: invalid config` then `  - key: message`."""
    lines = [f"{source}: invalid {what} ({error.error_count()} problem(s))"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against the documented keys (README, 'The config'; configs/*.yaml)"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  - {key}: {message}")
    return "\n".join(lines)


def read_yaml_mapping(path: str | Path, error_type: type[Exception]) -> dict[str, Any]:
    """Read a YAML (or JSON) file that must hold a mapping; problems raise `error_type` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise error_type(f"{path}: config file not found; pass a path such as configs/tiny.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error_type(f"{path}:{where} is not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise error_type(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data
