"""Generate configs/paper/**: one complete run config per (experiment, strategy) of the TOA paper (arXiv 2412.17061).

    .venv/bin/python tools/gen_paper_configs.py          # (re)write every file
    .venv/bin/python tools/gen_paper_configs.py --check  # exit 1 if a committed file differs from what this writes

RunConfig has no include mechanism, so the YAML files are complete and committed; this script is the single
place their shared settings come from. The settings follow /work/shared/reference/toa_method.md (sections 1.12 and
3): 160 generations per prompt, temperature 0.7 (0.8 for UltraFeedback), top_p 1, max_tokens 2048; TOA chat
tau 0.1 / alpha 0.01, translation tau 1 / alpha 0.05, math tau 1 / alpha 0.1; width floor(N/3) (math floor(N/2));
topk_child 1; MoA 4 layers (WMT 3); PRS and random sampling from one model.

Cost model behind every "expected cost" line (an estimate to plan with, good to about a factor of 2):
  generated tokens = prompts x 160 generations x mean completion tokens of the task;
  wall hours       = generated tokens / (summed decode throughput of the servers x how evenly the strategy
                     spreads its calls over them), plus reward scoring where it is the slower side;
  GPU-hours        = wall hours x every GPU the config reserves (servers + reward).
Assumed vLLM decode throughput at full batch, bf16: 8B/7B/9B on one 80 GB H100 ~ 4,000 tok/s per replica;
70B/72B on TP 4 ~ 2,000 tok/s; Mistral-Large-2407 (123B) on TP 8 ~ 2,000 tok/s; 8x22B MoE on TP 8 ~ 3,000 tok/s.
Reward scoring is prefill only, so it learns replicas and prefix reuse (`reward_fleet_rate`): R replicas score R
times the pairs of one; a server with a prefix cache that holds the prompt for a share h of the pairs (affinity
routing keeps a prompt's pairs on one replica) skips h x the prompt's share of each pair's tokens. Chat generation
is modelled by decode throughput alone, which routing does not change (it saves prefill: bench/bench_routing.py).
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "configs" / "paper"
BUDGET = 160


# -- models and servers ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Agent:
    """One policy model: the agent name used in records, its hub id, how it is served, its decode throughput."""
    name: str
    hub_id: str
    tensor_parallel: int
    replicas: int
    tokens_per_s: int  # per replica, see the module docstring
    short: str  # used in file names
    max_model_len: int = 16384

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.replicas


LARGE = [
    Agent("llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", 4, 1, 2000, "llama70b"),
    Agent("mistral-large-2407", "mistralai/Mistral-Large-Instruct-2407", 8, 1, 2000, "mistral_large"),
    Agent("qwen2-72b", "Qwen/Qwen2-72B-Instruct", 4, 1, 2000, "qwen72b"),
    Agent("mixtral-8x22b", "mistralai/Mixtral-8x22B-Instruct-v0.1", 8, 1, 3000, "mixtral"),
    Agent("wizardlm-2-8x22b", "alpindale/WizardLM-2-8x22B", 8, 1, 3000, "wizardlm"),
]
# The paper ran the small models one per GPU, two replicas each on an 8-GPU node (toa_method.md section 5).
SMALL = [
    Agent("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 1, 2, 4000, "llama8b"),
    Agent("qwen2-7b", "Qwen/Qwen2-7B-Instruct", 1, 2, 4000, "qwen7b"),
    Agent("mistral-7b-v0.2", "mistralai/Mistral-7B-Instruct-v0.2", 1, 2, 4000, "mistral7b", max_model_len=32768),
    Agent("yi-1.5-9b", "01-ai/Yi-1.5-9B-Chat-16K", 1, 2, 4000, "yi9b"),
]
BY_NAME = {a.name: a for a in LARGE + SMALL}


def server_specs(agents: list[Agent], extra: list[dict[str, Any]] = (), routed: bool = False) -> dict[str, Any]:
    """The `servers:` section: one managed vLLM server per agent, GPUs assigned in order on the node. `routed`: an
    agent with several replicas gets one vLLM server per replica and a vllm-router in front of them instead (its
    consistent hashing on the X-Session-ID header keeps each prompt on one replica's prefix cache)."""
    specs, next_gpu = [], 0
    for agent in agents:
        if routed and agent.replicas > 1:
            names = [f"{agent.name}-{i}" for i in range(agent.replicas)]
            for name in names:
                specs.append({"name": name, "kind": "vllm", "model": agent.hub_id,
                              "tensor_parallel_size": agent.tensor_parallel,
                              "gpus": list(range(next_gpu, next_gpu + agent.tensor_parallel)),
                              "gpu_memory_utilization": 0.9, "max_model_len": agent.max_model_len,
                              "generation_config": "vllm",
                              "startup_timeout_s": 3600.0 if agent.tensor_parallel > 1 else 1800.0})
                next_gpu += agent.tensor_parallel
            specs.append({"name": agent.name, "kind": "router", "replicas": names, "policy": "consistent_hash"})
            continue
        gpus = list(range(next_gpu, next_gpu + agent.gpus))
        next_gpu += agent.gpus
        spec = {
            "name": agent.name,
            "kind": "vllm",
            "model": agent.hub_id,
            "tensor_parallel_size": agent.tensor_parallel,
            "gpus": gpus,
            "gpu_memory_utilization": 0.9,
            "max_model_len": agent.max_model_len,
            # vLLM's neutral top_k/min_p/repetition_penalty, not each model's generation_config.json: every agent
            # samples with the paper's temperature and top_p only
            "generation_config": "vllm",
            # The first start downloads the weights (up to ~280 GB for the 8x22B models): give it time.
            "startup_timeout_s": 3600.0 if agent.tensor_parallel > 1 else 1800.0,
        }
        if agent.replicas > 1:  # one server, several engine copies (vLLM data parallel) behind one endpoint
            spec["extra_args"] = ["--data-parallel-size", str(agent.replicas)]
        specs.append(spec)
    return {"managed": True, "servers": specs + list(extra)}


def model_entries(agents: list[Agent]) -> list[dict[str, Any]]:
    return [{"name": a.name, "backend": "openai", "model": a.hub_id, "served_by": a.name, "max_concurrency": 256}
            for a in agents]


ARMORM = {"kind": "hf_classifier", "model": "RLHFlow/ArmoRM-Llama3-8B-v0.1", "head": "score",
          "trust_remote_code": True, "max_length": 4096, "batch_size": 32}
ARMORM_GPUS = 1  # in process, on the GPU of the machine that runs the sampling tasks
ARMORM_PAIRS_PER_S = 25.0  # 8B classifier, bf16, ~550-token pairs: ~15k prefill tokens/s on one H100


def reward_fleet_rate(pairs_per_s_one: float, replicas: int, prompt_share: float = 0.0,
                      prompt_hit: float = 0.0) -> float:
    """Pairs/s of `replicas` reward servers that each score `pairs_per_s_one` with nothing cached, when a prefix
    cache holds the prompt (a `prompt_share` of a pair's tokens) for a share `prompt_hit` of the pairs."""
    return pairs_per_s_one * replicas / (1.0 - prompt_share * prompt_hit)


# ArmoRM served as a fleet (the UltraFeedback `toa_fleet` variant): vLLM cannot serve its gating head, so
# tools/reward_server.py serves it behind /classify, one process per GPU, started by hand like COMET-Kiwi; the
# client keeps each prompt's pairs on one server (reward.routing: affinity). transformers computes every pair in
# full (no prefix cache): prompt_hit 0, the replicas are the whole gain. A vLLM-served reward model with prefix
# caching on would add 1 / (1 - share x hit): ~1.3x for UltraFeedback (prompt ~25% of a pair, hit ~0.95).
ARMORM_FLEET_ENDPOINTS = [f"http://127.0.0.1:{8300 + i}" for i in range(4)]
ARMORM_FLEET = {"kind": "http", "model": "RLHFlow/ArmoRM-Llama3-8B-v0.1", "api": "classify",
                "endpoints": ARMORM_FLEET_ENDPOINTS, "routing": "affinity", "batch_size": 32}
ARMORM_FLEET_GPUS = len(ARMORM_FLEET_ENDPOINTS)
ARMORM_FLEET_PAIRS_PER_S = reward_fleet_rate(ARMORM_PAIRS_PER_S, ARMORM_FLEET_GPUS, prompt_share=0.25, prompt_hit=0.0)

# COMET-Kiwi is a COMET checkpoint, which neither vLLM nor `transformers serve` can load, so infra.servers has no
# kind for it: tools/kiwi_server.py runs by hand and answers vLLM's /classify protocol, which the reward reads with
# kind http at a fixed endpoint.
KIWI_ENDPOINTS = ["http://127.0.0.1:8200", "http://127.0.0.1:8201"]  # one server per GPU
KIWI = {"kind": "http", "model": "Unbabel/wmt22-cometkiwi-da", "endpoints": KIWI_ENDPOINTS, "api": "classify",
        "batch_size": 64}
KIWI_GPUS = len(KIWI_ENDPOINTS)
KIWI_PAIRS_PER_S = 2 * 400.0  # XLM-R large, ~100-token (src, mt) pairs

# Qwen2.5-Math-RM-72B's config.json has max_position_embeddings 4096: vLLM refuses a longer max_model_len at
# start-up (and scores past it are unreliable). reward.max_length (4096 by default) truncates longer pairs to fit.
MATH_RM_POSITIONS = 4096
MATH_RM_SERVER = {"name": "qwen2.5-math-rm-72b", "kind": "vllm_reward", "model": "Qwen/Qwen2.5-Math-RM-72B",
                  "tensor_parallel_size": 4, "gpus": [], "gpu_memory_utilization": 0.9,
                  "max_model_len": MATH_RM_POSITIONS,
                  "startup_timeout_s": 3600.0}
MATH_RM = {"kind": "http", "model": "Qwen/Qwen2.5-Math-RM-72B", "served_by": "qwen2.5-math-rm-72b", "api": "pooling",
           "max_length": MATH_RM_POSITIONS, "batch_size": 32}
MATH_RM_GPUS = 4
MATH_RM_PAIRS_PER_S = 10.0  # 72B on TP 4, ~800-token pairs: ~8k prefill tokens/s
MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


# -- experiments ----------------------------------------------------------------------------------------------

@dataclass
class Experiment:
    folder: str
    reproduces: str
    task: str  # chat | translation
    agents: list[Agent]
    single: list[str]  # agents used for the single-model baselines (random, prs)
    tau: float
    alpha: float
    temperature: float
    moa_layers: int
    width_divisor: int  # width = budget // width_divisor
    prompt_concurrency: int
    prompts: dict[str, Any]
    prompts_note: str
    n_prompts: int
    completion_tokens: int  # mean per generation, for the cost estimate
    reward: dict[str, Any]
    reward_servers: list[dict[str, Any]] = field(default_factory=list)
    reward_gpus: int = 0  # GPUs of the reward: its servers' GPUs, or one in-process GPU (ArmoRM)
    reward_pairs_per_s: float = 0.0  # scoring throughput of all of them together, for the cost estimate
    reward_where: str = "in the sampling process"
    reward_note: str = ""
    ranking: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    strategies: tuple[str, ...] = ("toa", "ensemble", "seq_refine", "moa", "random", "prs")
    run_line: str = ""
    extra_note: str = ""
    routed: bool = False  # one vLLM server per replica behind a managed vllm-router (see server_specs)


# How evenly a strategy's calls keep the servers busy (TOA's UCB sends most plays to the strongest model).
SPREAD = {"toa": 0.45, "ensemble": 0.85, "seq_refine": 0.85, "moa": 0.8, "random": 1.0, "prs": 1.0}


GPT4_JUDGE = {"endpoint": "https://api.openai.com/v1", "model": "gpt-4-1106-preview", "api_key_env": "OPENAI_API_KEY",
              "use_logprobs": True, "max_tokens": 8, "max_concurrency": 16}

TRAINING_8B = {
    "common": {"base_model": "meta-llama/Llama-3.1-8B-Instruct", "full_finetune": True, "precision": "auto",
               "gradient_checkpointing": True, "max_length": 2048, "seed": 42, "launcher": "accelerate",
               "accelerate_config": "configs/accelerate/zero3.yaml", "num_processes": 8, "timeout_s": 172800,
               "save_steps": 200, "logging_steps": 10, "merge_adapter": False,
               # Llama-3.1's own template has no {% generation %} markers: toaflow's marked copy (same text) lets
               # SFT train on the replies only, and `on` makes an unmarked template an error, not a silent change
               "chat_template": "builtin:llama-3.1"},
    "sft": {"learning_rate": 2.0e-5, "epochs": 1, "per_device_batch_size": 4, "grad_accum": 1,
            "warmup_ratio": 0.1, "lr_scheduler": "cosine", "assistant_only_loss": "on"},
    "dpo": {"learning_rate": 5.0e-7, "epochs": 1, "per_device_batch_size": 4, "grad_accum": 1,
            "warmup_ratio": 0.1, "lr_scheduler": "cosine", "beta": 0.1, "loss_type": "sigmoid", "from_sft": False},
}
TRAINING_GPUS = 8

EXPERIMENTS = [
    Experiment(
        folder="alpaca_eval",
        reproduces="the AlpacaEval 2.0 table (best-of-160 responses chosen by ArmoRM, 5 large models): "
                   "toa_method.md section 8, first table",
        task="chat", agents=LARGE, single=["llama-3.1-70b", "mistral-large-2407"],
        tau=0.1, alpha=0.01, temperature=0.7, moa_layers=4, width_divisor=3, prompt_concurrency=100,
        prompts={"source": "data/paper/alpaca_eval.jsonl", "id_field": "id"},
        prompts_note="the 805 AlpacaEval instructions, {id, instruction} JSONL (docs/reproduce.md, 'Data')",
        n_prompts=805, completion_tokens=500,
        reward=ARMORM, reward_gpus=ARMORM_GPUS, reward_pairs_per_s=ARMORM_PAIRS_PER_S,
        reward_note="ArmoRM's gated `.score` output, in process (trust_remote_code: its own model class)",
        ranking={"dpo_rejected_rank": 30, "rejected_min_spread": 0.0, "test_fraction": 0.0},
        run_line="toa synthesize --config {path} --run-id {run}   # then export the best responses: docs/reproduce.md",
    ),
    Experiment(
        folder="wmt22",
        reproduces="the WMT'22 X->en table (cs, de, is, ru, zh; KIWI-XXL of the best-of-160 translation chosen "
                   "by COMET-Kiwi, 5 large models): toa_method.md section 8, second table",
        task="translation", agents=LARGE, single=["llama-3.1-70b", "mistral-large-2407"],
        tau=1.0, alpha=0.05, temperature=0.7, moa_layers=3, width_divisor=3, prompt_concurrency=250,
        prompts={"source": "data/paper/wmt22_x_en.jsonl", "id_field": "id"},
        prompts_note="the 8,323 WMT'22 test sentences of cs/de/is/ru/zh->en in one JSONL, "
                     "{id: '<lang>-<n>', instruction: source, reference} (docs/reproduce.md, 'Data')",
        n_prompts=8323, completion_tokens=60,
        reward=KIWI, reward_gpus=KIWI_GPUS,
        reward_pairs_per_s=KIWI_PAIRS_PER_S, reward_where="for the by-hand COMET-Kiwi server",
        reward_note=f"COMET-Kiwi (wmt22-cometkiwi-da, reference-free: source + translation) over HTTP (kind http, "
                    f"vLLM's /classify protocol) at {' and '.join(KIWI_ENDPOINTS)}: start tools/kiwi_server.py by hand first "
                    "(docs/reproduce.md, 'Reward models'); the reference translation is never shown to it",
        ranking={"dpo_rejected_rank": 30, "rejected_min_spread": 0.0, "test_fraction": 0.0},
        evaluation={"benchmarks": [{"name": "wmt22", "kind": "wmt", "source": "data/paper/wmt22/wmt22_{lang}_to_en.jsonl",
                                    "languages": ["cs", "de", "is", "ru", "zh"]}],
                    "judges": {"comet": True, "comet_model": "Unbabel/wmt22-comet-da",
                               "comet_kiwi_model": "Unbabel/wmt23-cometkiwi-da-xxl"},
                    "generation": {"temperature": 0.0, "max_tokens": 512},
                    # the paper's translation metric; a pipeline run with promote=true needs a gated metric
                    "gate": {"metrics": ["wmt22.comet"], "max_regression": 0.0}},
        run_line="toa synthesize --config {path} --run-id {run}   # then score the best translations: docs/reproduce.md",
    ),
    Experiment(
        folder="ultrafeedback",
        reproduces="the synthetic-alignment-data table (SFT on each strategy's data, DPO on TOA's; "
                   "AlpacaEval 2.0 LC/WR and Arena-Hard): toa_method.md section 8, third table",
        task="chat", agents=SMALL, single=["llama-3.1-8b"],
        tau=0.1, alpha=0.01, temperature=0.8, moa_layers=4, width_divisor=3, prompt_concurrency=100,
        prompts={"source": "data/paper/ultrafeedback_prompts.jsonl", "prompt_field": "prompt", "id_field": "prompt_id"},
        prompts_note="the 59,876 UltraFeedback prompts of princeton-nlp/llama3-ultrafeedback-armorm (train), "
                     "{prompt_id, prompt} JSONL (docs/reproduce.md, 'Data')",
        n_prompts=59876, completion_tokens=400,
        reward=ARMORM, reward_gpus=ARMORM_GPUS, reward_pairs_per_s=ARMORM_PAIRS_PER_S,
        reward_note="ArmoRM's gated `.score` output, in process (trust_remote_code: its own model class)",
        ranking={"dpo_rejected_rank": 30, "rejected_min_spread": 0.0, "short_policy": "worst", "test_fraction": 0.01,
                 "seed": 0},
        training=TRAINING_8B,
        evaluation={"benchmarks": [{"name": "alpaca_eval", "kind": "alpaca_eval"},
                                   {"name": "arena_hard", "kind": "arena_hard", "version": "v0.1"}],
                    "judges": {"llm_judge": GPT4_JUDGE}, "generation": {"temperature": 0.0, "max_tokens": 2048},
                    "base_model": "meta-llama/Llama-3.1-8B-Instruct",
                    # the table's two columns: AlpacaEval 2.0 LC win rate and the Arena-Hard win rate against its
                    # fixed baseline (not the BT score, which moves with the other players on the leaderboard)
                    "gate": {"metrics": ["alpaca_eval.judge_lc_win_rate", "arena_hard.judge_win_rate"],
                             "max_regression": 0.0}},
        strategies=("toa", "ensemble", "seq_refine", "moa", "random", "prs"),
        run_line="toa pipeline --config {path}   # synthesize -> SFT (+ DPO for TOA) -> evaluate",
    ),
    Experiment(
        folder="math",
        reproduces="the math experiments (MATH-500 and GSM8K, best-of-160 chosen by Qwen2.5-Math-RM-72B, "
                   "4 small models; the reference publishes no table image for them: compare strategies "
                   "with each other)",
        task="chat", agents=SMALL, single=["qwen2-7b"],
        tau=1.0, alpha=0.1, temperature=0.7, moa_layers=4, width_divisor=2, prompt_concurrency=64,
        prompts={"source": "data/paper/math500.jsonl", "prompt_field": "problem", "id_field": "unique_id",
                 "system_prompt": MATH_SYSTEM},
        prompts_note="MATH-500 (HuggingFaceH4/MATH-500 test, {unique_id, problem, answer}); for GSM8K pass "
                     "--prompts data/paper/gsm8k.jsonl ({id, question}: set prompt_field question) or use the "
                     "gsm8k_* files",
        n_prompts=500, completion_tokens=600,
        reward=MATH_RM, reward_servers=[MATH_RM_SERVER], reward_gpus=MATH_RM_GPUS,
        reward_pairs_per_s=MATH_RM_PAIRS_PER_S, reward_where="for its managed vLLM pooling server",
        reward_note="Qwen2.5-Math-RM-72B served by vLLM (--runner pooling) and read through /pooling; the system "
                    "message it expects ('reason step by step ... \\boxed{}') is added to every prompt",
        ranking={"dpo_rejected_rank": 30, "rejected_min_spread": 0.0, "test_fraction": 0.0},
        run_line="toa synthesize --config {path} --run-id {run}   # then grade the best answers: docs/reproduce.md",
    ),
]

GSM8K_PROMPTS = {"source": "data/paper/gsm8k.jsonl", "prompt_field": "question", "id_field": "id",
                 "system_prompt": MATH_SYSTEM}

# The math experiments' verifier variant: each answer is checked against the problem's gold answer (math-verify)
# instead of being scored by Qwen2.5-Math-RM-72B, so no reward server and 4 fewer GPUs.
VERIFIER_PAIRS_PER_S = 200.0  # math-verify parses ~5 ms per answer on one CPU core of the sampling process
VERIFIER_TAU = 0.25  # rewards are 0 or 1: sigmoid(r / 0.25) = 0.5 or 0.98, the contrast tau 1 gives RM logits


def math_verifier_configs() -> dict[Path, str]:
    """configs/paper/math/{math500,gsm8k}_toa_verifier.yaml: TOA over the same 4 models, reward.kind verifier."""
    math = next(e for e in EXPERIMENTS if e.folder == "math")
    files: dict[Path, str] = {}
    notes = {"math500": "MATH-500 (HuggingFaceH4/MATH-500 test, {unique_id, problem, answer}): `answer` is the gold",
             "gsm8k": "GSM8K (openai/gsm8k main test, {id, question, answer}): the gold is what follows '####' in "
                      "`answer`"}
    for bench, prompts, n_prompts in (("math500", math.prompts, 500), ("gsm8k", GSM8K_PROMPTS, 1319)):
        variant = replace(
            math, tau=VERIFIER_TAU, n_prompts=n_prompts, prompts={**prompts, "answer_field": "answer"},
            prompts_note=f"{notes[bench]} (docs/reproduce.md, 'Data')",
            reward={"kind": "verifier"}, reward_servers=[], reward_gpus=0, reward_pairs_per_s=VERIFIER_PAIRS_PER_S,
            reward_where="(the verifier runs on the sampling host's CPU)",
            reward_note="verifier (reward.kind verifier): each answer's final result against the problem's gold "
                        "`answer` column by math-verify, reward 1 right / 0 wrong; no reward model, no reward server",
            reproduces=f"{math.reproduces}, with gold-answer checks in place of the reward model",
            extra_note="Changes from the paper (docs/reproduce.md, 'Math with a verifier'): the reward is the gold-"
                       "answer check, not Qwen2.5-Math-RM-72B; tau 0.25 for 0/1 rewards; the DPO rejected is still "
                       "the 30th best, and pairs whose chosen and rejected are both right (or both wrong) are "
                       "dropped as ties.")
        label = f"{bench}_toa_verifier"
        head, config = build(variant, "toa", "toa", None, label=label)
        files[OUT / "math" / f"{label}.yaml"] = render(head, config)
    return files


# -- one config -----------------------------------------------------------------------------------------------

def variants(exp: Experiment) -> list[tuple[str, str, str | None]]:
    """(file stem, strategy, single model) for every config of an experiment."""
    out = []
    for strategy in exp.strategies:
        if strategy in ("random", "prs"):
            out += [(f"{strategy}_{BY_NAME[name].short}", strategy, name) for name in exp.single]
        else:
            out.append((strategy, strategy, None))
    return out


def build(exp: Experiment, stem: str, strategy: str, single: str | None,
          label: str | None = None) -> tuple[str, dict[str, Any]]:
    """The header comment and the config mapping of one (experiment, strategy) file."""
    agents = [node_filling(BY_NAME[single])] if single else exp.agents
    servers = server_specs(agents, [dict(s) for s in exp.reward_servers], routed=exp.routed)
    next_gpu = sum(a.gpus for a in agents)
    for spec in servers["servers"][len(servers["servers"]) - len(exp.reward_servers):]:  # reward servers come last
        spec["gpus"] = list(range(next_gpu, next_gpu + exp.reward_gpus))
        next_gpu += exp.reward_gpus
    gpus = next_gpu if exp.reward_servers else next_gpu + exp.reward_gpus  # by-hand or in-process reward GPUs
    search: dict[str, Any] = {
        "strategy": strategy, "budget": BUDGET, "task": exp.task,
        "tau": exp.tau, "alpha": exp.alpha, "width": BUDGET // exp.width_divisor, "topk_child": 1,
        "moa_layers": exp.moa_layers, "temperature": exp.temperature, "top_p": 1.0, "max_tokens": 2048,
        "seed": 0, "prompt_concurrency": exp.prompt_concurrency,
    }
    if single:
        search["model"] = single
    name = f"paper-{exp.folder}-{label or stem}"
    config: dict[str, Any] = {
        "name": name,
        "store": {"root": "./artifacts"},
        "servers": servers,
        "models": model_entries(agents),
        "reward": dict(exp.reward),
        "search": search,
        "synthesis": {"prompts": dict(exp.prompts), "ranking": dict(exp.ranking), "shard_size": 256,
                      "max_shards_in_flight": 2, "shard_retries": 2},
    }
    if exp.training is not None:
        training = copy.deepcopy(exp.training)
        if strategy != "toa":
            training["dpo"]["enabled"] = False  # the table has DPO only on TOA's data
        config["training"] = training
    if exp.evaluation is not None:
        config["evaluation"] = copy.deepcopy(exp.evaluation)
    return header(exp, stem, strategy, single, agents, gpus, label), config


def node_filling(agent: Agent) -> Agent:
    """A single-model baseline gets the whole 8-GPU node: as many replicas as fit (at least one)."""
    return replace(agent, replicas=max(1, 8 // agent.tensor_parallel))


def cost(exp: Experiment, strategy: str, agents: list[Agent], gpus: int) -> tuple[float, float, str]:
    """(wall hours, GPU-hours, how) of the synthesis run, from the module docstring's model. Generation and
    scoring overlap (many prompts are in flight), so the slower of the two sets the wall time."""
    tokens = exp.n_prompts * BUDGET * exp.completion_tokens
    throughput = sum(a.tokens_per_s * a.replicas for a in agents) * SPREAD[strategy]
    generate_h = tokens / throughput / 3600
    score_h = exp.n_prompts * BUDGET / exp.reward_pairs_per_s / 3600
    wall = max(generate_h, score_h)
    how = (f"{exp.n_prompts:,} prompts x {BUDGET} generations x ~{exp.completion_tokens} completion tokens = "
           f"{tokens / 1e6:,.0f}M tokens at ~{throughput:,.0f} tok/s (servers' decode throughput x "
           f"{SPREAD[strategy]} for how evenly {strategy} spreads its calls) = {generate_h:,.1f} h; scoring "
           f"{exp.n_prompts * BUDGET:,} pairs at ~{exp.reward_pairs_per_s:,.0f}/s = {score_h:,.1f} h"
           + ("  (reward-bound: more reward GPUs shorten it)" if score_h > generate_h else ""))
    return wall, wall * gpus, how


def training_cost(strategy: str) -> str:
    """GPU-hours of the training stages of the data-synthesis table (full fine-tuning on 8 GPUs)."""
    sft_tokens = 59_300 * 650  # one best response per prompt, ~650 tokens with the prompt
    dpo_tokens = 56_500 * 2 * 700  # chosen + rejected
    sft_h = sft_tokens / (3000 * 8) / 3600  # ~3,000 trained tokens/s per H100 (8B, ZeRO-3, bf16)
    dpo_h = dpo_tokens / (1500 * 8) / 3600  # + a forward pass of the reference model per sequence
    total = sft_h + (dpo_h if strategy == "toa" else 0.0)
    stages = "SFT + DPO" if strategy == "toa" else "SFT"
    return (f"Training ({stages}, full fine-tuning, {TRAINING_GPUS} GPUs, DeepSpeed ZeRO-3): ~{total * TRAINING_GPUS:,.0f} "
            f"GPU-hours more (SFT 59.3k x ~650 tokens at ~3,000 tok/s/GPU"
            + (", DPO 56.5k pairs x 2 x ~700 tokens at ~1,500 tok/s/GPU" if strategy == "toa" else "")
            + "); evaluation: minutes of GPU plus the GPT-4 judge API (about 800 + 500 x 2 judge calls).")


def header(exp: Experiment, stem: str, strategy: str, single: str | None, agents: list[Agent], gpus: int,
           label: str | None) -> str:
    path = f"configs/paper/{exp.folder}/{label or stem}.yaml"
    wall, gpu_hours, how = cost(exp, strategy, agents, gpus)
    layout = ", ".join(f"{a.name} TP{a.tensor_parallel}x{a.replicas}" for a in agents)
    who = f"{strategy} with {single} only" if single else f"{strategy} over {len(agents)} models"
    lines = [
        f"Paper reproduction: {who}.",
        f"Reproduces: {exp.reproduces}.",
        f"GPUs: {gpus} x 80 GB (H100/A100): {layout}; reward {exp.reward_gpus} GPU(s) {exp.reward_where}. "
        + ("Managed servers are processes on the host that runs the flow, so it needs these GPUs; on 8-GPU "
           "nodes start the servers by hand and list their endpoints (docs/reproduce.md)."
           if gpus > 8 and any(a.tensor_parallel > 1 for a in agents) else ""),
        f"Expected cost: ~{gpu_hours:,.0f} GPU-hours (~{wall:,.1f} h wall) for synthesis. Estimate: {how};"
        f" x all {gpus} reserved GPUs. Good to about 2x (tools/gen_paper_configs.py explains the model).",
    ]
    if exp.training is not None:
        lines.append(training_cost(strategy))
    lines += [
        f"Prompts: {exp.prompts_note}.",
        f"Reward: {exp.reward_note}.",
        f"Run: {exp.run_line.format(path=path, run=f'paper-{exp.folder}-{label or stem}')}",
        "Servers are started and stopped by the run (servers.managed); set HF_TOKEN for the gated models.",
        "Generated by tools/gen_paper_configs.py: edit that script, not this file.",
    ]
    if exp.extra_note:
        lines.append(exp.extra_note)
    return "\n".join(f"# {line}" for line in _wrap(lines)) + "\n"


def _wrap(lines: list[str], width: int = 116) -> list[str]:
    import textwrap

    out: list[str] = []
    for line in lines:
        wrapped = textwrap.wrap(line, width=width, break_long_words=False, break_on_hyphens=False)
        out += [wrapped[0]] + ["  " + w for w in textwrap.wrap(" ".join(wrapped[1:]), width=width - 2,
                                                                break_long_words=False, break_on_hyphens=False)]
    return out


class _Dumper(yaml.SafeDumper):
    """Block style, except short lists of scalars (GPU ids, languages, extra args), which read better inline."""


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flow = all(isinstance(item, (int, float, str)) for item in items) and len(items) <= 16
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump(config: dict[str, Any]) -> str:
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def render(head: str, config: dict[str, Any]) -> str:
    return head + dump(config)


def all_configs() -> dict[Path, str]:
    """Every file under configs/paper/ and its exact text."""
    files: dict[Path, str] = {}
    for exp in EXPERIMENTS:
        for stem, strategy, single in variants(exp):
            if exp.folder == "math":
                gsm8k = replace(exp, prompts=GSM8K_PROMPTS, n_prompts=1319)  # the GSM8K test split
                for bench, variant in (("math500", exp), ("gsm8k", gsm8k)):
                    label = f"{bench}_{stem}"
                    head, config = build(variant, stem, strategy, single, label=label)
                    files[OUT / exp.folder / f"{label}.yaml"] = render(head, config)
            else:
                head, config = build(exp, stem, strategy, single)
                files[OUT / exp.folder / f"{stem}.yaml"] = render(head, config)
    files.update(math_verifier_configs())
    files[OUT / "scaling" / "alpaca_eval_small.yaml"] = scaling_config()
    fleet = fleet_variant()
    head, config = build(fleet, "toa", "toa", None, label="toa_fleet")
    files[OUT / fleet.folder / "toa_fleet.yaml"] = render(head, config)
    return files


def fleet_variant() -> Experiment:
    """UltraFeedback TOA with the reward as a fleet (ArmoRM on 4 GPUs, affinity) and each small model as two
    single-GPU vLLM replicas behind a vllm-router: the reward-bound run of the paper table, made generation-bound."""
    exp = next(e for e in EXPERIMENTS if e.folder == "ultrafeedback")
    return replace(
        exp, strategies=("toa",), routed=True, reward=ARMORM_FLEET, reward_gpus=ARMORM_FLEET_GPUS,
        reward_pairs_per_s=ARMORM_FLEET_PAIRS_PER_S, reward_where="for the by-hand ArmoRM reward servers",
        reward_note=f"ArmoRM over HTTP (kind http, /classify) from {ARMORM_FLEET_GPUS} tools/reward_server.py "
                    f"processes, one per GPU, at {ARMORM_FLEET_ENDPOINTS[0]}..{ARMORM_FLEET_ENDPOINTS[-1][-4:]}: "
                    "start them by hand first (docs/reproduce.md, 'Reward models'); each prompt's 160 pairs go to "
                    "one of them (reward.routing: affinity). The same data as toa.yaml, scored faster",
        extra_note="Each small model runs as two single-GPU vLLM servers behind a managed vllm-router (kind router, "
                   "policy consistent_hash on the X-Session-ID header toaflow sends), so one prompt's tree stays on "
                   "one replica's prefix cache (vLLM's own --data-parallel-size balancer ignores the cache).")


def scaling_config() -> str:
    """The scaling figure: 4 small models, ArmoRM, a 200-prompt AlpacaEval subset, every strategy and budget."""
    exp = replace(EXPERIMENTS[2], temperature=0.7, n_prompts=200, completion_tokens=500,
                  prompts={"source": "data/paper/alpaca_eval.jsonl", "id_field": "id", "limit": 200, "seed": 0})
    _, config = build(exp, "toa", "toa", None)
    config["name"] = "paper-scaling-alpaca-eval-small"
    config["search"]["model"] = "qwen2-7b"  # the figure's Random and PRS lines are Qwen2-7B's
    config["synthesis"] = {"prompts": exp.prompts}
    config.pop("training", None)
    config.pop("evaluation", None)
    budgets = [64, 128, 256, 384, 512, 640, 768]
    # toa and prs search every budget; random, ensemble, seq_refine and moa search once at the largest.
    generations = 200 * (2 * sum(budgets) + 4 * max(budgets))
    gpus = sum(a.gpus for a in SMALL) + ARMORM_GPUS
    throughput = sum(a.tokens_per_s * a.replicas for a in SMALL) * 0.7
    generate_h = generations * exp.completion_tokens / throughput / 3600
    score_h = generations / ARMORM_PAIRS_PER_S / 3600
    wall = max(generate_h, score_h)
    lines = [
        "Paper reproduction: the scaling figure (mean best and top-10 ArmoRM reward vs compute, one line per strategy).",
        "Reproduces: figures/scaling_alpaca_eval.png of the reference (toa_method.md section 8, 'Scaling curves'): "
        "4 small models, 200 AlpacaEval prompts, n per model 16..192 (N = 64..768).",
        f"GPUs: {gpus} x 80 GB (H100/A100): 4 small models TP1 x 2 replicas + ArmoRM on 1 GPU in the sampling process.",
        f"Expected cost: ~{wall * gpus:,.0f} GPU-hours (~{wall:,.1f} h wall) for --budgets "
        f"{','.join(map(str, budgets))}. Estimate: toa and prs search every budget, random/ensemble/seq_refine/moa "
        f"once at 768 (smaller budgets are cut from it): {generations:,} generations x ~500 completion tokens at "
        f"~{throughput:,.0f} tok/s = {generate_h:,.1f} h; scoring at ~{ARMORM_PAIRS_PER_S:.0f} pairs/s = "
        f"{score_h:,.1f} h (reward-bound); x all {gpus} reserved GPUs. --budgets 16,40,80,160 costs about 1/5 of it.",
        "Run: toa scaling --config configs/paper/scaling/alpaca_eval_small.yaml --budgets 64,128,256,384,512,640,768 "
        "--run-id paper-scaling",
        "Single-model baselines (random, prs) use qwen2-7b (search.model), as the figure's Random and PRS lines; "
        "the paper also gave them K x the samples: run them again with --budgets multiplied by 4 to compare at "
        "equal generations per model.",
        "Servers are started and stopped by the run (servers.managed); set HF_TOKEN for the gated models.",
        "Generated by tools/gen_paper_configs.py: edit that script, not this file.",
    ]
    return render("\n".join(f"# {line}" for line in _wrap(lines)) + "\n", config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is stale or missing")
    parser.add_argument("--costs", action="store_true", help="print the GPUs and cost of every config as a markdown table")
    args = parser.parse_args(argv)
    files = all_configs()
    if args.costs:
        print("| config | GPUs | wall h | GPU-h |\n|---|---|---|---|")
        for path, text in files.items():
            gpus = re.search(r"^# GPUs: (\d+)", text, re.M)
            est = re.search(r"~([\d,]+) GPU-hours \(~([\d.,]+) h wall\)", text)
            print(f"| `{path.relative_to(REPO)}` | {gpus[1]} | {est[2]} | {est[1]} |")
        return 0
    stale = [path for path, text in files.items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    extra = sorted(set(OUT.rglob("*.yaml")) - set(files)) if OUT.is_dir() else []
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(REPO)}", file=sys.stderr)
        for path in extra:
            print(f"not generated (delete it or add it here): {path.relative_to(REPO)}", file=sys.stderr)
        return 1 if stale or extra else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    print(f"{len(files)} configs, {len(stale)} (re)written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
