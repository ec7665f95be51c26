"""Every config under configs/paper/ validates as a RunConfig and carries the paper's settings
(toa_method.md sections 1.12 and 3): models by hub id, reward, budget, strategy hyperparameters, managed servers."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from runconfig import load_config

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper"
FILES = sorted(PAPER.rglob("*.yaml"))

LARGE = {"meta-llama/Llama-3.1-70B-Instruct", "mistralai/Mistral-Large-Instruct-2407", "Qwen/Qwen2-72B-Instruct",
         "mistralai/Mixtral-8x22B-Instruct-v0.1", "alpindale/WizardLM-2-8x22B"}
SMALL = {"meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2-7B-Instruct", "mistralai/Mistral-7B-Instruct-v0.2",
         "01-ai/Yi-1.5-9B-Chat-16K"}
ARMORM = "RLHFlow/ArmoRM-Llama3-8B-v0.1"
STRATEGIES = {"toa", "random", "ensemble", "prs", "seq_refine", "moa"}  # the paper's (not ab_mcts)


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being built
    spec.loader.exec_module(module)
    return module


def configs_in(folder: str):
    return [(path, load_config(path)) for path in FILES if path.parent.name == folder]


def test_the_committed_files_are_what_the_generator_writes():
    generated = _load_tool("gen_paper_configs").all_configs()
    assert set(generated) == set(FILES), "run tools/gen_paper_configs.py and commit configs/paper/"
    for path, text in generated.items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run tools/gen_paper_configs.py"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PAPER)))
def test_config_validates_and_says_what_it_reproduces(path):
    cfg = load_config(path)
    head = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    text = "\n".join(head)
    assert path.read_text(encoding="utf-8").startswith("# "), "the header comment comes first"
    for needle in ("Reproduces:", "GPUs:", "GPU-hours", "Estimate:", "Run: toa "):
        assert needle in text, f"{path}: header lacks {needle!r}"
    # Managed servers: every policy model (and an HTTP reward) is served by a declared server, by hub id.
    assert cfg.servers.managed is True
    servers = {spec.name: spec for spec in cfg.servers.servers}
    used_gpus: list[int] = []
    for spec in servers.values():
        if spec.kind == "router":  # a vllm-router in front of declared replicas: no GPU of its own
            assert spec.replicas and set(spec.replicas) <= set(servers) and not spec.gpus, spec.name
            continue
        assert spec.kind in ("vllm", "vllm_reward") and spec.gpus, spec.name
        args = spec.extra_args
        data_parallel = int(args[args.index("--data-parallel-size") + 1]) if "--data-parallel-size" in args else 1
        assert len(spec.gpus) == spec.tensor_parallel_size * data_parallel, spec.name
        used_gpus += spec.gpus
    assert len(used_gpus) == len(set(used_gpus)), "two servers share a GPU"
    gpus_in_header = int(text.split("GPUs: ", 1)[1].split(" ", 1)[0])
    assert gpus_in_header >= len(used_gpus)
    for model in cfg.models:
        assert model.backend == "openai" and model.served_by in servers, model.name
        served = servers[model.served_by]
        if served.kind == "router":
            served = servers[served.replicas[0]]
        assert served.model == model.model
        assert "/" in model.model, f"{model.name}: name models by hub id"
    if cfg.reward.kind == "http":
        assert cfg.reward.served_by in servers or cfg.reward.endpoints
    # Shared paper settings (section 3).
    search = cfg.search
    assert search.budget == 160
    assert (search.top_p, search.max_tokens, search.topk_child) == (1.0, 2048, 1)
    assert search.strategy in STRATEGIES
    # The paper's search and ranking: sequential trees, fixed budgets, the 30th-ranked response as rejected.
    assert search.rollouts_per_tree == 1 and search.adaptive.enabled is False
    ranking = cfg.synthesis.ranking
    if path.parent.name != "scaling":  # the scaling figure builds no datasets
        assert (ranking.dpo_rejected_rank, ranking.dpo_rejected_quantile, ranking.rejected_min_spread,
                ranking.rejected_lineage) == (30, None, 0.0, "any")
    if search.strategy in ("random", "prs"):
        assert len(cfg.models) == 1 and search.model == cfg.models[0].name


def test_alpaca_eval_configs_match_the_paper():
    configs = configs_in("alpaca_eval")
    assert {cfg.search.strategy for _, cfg in configs} == STRATEGIES
    for path, cfg in configs:
        hub_ids = {m.model for m in cfg.models}
        if cfg.search.strategy in ("random", "prs"):
            assert hub_ids <= {"meta-llama/Llama-3.1-70B-Instruct", "mistralai/Mistral-Large-Instruct-2407"}
        else:
            assert hub_ids == LARGE, path
        assert (cfg.reward.kind, cfg.reward.model, cfg.reward.head, cfg.reward.trust_remote_code) == \
            ("hf_classifier", ARMORM, "score", True)
        assert (cfg.search.task, cfg.search.tau, cfg.search.alpha, cfg.search.temperature) == ("chat", 0.1, 0.01, 0.7)
        assert cfg.search.width == 53 == 5 * 32 // 3  # floor(K*n/3), K=5, n=32
        assert cfg.search.moa_layers == 4
    # Random and PRS each with Llama-3.1-70B and with Mistral-Large (two table rows each).
    singles = sorted((cfg.search.strategy, cfg.models[0].model) for _, cfg in configs if len(cfg.models) == 1)
    assert len(singles) == 4 and len(set(singles)) == 4


def test_wmt22_configs_match_the_paper():
    configs = configs_in("wmt22")
    assert {cfg.search.strategy for _, cfg in configs} == STRATEGIES
    for path, cfg in configs:
        if cfg.search.strategy not in ("random", "prs"):
            assert {m.model for m in cfg.models} == LARGE
        assert (cfg.search.task, cfg.search.tau, cfg.search.alpha, cfg.search.temperature) == \
            ("translation", 1.0, 0.05, 0.7)
        assert cfg.search.moa_layers == 3  # WMT's MoA has 3 layers
        assert "cometkiwi" in (cfg.reward.model or "").lower()
        # Reference-free (Kiwi, the paper's metric) and reference-based (COMET, BLEU/chrF always) side by side.
        judges = cfg.evaluation.judges
        assert judges.comet is True and judges.comet_model == "Unbabel/wmt22-comet-da"
        assert judges.comet_kiwi_model == "Unbabel/wmt23-cometkiwi-da-xxl"
        assert sorted(cfg.evaluation.benchmarks[0].languages) == ["cs", "de", "is", "ru", "zh"]


def test_ultrafeedback_configs_match_the_paper():
    configs = configs_in("ultrafeedback")
    assert {cfg.search.strategy for _, cfg in configs} == STRATEGIES
    for path, cfg in configs:
        if cfg.search.strategy not in ("random", "prs"):
            assert {m.model for m in cfg.models} == SMALL
        else:
            assert cfg.models[0].model == "meta-llama/Llama-3.1-8B-Instruct"
        assert cfg.reward.model == ARMORM
        assert (cfg.search.tau, cfg.search.alpha, cfg.search.temperature) == (0.1, 0.01, 0.8)
        assert cfg.search.width == 53  # floor(4*40/3)
        ranking = cfg.synthesis.ranking
        assert ranking.dpo_rejected_rank == 30 and ranking.dpo_rejected_quantile is None
        assert (ranking.rejected_min_spread, ranking.rejected_lineage) == (0.0, "any")  # the paper's rule, not ours
        training = cfg.training
        assert training.common.base_model == "meta-llama/Llama-3.1-8B-Instruct"
        dpo = training.dpo
        assert dpo.learning_rate == 5e-7
        for stage in (training.sft, dpo):
            assert stage.per_device_batch_size * stage.grad_accum * training.common.num_processes == 32
        assert dpo.enabled is (cfg.search.strategy == "toa")  # the table has DPO on TOA's data only
        assert {b.kind for b in cfg.evaluation.benchmarks} == {"alpaca_eval", "arena_hard"}


def test_math_configs_match_the_paper():
    configs = [(path, cfg) for path, cfg in configs_in("math") if not path.stem.endswith("_verifier")]
    assert {cfg.search.strategy for _, cfg in configs} == STRATEGIES
    assert {path.name.split("_")[0] for path, _ in configs} == {"math500", "gsm8k"}
    for path, cfg in configs:
        k = len(cfg.models)
        assert (cfg.search.tau, cfg.search.alpha) == (1.0, 0.1)
        if cfg.search.strategy not in ("random", "prs"):
            assert cfg.search.width == k * (160 // k) // 2 == 80  # floor(K*n/2)
        assert cfg.reward.model == "Qwen/Qwen2.5-Math-RM-72B" and cfg.reward.kind == "http"
        assert cfg.synthesis.prompts.system_prompt and "boxed" in cfg.synthesis.prompts.system_prompt


def test_math_verifier_variants_check_gold_answers_without_a_reward_server():
    verifiers = {path.stem: cfg for path, cfg in configs_in("math") if path.stem.endswith("_verifier")}
    assert set(verifiers) == {"math500_toa_verifier", "gsm8k_toa_verifier"}
    paper = {stem: load_config(PAPER / "math" / f"{stem.removesuffix('_verifier')}.yaml") for stem in verifiers}
    for stem, cfg in verifiers.items():
        assert cfg.reward.kind == "verifier" and cfg.reward.ranker is None
        assert cfg.synthesis.prompts.answer_field == "answer"
        assert not [s for s in cfg.servers.servers if s.kind == "vllm_reward"]  # no 72B reward server
        same = paper[stem]
        assert [m.model for m in cfg.models] == [m.model for m in same.models]  # the same four agents
        assert (cfg.search.budget, cfg.search.alpha, cfg.search.width) == (same.search.budget, same.search.alpha,
                                                                           same.search.width)
        assert cfg.search.tau == 0.25  # 0/1 rewards (documented in docs/reproduce.md)
        assert cfg.synthesis.prompts.source == same.synthesis.prompts.source
        assert "Math with a verifier" in (PAPER / "math" / f"{stem}.yaml").read_text()


# max_position_embeddings in each model's published config.json (what vLLM derives its max_model_len limit from).
POSITIONS = {
    "meta-llama/Llama-3.1-8B-Instruct": 131072, "meta-llama/Llama-3.1-70B-Instruct": 131072,
    "Qwen/Qwen2-7B-Instruct": 32768, "Qwen/Qwen2-72B-Instruct": 32768, "mistralai/Mistral-7B-Instruct-v0.2": 32768,
    "01-ai/Yi-1.5-9B-Chat-16K": 16384, "mistralai/Mistral-Large-Instruct-2407": 131072,
    "mistralai/Mixtral-8x22B-Instruct-v0.1": 65536, "alpindale/WizardLM-2-8x22B": 65536,
    "Qwen/Qwen2.5-Math-RM-72B": 4096,
}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PAPER)))
def test_no_server_asks_for_more_context_than_its_models_config_allows(path):
    cfg = load_config(path)
    for spec in cfg.servers.servers:
        if spec.kind == "router":
            continue
        assert spec.max_model_len is not None and spec.max_model_len <= POSITIONS[spec.model], spec.name
        assert cfg.search.max_tokens < spec.max_model_len, spec.name  # room for the prompt too
        if cfg.reward.served_by == spec.name:  # what the reward client truncates pairs to fits the server
            assert cfg.reward.max_length <= spec.max_model_len


def test_math_reward_server_fits_qwen_math_rm_positions():
    for path, cfg in configs_in("math"):
        servers = [s for s in cfg.servers.servers if s.kind == "vllm_reward"]
        if path.stem.endswith("_verifier"):
            assert not servers  # the verifier variants score with gold answers, no reward model
            continue
        (rm,) = servers
        assert rm.model == "Qwen/Qwen2.5-Math-RM-72B" and rm.max_model_len <= 4096, path
        assert cfg.reward.max_length <= rm.max_model_len, path


def test_fleet_variant_serves_armorm_on_more_gpus_and_routes_by_session():
    """ultrafeedback/toa_fleet.yaml: the same TOA run, ArmoRM on 4 reward servers (affinity) and a router per model."""
    path = PAPER / "ultrafeedback" / "toa_fleet.yaml"
    cfg = load_config(path)
    assert (cfg.reward.kind, cfg.reward.model, cfg.reward.routing) == ("http", ARMORM, "affinity")
    assert len(cfg.reward.endpoints) == 4
    routers = [s for s in cfg.servers.servers if s.kind == "router"]
    assert len(routers) == 4 and all(r.policy == "consistent_hash" and len(r.replicas) == 2 for r in routers)
    assert {m.served_by for m in cfg.models} == {r.name for r in routers}
    gen = _load_tool("gen_paper_configs")
    assert gen.reward_fleet_rate(25.0, 4) == 100.0
    assert gen.reward_fleet_rate(25.0, 4, prompt_share=0.25, prompt_hit=1.0) == pytest.approx(133.3, abs=0.1)
    fleet_wall = float(path.read_text().split("h wall)")[0].rsplit("~", 1)[1])
    single = PAPER / "ultrafeedback" / "toa.yaml"
    single_wall = float(single.read_text().split("h wall)")[0].rsplit("~", 1)[1])
    assert fleet_wall < single_wall  # no longer reward-bound


def test_scaling_config_is_the_small_pool_on_200_alpaca_eval_prompts():
    (path, cfg), = configs_in("scaling")
    assert {m.model for m in cfg.models} == SMALL
    assert cfg.reward.model == ARMORM
    assert cfg.synthesis.prompts.limit == 200
    assert "toa scaling --config configs/paper/scaling/alpaca_eval_small.yaml" in path.read_text()


def test_export_best_keeps_the_highest_reward_and_never_a_failed_candidate(tmp_path):
    """tools/export_best.py: best-of-N per prompt from a run's samples, references joined by id, AlpacaEval file."""
    import json

    from infra.store import open_store
    from toa_core.candidate_table import candidates_to_table, table_to_parquet_bytes
    from toa_core.ingest import write_prompts
    from toa_core.records import Candidate, Prompt

    store = open_store(str(tmp_path / "store"))
    prompts = [Prompt.from_messages([{"role": "user", "content": f"Translate {i}"}], source_id=f"de-{i}") for i in range(3)]
    write_prompts(store, "r", prompts)

    def cand(prompt, index, text, reward, error=None):
        return Candidate(prompt_id=prompt.prompt_id, candidate_id=f"{prompt.prompt_id}-{index:04d}", parent_id=None,
                         kind="fresh", model=f"m{index}", depth=1, text=text, reward=reward, reward_norm=reward,
                         prompt_tokens=1, completion_tokens=1, latency_s=0.0, finish_reason="stop", strategy="toa",
                         seed=index, error=error)

    rows = [cand(prompts[0], 0, "low", 0.1), cand(prompts[0], 1, "high", 0.9), cand(prompts[0], 2, "tie", 0.9),
            cand(prompts[0], 3, None, None, error="timeout"),
            cand(prompts[1], 0, None, None, error="timeout"), cand(prompts[1], 1, "unscored", None, error="reward: x"),
            cand(prompts[2], 0, "only", -2.0)]
    store.write_bytes("runs/r/samples/shard-00000.parquet", table_to_parquet_bytes(candidates_to_table(rows)))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"store": {"root": str(tmp_path / "store")},
                                      "models": [{"name": "a", "backend": "transformers", "model": "builtin:tiny-llama"}],
                                      "reward": {"kind": "plugin", "callable": "x:y"}}))
    references = tmp_path / "refs.jsonl"
    references.write_text("".join(json.dumps({"id": f"de-{i}", "reference": f"ref {i}"}) + "\n" for i in range(3)))
    exporter = _load_tool("export_best")
    out = tmp_path / "best.jsonl"
    assert exporter.main(["--config", str(config), "--run-id", "r", "--out", str(out), "--references", str(references),
                          "--alpaca-eval", str(tmp_path / "ae.json")]) == 0
    best = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(b["id"], b["output"], b["model"], b["reference"]) for b in best] == [
        ("de-0", "high", "m1", "ref 0"),   # the higher reward; on a tie the earlier generation
        ("de-1", None, None, "ref 1"),     # every candidate failed: no output, not a 0-scored one
        ("de-2", "only", "m0", "ref 2")]
    assert (best[0]["candidates"], best[0]["failed"]) == (3, 1)
    alpaca = json.loads((tmp_path / "ae.json").read_text())
    assert alpaca[0] == {"instruction": "Translate 0", "output": "high", "generator": "r", "dataset": "toaflow"}


COMET_STUB = '''
class _Out:
    def __init__(self, scores):
        self.scores = scores


class _Model:
    def predict(self, data, batch_size, gpus, progress_bar):
        if any(d["mt"] == "boom" for d in data):
            raise RuntimeError("stub failure")
        return _Out([len(d["mt"]) / 100 + (0.5 if d["src"] == "Hallo Welt" else 0.0) for d in data])


def download_model(name):
    return "/stub/" + name


def load_from_checkpoint(path):
    return _Model()
'''


def test_kiwi_server_speaks_the_protocol_of_the_http_reward(tmp_path):
    """tools/kiwi_server.py (COMET-Kiwi for the WMT configs) scores (source, translation) pairs sent by
    toa_core.rewards.http; a scoring failure is an error for the client, never a 0.0. COMET is stubbed."""
    import asyncio
    import os
    import subprocess

    from tests.fixtures.prefect import free_port, stop_process
    from tests.fixtures.waiting import wait_healthy
    from toa_core.config import RetryConfig
    from toa_core.interfaces import RewardError
    from toa_core.rewards.http import HTTPReward

    (tmp_path / "stub" / "comet").mkdir(parents=True)
    (tmp_path / "stub" / "comet" / "__init__.py").write_text(COMET_STUB)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stub"), "HOST": "127.0.0.1", "PORT": str(port)}
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, str(REPO / "tools" / "kiwi_server.py")], env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(server, f"http://127.0.0.1:{port}/health", tmp_path / "server.log", 60, "kiwi server")

        async def score():
            reward = HTTPReward([f"http://127.0.0.1:{port}/v1"], "Unbabel/wmt22-cometkiwi-da", api="classify",
                                retry=RetryConfig(max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02))
            try:
                scores = await reward.score_batch([([{"role": "user", "content": "Hallo Welt"}], "Hello world"),
                                                   ([{"role": "user", "content": "x"}], "abc")])
                with pytest.raises(RewardError):
                    await reward.score([{"role": "user", "content": "x"}], "boom")
                return scores
            finally:
                await reward.aclose()

        assert asyncio.run(score()) == pytest.approx([0.61, 0.03])
    finally:
        stop_process(server)
        log.close()
