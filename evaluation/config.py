"""The `evaluation:` section of a run config: which benchmarks, which judges, how to generate, what is gated.

Example (configs/tiny.yaml):

    evaluation:
      benchmarks:
        - {name: mini, kind: toaflow_mini}
      judges:
        reward: {kind: hf_classifier, model: "builtin:tiny-reward"}
      generation: {max_tokens: 32, temperature: 0.0}
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from toa_core.config import RetryConfig, RewardConfig, Section, repeated_names

BENCHMARK_KINDS = ("alpaca_eval", "arena_hard", "wmt", "gsm8k", "math500", "toaflow_mini", "verifiable")
WMT_LANGUAGES = ("cs", "de", "is", "ru", "zh")


class BenchmarkConfig(Section):
    """One benchmark. `source` is a local file in the benchmark's official format, or a `datasets` name
    (e.g. "tatsu-lab/alpaca_eval"); unset means the kind's default (toaflow_mini: the file shipped in
    evaluation/data/; verifiable: evaluation/data/constraints_heldout.jsonl; the others: their public dataset
    name, which needs the network or a local HF cache). `verifiable` items carry their checks (`verify`) and are
    scored by them: pass_rate, the share of items whose answer passes every check."""
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="folder name under runs/<id>/eval/")
    kind: Literal["alpaca_eval", "arena_hard", "wmt", "gsm8k", "math500", "toaflow_mini", "verifiable"]
    source: str | None = Field(None, description="local file (json/jsonl/parquet) or datasets name")
    dataset_config: str | None = Field(None, description="datasets config name (e.g. wmt22 'de-en'); kind default when unset")
    split: str | None = Field(None, description="datasets split; kind default when unset")
    version: Literal["v0.1", "v2.0"] = Field("v0.1", description="arena_hard only")
    languages: list[Literal["cs", "de", "is", "ru", "zh"]] = Field(
        default_factory=lambda: list(WMT_LANGUAGES), description="wmt only: source languages (X->en)")
    baseline: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="baseline outputs: alpaca_eval model_outputs.json, or arena-hard answer jsonl file(s). "
                          "arena_hard v2.0 has a baseline per category: list both files (each file's `model` names "
                          "its category: o3-mini-2025-01-31 -> hard_prompt, gemini-2.0-flash-001 -> "
                          "creative_writing), or map them: {hard_prompt: file, creative_writing: file}")
    limit: int | None = Field(None, ge=1, description="evaluate a seeded random subset of this many items")
    seed: int = 0

    @model_validator(mode="after")
    def _sources(self) -> "BenchmarkConfig":
        if self.kind in ("toaflow_mini", "verifiable") and self.baseline:
            raise ValueError(f"benchmark '{self.name}': {self.kind} needs no baseline outputs; drop `baseline`")
        if isinstance(self.baseline, dict) and self.kind != "arena_hard":
            raise ValueError(f"benchmark '{self.name}': a baseline per category ({{category: file}}) is arena_hard "
                             f"only; give {self.kind} one file")
        return self


class LLMJudgeConfig(Section):
    """A pairwise judge behind any OpenAI-compatible endpoint. Each pair is judged twice with positions swapped.

    With logprobs (vLLM returns them) the verdict is a probability, AlpacaEval-style; without them, the
    reply's text is parsed and verdicts that cannot be parsed are counted, not guessed."""
    endpoint: str = Field(..., description="base URL ending in /v1")
    model: str = Field(..., description="served model name")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    use_logprobs: bool = Field(True, description="ask for top logprobs and weight the verdict by them")
    max_tokens: int = Field(8, ge=1, description="AlpacaEval-style judging: the verdict is one letter; a few tokens "
                                                 "tolerate chatty judges (arena_hard benchmarks: arena_hard.max_tokens)")
    temperature: float = Field(0.0, ge=0)
    max_concurrency: int = Field(8, ge=1)
    prompt_file: str | None = Field(None, description="override the judge prompt (placeholders: {instruction}, {output_a}, {output_b})")
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig(max_attempts=4, read_timeout_s=120.0))


class ArenaHardConfig(Section):
    """How `arena_hard` benchmarks are judged and scored (arena-hard-auto's protocol).

    The judge writes its reasoning, then one verdict label ([[A>>B]], [[A>B]], [[A=B]], [[B>A]], [[B>>A]]); each
    question is judged in both orders; strong verdicts count three times; per category (v2.0: hard_prompt against
    o3-mini, creative_writing against gemini-2.0-flash; the headline is hard_prompt), a Bradley-Terry model over
    every player judged against that baseline (this model, earlier runs, the base model) gives each player's win
    probability against the baseline (anchored at 50), with `bootstrap_rounds` resamples and 90% intervals."""
    prompt_file: str | None = Field(None, description="judge prompt; default evaluation/data/arena_hard_judge.txt "
                                                      "(placeholders {instruction}, {output_a}, {output_b})")
    max_tokens: int | None = Field(None, ge=1, description="judge reply budget; default per version as arena-hard-auto's "
                                                           "configs: v0.1 4096, v2.0 16000")
    strong_weight: int = Field(3, ge=1, description="games a strong verdict (A>>B) counts as")
    bootstrap_rounds: int = Field(100, ge=10)
    style_control: bool | None = Field(None, description="control for length and markdown; default: on for v2.0, off for v0.1")
    solver: Literal["exact", "official"] = Field(
        "exact", description="style-controlled fit: 'exact' runs to the optimum of the likelihood (default); "
                             "'official' reproduces arena-hard-auto's show_result.py fit (torch L-BFGS, lr 0.1, 50 "
                             "iterations, float32, start 0.5), which stops short of it: the leaderboard's numbers")


class JudgesConfig(Section):
    """Which judges score chat benchmarks. Math and translation benchmarks are scored against references."""
    reward: RewardConfig | None = Field(None, description="reward-model judge: mean reward and win rate vs baseline")
    llm_judge: LLMJudgeConfig | None = None
    comet: bool = Field(False, description="also score translations with COMET (needs the `comet` extra)")
    comet_model: str = "Unbabel/wmt22-comet-da"
    comet_kiwi_model: str | None = Field(None, description="reference-free COMET-Kiwi model, e.g. Unbabel/wmt22-cometkiwi-da")

    @model_validator(mode="after")
    def _reward_is_a_model(self) -> "JudgesConfig":
        if self.reward is not None and self.reward.kind == "verifier":
            raise ValueError("judges.reward: a verifier is not a chat judge; to score answers by their checks, "
                             "add a benchmark of kind `verifiable` (its items carry the checks)")
        return self


class GenerationConfig(Section):
    """How the model under test answers. Greedy by default so a re-run gives the same outputs."""
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    seed: int = 0
    system_prompt: str | None = None
    concurrency: int = Field(8, ge=1, description="requests in flight: concurrent HTTP requests to an endpoint; "
                             "in process, greedy answers generated as one batch (up to 16)")
    served_model: str | None = Field(None, description="model name for an endpoint URI when it carries no '#name'")
    api_key_env: str | None = None
    base_model: str | None = Field(None, description="base model for a LoRA adapter whose adapter_config names a path that is not here")


class GateConfig(Section):
    """What the promotion gate compares (used by the pipeline, not here): `<benchmark>.<metric>` names.

    The gate fails closed (infra.promotion): a pipeline run with promote=true needs at least one gated metric."""
    metrics: list[str] = Field(default_factory=list, description='e.g. ["mini.rm_win_rate", "mini.math_accuracy"]')
    max_regression: float = Field(0.0, ge=0, description="allowed drop (metric units) before the gate fails")
    max_failure_rate: float | None = Field(
        0.05, ge=0, le=1, description="block a candidate whose share of failed, empty or judge-unscored items on a "
                                      "gated metric is above this; null allows none (it never turns the check off)")
    min_scored_items: int = Field(
        30, ge=1, description="block a gated metric with fewer items the judge scored (infra.promotion); small "
                              "demo subsets lower it")


class LengthControlConfig(Section):
    """Inputs of AlpacaEval's length-controlled win rate (chat benchmarks with a baseline).

    The instruction difficulty of `alpaca_eval` benchmarks comes from, in order: `difficulty` (a CSV path);
    the official instruction_difficulty.csv of the HF dataset tatsu-lab/alpaca_eval (cached in the store under
    eval_cache/alpaca_eval/, downloaded once when `use_official` and the hub is reachable); an estimate fitted on
    `annotations_dir` (cached in the store). Other benchmarks have no difficulty term."""
    difficulty: str | None = Field(None, description="CSV `index,instruction_difficulty` (e.g. from `toa lc-difficulty`)")
    annotations_dir: str | None = Field(None, description="folder of AlpacaEval annotation files to estimate the "
                                                          "difficulty from when no CSV is available")
    gamed: str | None = Field(None, description="AlpacaEval's df_gamed.csv; unset = the official one when cached or "
                                                "downloadable, else the length prior below")
    use_official: bool = Field(True, description="look for the official files in the store and on the HF Hub")
    prior_slope: float = Field(-1.9, description="length-prior slope used without df_gamed.csv (AlpacaEval's sign)")
    prior_difficulty_coef: float = Field(0.76, description="difficulty weight of the length-prior rows")
    bootstrap_samples: int = Field(200, ge=20, description="resamples behind the LC interval (each refits the GLM)")


class EvaluationConfig(Section):
    """Benchmarks, judges, generation and gate settings of `toa evaluate` and the pipeline's evaluate stage."""
    benchmarks: list[BenchmarkConfig] = Field(default_factory=lambda: [BenchmarkConfig(name="mini", kind="toaflow_mini")])
    judges: JudgesConfig = Field(default_factory=JudgesConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    base_model: str | None = Field(None, description="also evaluate this model (cached per benchmark) for comparison")
    bootstrap_samples: int = Field(1000, ge=50, description="resamples behind every 95% interval")
    seed: int = 0
    length_control: LengthControlConfig = Field(default_factory=LengthControlConfig)
    arena_hard: ArenaHardConfig = Field(default_factory=ArenaHardConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> "EvaluationConfig":
        names = [b.name for b in self.benchmarks]
        repeated = repeated_names(names)
        if repeated:
            raise ValueError(f"benchmark names must be unique; repeated: {', '.join(repeated)}")
        for gated in self.gate.metrics:
            if "." not in gated or gated.split(".", 1)[0] not in names:
                raise ValueError(f"gate metric '{gated}' must be '<benchmark>.<metric>' with a benchmark from: {', '.join(names)}")
        return self
