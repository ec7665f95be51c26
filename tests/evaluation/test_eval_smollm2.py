"""Slow: the demo's evaluation setup on the real small model (SmolLM2 policy, SmolLM2 yes/no judge reward)."""
from __future__ import annotations

import asyncio

import pytest

from evaluation.config import BenchmarkConfig, EvaluationConfig
from evaluation.generation import resolve_model_under_test
from evaluation.runner import evaluate_model_on_benchmark
from infra.store import open_store

pytestmark = pytest.mark.slow


def test_smollm2_on_the_mini_benchmark(tmp_path, smollm2_dir):
    judge = {"kind": "llm_judge", "model": str(smollm2_dir), "max_length": 1024, "batch_size": 8}
    config = EvaluationConfig(benchmarks=[BenchmarkConfig(name="mini", kind="toaflow_mini", limit=6)],
                              judges={"reward": judge}, generation={"max_tokens": 32}, bootstrap_samples=200)
    store = open_store(str(tmp_path / "store"))
    model = resolve_model_under_test(str(smollm2_dir), config.generation, store)
    scores = asyncio.run(evaluate_model_on_benchmark(store, "runs/s/eval/mini", config.benchmarks[0], config, model,
                                                     run_id="s", synthesis_reward=judge))
    metrics = scores["metrics"]
    assert scores["diagnostics"]["generation_failures"] == 0
    assert metrics["rm_win_rate"]["n"] == 3 and metrics["math_accuracy"]["n"] == 1 and metrics["chrf"]["n"] == 2
    assert scores["circularity"]["circular"] is True
    outputs = store.read_text("runs/s/eval/mini/outputs.jsonl")
    assert outputs.count('"error": null') == 6
