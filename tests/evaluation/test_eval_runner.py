"""Judging and scoring one benchmark end to end with scripted models: files written, metrics, failures, guard."""
from __future__ import annotations

import asyncio
import json

import pytest

from evaluation.circularity import check_circularity
from evaluation.config import BenchmarkConfig, EvaluationConfig, JudgesConfig
from evaluation.generation import ModelUnderTest
from evaluation.judges.reward_judge import judge_with_reward
from evaluation.report import comparison_png, markdown_report
from evaluation.runner import evaluate_model_on_benchmark
from evaluation.scores import gate_table, load_scores, previous_scores
from infra.promotion import decide_promotion
from infra.store import open_store
from tests.evaluation.fake_judge import FakeJudge, completion
from tests.evaluation.scripted import LengthReward, ScriptedChatModel
from toa_core.config import ModelConfig, RewardConfig
from toa_core.interfaces import RewardError

TINY_REWARD = {"kind": "hf_classifier", "model": "builtin:tiny-reward"}


def solver(prompt: str) -> str:
    """Answers math with a boxed number (right for 'quarter of' problems only), translations by echo, chat long."""
    if "\\boxed" in prompt:
        return "Working... \\boxed{46}" if "quarter" in prompt else "I think it is \\boxed{0}"
    if "Translate" in prompt:
        return "The weather is good today."
    return "A thorough answer. " * 30


def model_under_test() -> ModelUnderTest:
    return ModelUnderTest(ModelConfig(name="model_under_test", backend="transformers", model="scripted"), "scripted-v1")


def run(store, config: EvaluationConfig, run_id: str, chat_model, reward=None, judge=None, synthesis=TINY_REWARD):
    return asyncio.run(evaluate_model_on_benchmark(
        store, f"runs/{run_id}/eval/{config.benchmarks[0].name}", config.benchmarks[0], config, model_under_test(),
        run_id=run_id, synthesis_reward=synthesis, chat_model=chat_model, reward_model=reward, judge_client=judge))


def test_reward_judge_records_failures_instead_of_zero():
    rows = [{"item_id": "a", "messages": [], "output": "long answer here", "baseline": "short"},
            {"item_id": "b", "messages": [], "output": "x", "baseline": "BROKEN baseline"},
            {"item_id": "c", "messages": [], "output": "same", "baseline": "same"},
            {"item_id": "d", "messages": [], "output": "no baseline", "baseline": None}]
    judgments = asyncio.run(judge_with_reward(LengthReward(fail_on="BROKEN"), rows, batch_size=3))
    by_id = {j["item_id"]: j for j in judgments}
    assert by_id["a"]["preference"] == 1.0
    assert by_id["b"]["preference"] is None and by_id["b"]["reward_model"] == 0.01
    assert by_id["b"]["reward_baseline"] is None and "RewardError" in by_id["b"]["error"]
    assert by_id["c"]["preference"] == 0.5
    assert by_id["d"]["preference"] is None and by_id["d"]["reward_model"] == pytest.approx(0.11)


def test_reward_judge_keeps_the_scores_a_partly_failed_batch_carries():
    """A reward model that names the failed pairs of a batch (PairErrors) is not asked again pair by pair: the other
    pairs keep the scores the batch already gave, the failed one is that item's recorded error."""
    from toa_core.interfaces import PairErrors

    class NamingReward(LengthReward):
        single_calls = 0

        async def score(self, messages, response):
            NamingReward.single_calls += 1
            return await super().score(messages, response)

        async def score_batch(self, pairs):
            outcomes = []
            for _, response in pairs:
                try:
                    outcomes.append(await LengthReward.score(self, [], response))
                except RewardError as error:
                    outcomes.append(error)
            return PairErrors.collect(self.name, outcomes)

    rows = [{"item_id": "a", "messages": [], "output": "long answer here", "baseline": "short"},
            {"item_id": "b", "messages": [], "output": "x", "baseline": "BROKEN baseline"}]
    judgments = asyncio.run(judge_with_reward(NamingReward(fail_on="BROKEN"), rows, batch_size=4))
    by_id = {j["item_id"]: j for j in judgments}
    assert NamingReward.single_calls == 0
    assert by_id["a"]["preference"] == 1.0 and by_id["a"]["error"] is None
    assert by_id["b"]["reward_model"] == 0.01 and by_id["b"]["reward_baseline"] is None
    assert "RewardError: scoring server returned 500" in by_id["b"]["error"]


def test_mini_benchmark_scored_with_every_judge(tmp_path):
    store = open_store(str(tmp_path / "store"))
    config = EvaluationConfig(benchmarks=[BenchmarkConfig(name="mini", kind="toaflow_mini")],
                              judges={"reward": TINY_REWARD}, bootstrap_samples=100)
    chat = ScriptedChatModel(solver, fail_on="capital of Australia")

    def script(body):  # a judge that prefers whichever answer is longer
        text = body["messages"][0]["content"]
        a, b = text.split("### Answer A", 1)[1].split("### Answer B", 1)
        return 200, completion("A" if len(a) > len(b) else "B")

    with FakeJudge(script) as fake:
        from evaluation.judges.llm_judge import HttpJudgeClient
        config = config.model_copy(update={"judges": JudgesConfig(reward=RewardConfig(**TINY_REWARD),
                                                                  llm_judge={"endpoint": fake.endpoint, "model": "j"})})
        judge = HttpJudgeClient(config.judges.llm_judge)
        scores = run(store, config, "r1", chat, reward=LengthReward(), judge=judge)
        asyncio.run(judge.aclose())

    prefix = "runs/r1/eval/mini"
    assert {k.rsplit("/", 1)[1] for k in store.list(prefix + "/")} >= {
        "outputs.jsonl", "judgments.jsonl", "scores.json", "model_outputs.json"}
    metrics = scores["metrics"]
    # 30 chat items, one failed generation: kept in n as a loss, and counted
    assert metrics["rm_win_rate"]["n"] == 30 and metrics["rm_win_rate"]["n_failed"] == 1
    assert 90 < metrics["rm_win_rate"]["value"] <= 100 * 29 / 30  # the long answers win; the failure is a loss
    assert metrics["rm_win_rate"]["extra"]["losses"] >= 1
    assert metrics["rm_mean_reward"]["n"] == 29 and metrics["rm_mean_reward"]["n_failed"] == 1
    assert metrics["rm_mean_reward"]["n_excluded"] == 1
    assert metrics["judge_win_rate"]["value"] > 90
    assert metrics["judge_lc_win_rate"]["value"] < metrics["judge_win_rate"]["value"]
    assert "judge_bt_score" not in metrics  # only arena_hard benchmarks have a Bradley-Terry score
    assert metrics["math_accuracy"]["value"] == pytest.approx(100 / 8) and metrics["math_accuracy"]["n"] == 8
    assert metrics["bleu"]["n"] == 10 and metrics["chrf"]["value"] > 0
    assert "bleu_de_en" in metrics
    assert scores["diagnostics"]["generation_failures"] == 1
    assert scores["diagnostics"]["llm_judge"]["games"] == 58
    assert scores["circularity"]["circular"] is True             # same tiny reward guided synthesis
    outputs = [json.loads(line) for line in store.read_text(f"{prefix}/outputs.jsonl").splitlines()]
    failed = [row for row in outputs if row["error"]]
    assert len(failed) == 1 and failed[0]["output"] is None
    assert "api_key" not in json.dumps(scores["judges"]) or scores["judges"]["llm_judge"]["api_key_env"] is None

    # The promotion gate reads these numbers as they are.
    table = gate_table(load_scores(store, "r1"))
    assert table["mini.math_accuracy"]["n"] == 8
    decision = decide_promotion(table, table, ["mini.rm_win_rate", "mini.bleu"], min_scored_items=8)  # a tiny benchmark
    assert decision.promote


def test_outputs_are_reused_on_a_rerun_and_previous_run_is_found(tmp_path):
    store = open_store(str(tmp_path / "store"))
    config = EvaluationConfig(benchmarks=[BenchmarkConfig(name="mini", kind="toaflow_mini", limit=6)],
                              bootstrap_samples=50)
    first = ScriptedChatModel(solver)
    run(store, config, "r1", first)
    assert first.calls == 6
    again = ScriptedChatModel(solver)
    run(store, config, "r1", again)
    assert again.calls == 0                                       # same model, same items: reused
    changed = config.model_copy(update={"generation": config.generation.model_copy(update={"max_tokens": 99})})
    regenerated = ScriptedChatModel(solver)
    run(store, changed, "r1", regenerated)
    assert regenerated.calls == 6                                 # other sampling settings: generated again
    run(store, config, "r2", ScriptedChatModel(solver))
    previous = previous_scores(store, "r2", "mini")
    assert previous["run_id"] == "r1"
    assert previous_scores(store, "r3", "mini")["run_id"] in ("r1", "r2")
    current = load_scores(store, "r2")["mini"]
    report = markdown_report(current, previous, None)
    assert "| math_accuracy |" in report and "Previous evaluated run: `r1`" in report
    png = comparison_png(current, previous, current)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_circularity_guard():
    same = JudgesConfig(reward=RewardConfig(kind="hf_classifier", model="/models/Skywork-Reward/"))
    assert check_circularity(same, {"kind": "http", "model": "skywork-reward", "endpoints": ["http://x/v1"]})["circular"]
    other = JudgesConfig(reward=RewardConfig(kind="hf_classifier", model="ArmoRM"))
    assert not check_circularity(other, RewardConfig(kind="hf_classifier", model="Skywork-Reward"))["circular"]
    judge = JudgesConfig(llm_judge={"endpoint": "http://j/v1", "model": "SmolLM2"})
    verdict = check_circularity(judge, RewardConfig(kind="llm_judge", model="builtin:smollm2"))
    assert verdict["circular"] and "LLM judge" in verdict["reasons"][0]
    kiwi = JudgesConfig(comet_kiwi_model="Unbabel/wmt22-cometkiwi-da")
    assert check_circularity(kiwi, RewardConfig(kind="plugin", callable="toa_core.rewards.comet:kiwi"))["circular"]
    assert check_circularity(JudgesConfig(), None)["circular"] is False
    # a verifier is ground truth, not a judge to please; only the reward model ranking beside it can be circular
    assert not check_circularity(same, {"kind": "verifier"})["circular"]
    ranked = {"kind": "verifier", "ranker": {"kind": "hf_classifier", "model": "Skywork-Reward"}}
    assert check_circularity(same, ranked)["circular"]


DATA = __import__("pathlib").Path(__file__).parent / "data"


def test_arena_hard_benchmark_judged_with_its_protocol_and_earlier_runs_as_players(tmp_path):
    store = open_store(str(tmp_path / "store"))
    bench = BenchmarkConfig(name="ah", kind="arena_hard", source=str(DATA / "arena_hard_v0.1_question.jsonl"),
                            baseline=str(DATA / "arena_hard_v0.1_gpt-4-0314.jsonl"))

    def script(body):  # reasons, then a verdict: the answer that says "good" wins strongly
        user = body["messages"][-1]["content"]
        a = user.split("[Answer of assistant A: begin]", 1)[1].split("[Answer of assistant A: end]", 1)[0]
        return 200, completion("Step by step... " + ("[[A>>B]]" if "good" in a else "[[B>>A]]"
                                                     if "good" in user else "[[A=B]]"))

    with FakeJudge(script) as fake:
        from evaluation.judges.llm_judge import HttpJudgeClient
        config = EvaluationConfig(benchmarks=[bench], bootstrap_samples=50,
                                  judges=JudgesConfig(llm_judge={"endpoint": fake.endpoint, "model": "j"}))
        judge = HttpJudgeClient(config.judges.llm_judge)
        first = run(store, config, "r0", ScriptedChatModel(lambda p: "a plain answer"), judge=judge)
        second = run(store, config, "r1", ScriptedChatModel(lambda p: "a good answer"), judge=judge)
        asyncio.run(judge.aclose())
        requests = fake.requests
    assert all(body["max_tokens"] == 4096 and body["messages"][0]["role"] == "system" for body in requests)
    assert first["metrics"]["judge_bt_score"]["value"] == pytest.approx(50.0)
    bt = second["metrics"]["judge_bt_score"]
    assert bt["ci_level"] == 0.9 and bt["value"] > 95
    assert set(bt["extra"]["players"]) == {"baseline", "this model", "run r0"}  # the earlier run is a player
    assert bt["extra"]["style_control"] is False  # v0.1
    assert second["arena_key"] == first["arena_key"]
    rows = [json.loads(line) for line in store.read_text("runs/r1/eval/ah/judgments.jsonl").splitlines()]
    assert rows[0]["judge"] == "arena_hard" and rows[0]["labels"] == ["B>>A", "A>>B"]


def test_alpaca_eval_lc_offline_without_difficulty_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = open_store(str(tmp_path / "store"))
    bench = BenchmarkConfig(name="ae", kind="alpaca_eval", source=str(DATA / "alpaca_eval_baseline_outputs.json"))
    config = EvaluationConfig(benchmarks=[bench], judges={"reward": TINY_REWARD}, bootstrap_samples=50)
    with pytest.raises(Exception, match="instruction_difficulty.csv .* HF Hub is unreachable; set "
                                        "evaluation.length_control.difficulty"):
        run(store, config, "r1", ScriptedChatModel(lambda p: "an answer"), reward=LengthReward())
    # a difficulty file supplied in the config is used, and its source is recorded
    difficulty = tmp_path / "difficulty.csv"
    difficulty.write_text("index,instruction_difficulty\n" + "".join(f"{i},{0.1 * i}\n" for i in range(4)))
    config = config.model_copy(update={"length_control": config.length_control.model_copy(
        update={"difficulty": str(difficulty)})})
    scores = run(store, config, "r1", ScriptedChatModel(lambda p: "an answer"), reward=LengthReward())
    lc = scores["metrics"]["rm_lc_win_rate"]
    assert lc["extra"]["difficulty"] == str(difficulty), lc
    assert lc["extra"]["regularisation"].startswith("length prior")


def test_official_difficulty_and_gamed_rows_cached_in_the_store_are_used(tmp_path, monkeypatch):
    from evaluation.alpaca_eval_files import CACHE_PREFIX, load_length_control
    from evaluation.config import LengthControlConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = open_store(str(tmp_path / "store"))
    store.write_text(f"{CACHE_PREFIX}/instruction_difficulty.csv",
                     "index,instruction_difficulty\n0,-0.5\n1,0.25\n2,1.5\n")
    store.write_text(f"{CACHE_PREFIX}/df_gamed.csv", "model,index,preference,std_delta_len,instruction_difficulty,"
                     "not_gamed_baseline\nv,0,1.8,-1.2,-0.5,False\nc,0,1.3,0.9,-0.5,False\nv,1,,0.1,0.25,False\n")
    inputs = load_length_control(store, LengthControlConfig(), needs_difficulty=True)
    assert inputs.difficulty == {0: -0.5, 1: 0.25, 2: 1.5}
    assert inputs.difficulty_source == store.uri(f"{CACHE_PREFIX}/instruction_difficulty.csv")
    assert list(inputs.gamed.preference) == pytest.approx([0.8, 0.3])  # AlpacaEval's 1..2 scale read as 0..1
    assert inputs.gamed.source == store.uri(f"{CACHE_PREFIX}/df_gamed.csv")
