"""Benchmark loaders on small files in the official formats (tests/evaluation/data/, written for these tests)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.benchmarks import MINI_FILE, BenchmarkError, load_benchmark
from evaluation.config import BenchmarkConfig, EvaluationConfig

DATA = Path(__file__).parent / "data"


def bench(**kwargs) -> BenchmarkConfig:
    return BenchmarkConfig(name=kwargs.pop("name", "b"), **kwargs)


def test_alpaca_eval_instructions_with_baseline_file():
    b = load_benchmark(bench(kind="alpaca_eval", source=str(DATA / "alpaca_eval_instructions.jsonl"),
                             baseline=str(DATA / "alpaca_eval_baseline_outputs.json")))
    assert [i.item_id for i in b.items] == ["0", "1", "2", "3"]
    assert b.items[1].instruction == "Name two moons of Jupiter."
    assert b.items[1].baseline_output == "Io and Europa."
    assert {i.task for i in b.items} == {"chat"}


def test_alpaca_eval_baseline_outputs_file_is_its_own_source():
    # model_outputs.json carries the instructions and the baseline's answers (as the official eval set does)
    b = load_benchmark(bench(kind="alpaca_eval", source=str(DATA / "alpaca_eval_baseline_outputs.json")))
    assert len(b.items) == 4 and b.items[3].baseline_output == "Ash."
    assert b.items[0].metadata["baseline_generator"] == "gpt4_1106_preview"


def test_alpaca_eval_baseline_missing_an_instruction_is_an_error(tmp_path):
    partial = tmp_path / "partial.json"
    rows = json.loads((DATA / "alpaca_eval_baseline_outputs.json").read_text())[:2]
    partial.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkError, match="no baseline output for 2 instruction"):
        load_benchmark(bench(kind="alpaca_eval", source=str(DATA / "alpaca_eval_instructions.jsonl"),
                             baseline=str(partial)))


@pytest.mark.parametrize("answers", ["arena_hard_v0.1_gpt-4-0314.jsonl", "arena_hard_old_answers.jsonl"])
def test_arena_hard_v01_questions_and_baseline_answers(answers):
    b = load_benchmark(bench(kind="arena_hard", source=str(DATA / "arena_hard_v0.1_question.jsonl"),
                             baseline=str(DATA / answers)))
    assert [i.item_id for i in b.items] == ["q1", "q2", "q3"]
    assert b.items[0].baseline_output == "SELECT COUNT(*) FROM users;"
    assert b.items[1].metadata["cluster"] == "Networking"


def test_arena_hard_v2_with_two_baselines():
    b = load_benchmark(bench(kind="arena_hard", version="v2.0", source=str(DATA / "arena_hard_v2.0_question.jsonl"),
                             baseline=[str(DATA / "arena_hard_v2.0_hard_baseline.jsonl"),
                                       str(DATA / "arena_hard_v2.0_creative_baseline.jsonl")]))
    by_id = {i.item_id: i for i in b.items}
    assert by_id["h1"].metadata["baseline_generator"] == "o3-mini-2025-01-31"
    assert by_id["c1"].metadata["category"] == "creative_writing"
    assert by_id["c1"].baseline_output.startswith("Fog folds")


def test_wmt_files_per_language_with_placeholder():
    b = load_benchmark(bench(kind="wmt", source=str(DATA / "wmt22_{lang}_to_en.jsonl"), languages=["de", "zh"]))
    assert len(b.items) == 5 and {i.task for i in b.items} == {"translation"}
    de = b.items[0]
    assert de.item_id == "de-0" and de.source_text == "Das Wetter ist heute schön." and de.reference == "The weather is nice today."
    assert "German" in de.instruction and de.metadata["language_pair"] == "de-en"
    assert b.items[-1].metadata["language_pair"] == "zh-en"


def test_wmt_from_a_local_datasets_folder(tmp_path):
    """By dataset name through `datasets` (a local folder in haoranxu/WMT22-Test's nested layout, offline)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "wmt22" / "cs-en"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"cs-en": {"cs": "Dobrý den.", "en": "Good afternoon."}},
                                         {"cs-en": {"cs": "Děkuji.", "en": "Thank you."}}]), folder / "test-00000.parquet")
    b = load_benchmark(bench(kind="wmt", source=str(tmp_path / "wmt22" / "{lang}-en"), languages=["cs"]))
    assert [(i.source_text, i.reference) for i in b.items] == [("Dobrý den.", "Good afternoon."), ("Děkuji.", "Thank you.")]


@pytest.mark.parametrize("name", ["gsm8k_test.jsonl", "gsm8k_official.jsonl"])
def test_gsm8k_both_layouts(name):
    b = load_benchmark(bench(kind="gsm8k", source=str(DATA / name)))
    assert [i.reference for i in b.items] in (["29", "1200"], ["29", "1,200"])
    assert "\\boxed" in b.items[0].instruction and {i.task for i in b.items} == {"math"}


def test_math500():
    b = load_benchmark(bench(kind="math500", source=str(DATA / "math500.jsonl")))
    assert b.items[0].item_id == "test/prealgebra/1.json" and b.items[0].reference == "\\frac{5}{6}"
    assert b.items[2].metadata["subject"] == "Algebra"


def test_project_mini_benchmark_has_every_task_offline():
    b = load_benchmark(bench(kind="toaflow_mini"))
    assert b.tasks() == ["chat", "math", "translation"]
    assert len(b.items) >= 40
    assert all(i.baseline_output for i in b.items if i.task == "chat")
    assert all(i.reference for i in b.items if i.task != "chat")
    assert MINI_FILE.is_file()


def test_limit_is_a_seeded_subset_covering_every_task():
    a = load_benchmark(bench(kind="toaflow_mini", limit=9, seed=3))
    again = load_benchmark(bench(kind="toaflow_mini", limit=9, seed=3))
    other = load_benchmark(bench(kind="toaflow_mini", limit=9, seed=4))
    assert [i.item_id for i in a.items] == [i.item_id for i in again.items]
    assert [i.item_id for i in a.items] != [i.item_id for i in other.items]
    assert len(a.items) == 9 and a.tasks() == ["chat", "math", "translation"]


def test_dataset_name_offline_gives_a_clear_error():
    with pytest.raises(BenchmarkError, match="could not load dataset 'openai/gsm8k'.*local file"):
        load_benchmark(bench(kind="gsm8k"))


def test_bad_json_line_is_named(tmp_path):
    broken = tmp_path / "q.jsonl"
    broken.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": oops}\n')
    with pytest.raises(BenchmarkError, match=r"q.jsonl: line 2: not valid JSON"):
        load_benchmark(bench(kind="math500", source=str(broken)))


def test_missing_field_is_named(tmp_path):
    rows = tmp_path / "q.jsonl"
    rows.write_text('{"problem": "1+1"}\n')
    with pytest.raises(BenchmarkError, match=r"record 1: missing field; expected one of answer"):
        load_benchmark(bench(kind="math500", source=str(rows)))


def test_config_rejects_unknown_gate_benchmark_and_duplicates():
    with pytest.raises(ValueError, match="gate metric 'other.bleu'"):
        EvaluationConfig(benchmarks=[{"name": "mini", "kind": "toaflow_mini"}], gate={"metrics": ["other.bleu"]})
    with pytest.raises(ValueError, match="repeated: mini"):
        EvaluationConfig(benchmarks=[{"name": "mini", "kind": "toaflow_mini"}, {"name": "mini", "kind": "gsm8k"}])


def test_verifiable_items_carry_their_checks_and_are_scored_by_them(tmp_path):
    import asyncio

    from evaluation.scoring import score_benchmark

    path = tmp_path / "v.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": "Say hi in lower case.", "verify": [{"kind": "case", "mode": "lower"}]},
        {"id": "b", "prompt": "What is 2 + 2? End with 'Done.'",
         "verify": [{"kind": "math_answer", "answer": "4"}, {"kind": "ends_with", "text": "Done."}]},
        {"id": "c", "prompt": "Two words.", "verify": {"kind": "word_count", "max": 2}},
        {"id": "d", "prompt": "Anything.", "verify": {"kind": "no_commas"}},
    ]))
    benchmark = load_benchmark(BenchmarkConfig(name="v", kind="verifiable", source=str(path)))
    assert benchmark.tasks() == ["checked"] and benchmark.items[2].metadata["verify"] == [{"kind": "word_count", "max": 2}]
    outputs = [{"item_id": "a", "output": "hi there"}, {"item_id": "b", "output": "\\boxed{4}, not Done"},
               {"item_id": "c", "output": "Hello world"}, {"item_id": "d", "output": None}]
    metrics, judgments, diagnostics = asyncio.run(score_benchmark(benchmark, outputs, EvaluationConfig()))
    assert metrics["pass_rate"].value == 50.0 and metrics["pass_rate"].n == 4 and metrics["pass_rate"].n_failed == 1
    assert metrics["check_pass_rate"].value == pytest.approx(100 * (1 + 0.5 + 1 + 0) / 4)
    assert metrics["pass_rate"].ci95[0] <= 50.0 <= metrics["pass_rate"].ci95[1]
    assert [j["passed"] for j in judgments["checks"]] == [True, False, True, False]


def test_verifiable_item_with_an_unusable_check_is_named(tmp_path):
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "x", "verify": [{"kind": "word_count"}]}) + "\n")
    with pytest.raises(BenchmarkError, match=r"v.jsonl: line 1: verify\[0\]\.min"):
        load_benchmark(BenchmarkConfig(name="v", kind="verifiable", source=str(path)))
