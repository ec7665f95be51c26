"""Evaluate one model on one benchmark and write everything to the store.

Writes under `prefix` (runs/<id>/eval/<benchmark>/ for a run; eval_cache/base/<key>/<benchmark>/ for the base
model): outputs.jsonl (one row per item: prompt, output or error), model_outputs.json (chat items in AlpacaEval's
format, for the official tool), judgments.jsonl (one row per judge and item), scores.json.

Outputs already in the store for the same weights, sampling settings and items are reused, so a re-run after a
judge failure does not generate again.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import logging
from typing import Any

from evaluation.alpaca_eval_files import load_length_control
from evaluation.benchmarks import load_benchmark
from evaluation.circularity import check_circularity
from evaluation.config import BenchmarkConfig, EvaluationConfig
from evaluation.generation import ModelUnderTest, build_chat_model, generate_outputs
from evaluation.judges.llm_judge import HttpJudgeClient, JudgeClient
from evaluation.scores import arena_key, arena_players
from evaluation.scoring import score_benchmark
from toa_core.credentials import redact
from toa_core.config import RewardConfig
from toa_core.interfaces import ChatModel, RewardModel

log = logging.getLogger(__name__)

SCORES_FILE = "scores.json"
OUTPUTS_FILE = "outputs.jsonl"
JUDGMENTS_FILE = "judgments.jsonl"


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)


def _read_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _public_judges(config: EvaluationConfig) -> dict[str, Any]:
    """Judge settings for scores.json (api keys are env var names only, never values)."""
    judges = config.judges.model_dump(mode="json")
    for section in ("reward", "llm_judge"):
        if judges.get(section):
            judges[section].pop("retry", None)
    return judges


def build_reward_model(config: RewardConfig) -> RewardModel:
    from toa_core.backends import factory

    return factory.build_reward(config)


def model_fingerprint(model: ModelUnderTest, config: EvaluationConfig) -> str:
    """What the outputs depend on: the weights actually loaded (a merged adapter's folder name is a hash of its
    content), the endpoint and served name, and the sampling settings. A retrained model never reuses old outputs."""
    identity = {"model": model.config.model, "endpoints": model.config.endpoints,
                "generation": config.generation.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _reusable_outputs(store: Any, key: str, fingerprint: str, item_ids: list[str]) -> list[dict[str, Any]] | None:
    if not store.exists(key):
        return None
    rows = _read_jsonl(store.read_text(key))
    if [r.get("item_id") for r in rows] != item_ids or any(r.get("fingerprint") != fingerprint for r in rows):
        return None
    if any(r.get("output") is None for r in rows):
        return None  # failed generations get another chance
    return rows


async def evaluate_model_on_benchmark(
    store: Any, prefix: str, benchmark_config: BenchmarkConfig, config: EvaluationConfig, model: ModelUnderTest, *,
    run_id: str | None, synthesis_reward: RewardConfig | dict | None, chat_model: ChatModel | None = None,
    reward_model: RewardModel | None = None, judge_client: JudgeClient | None = None,
) -> dict[str, Any]:
    """Generate (or reuse outputs), judge, score; write outputs, judgments and scores.json; return the scores.

    `chat_model`, `reward_model` and `judge_client` replace the ones the config describes (tests, notebooks)."""
    benchmark = load_benchmark(benchmark_config)
    outputs_key = f"{prefix}/{OUTPUTS_FILE}"
    item_ids = [item.item_id for item in benchmark.items]
    fingerprint = model_fingerprint(model, config)
    output_rows = _reusable_outputs(store, outputs_key, fingerprint, item_ids)
    if output_rows is None:
        owned_model = chat_model is None
        chat_model = chat_model or build_chat_model(model.config)
        try:
            generated = await generate_outputs(chat_model, benchmark.items, config.generation)
        finally:
            if owned_model:
                await chat_model.aclose()
        by_id = {item.item_id: item for item in benchmark.items}
        output_rows = [{"item_id": row["item_id"], "task": by_id[row["item_id"]].task, "model": model.label,
                        "fingerprint": fingerprint,
                        "messages": by_id[row["item_id"]].messages, **{k: v for k, v in row.items() if k != "item_id"}}
                       for row in generated]
        store.write_text(outputs_key, _jsonl(redact(output_rows)))
        chat_rows = [{"instruction": by_id[r["item_id"]].instruction, "output": r["output"], "generator": model.label,
                      "dataset": by_id[r["item_id"]].metadata.get("dataset", benchmark.name)}
                     for r in output_rows if r["task"] == "chat" and r["output"] is not None]
        if chat_rows:
            store.write_json(f"{prefix}/model_outputs.json", redact(chat_rows))

    has_chat_baseline = any(item.task == "chat" and item.baseline_output is not None for item in benchmark.items)
    length_control = None
    if has_chat_baseline and (config.judges.reward is not None or config.judges.llm_judge is not None
                              or judge_client is not None or reward_model is not None):
        length_control = load_length_control(store, config.length_control,
                                             needs_difficulty=benchmark.kind == "alpaca_eval")
    key = arena_key(benchmark_config, config) if benchmark.kind == "arena_hard" else None
    others = arena_players(store, benchmark.name, key, exclude_prefix=prefix) if key else None

    owned_reward = reward_model is None and config.judges.reward is not None
    owned_judge = judge_client is None and config.judges.llm_judge is not None
    reward_model = reward_model or (build_reward_model(config.judges.reward) if owned_reward else None)
    judge_client = judge_client or (HttpJudgeClient(config.judges.llm_judge) if owned_judge else None)
    try:
        metrics, judgments, diagnostics = await score_benchmark(
            benchmark, output_rows, config, reward=reward_model, judge=judge_client, version=benchmark_config.version,
            length_control=length_control, arena_players=others)
    finally:
        if owned_reward:
            await reward_model.aclose()
        if owned_judge:
            await judge_client.aclose()

    store.write_text(f"{prefix}/{JUDGMENTS_FILE}", _jsonl(redact(
        [{"judge": name, **row} for name, rows in judgments.items() for row in rows])))
    circularity = check_circularity(config.judges, synthesis_reward)
    if circularity["circular"]:
        log.warning("benchmark %s: CIRCULAR evaluation: %s", benchmark.name, "; ".join(circularity["reasons"]))
    scores = {
        "benchmark": benchmark.name,
        "kind": benchmark.kind,
        "run_id": run_id,
        "model": model.label,
        "evaluated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_items": len(benchmark.items),
        "tasks": benchmark.tasks(),
        "metrics": {name: metric.to_dict() for name, metric in metrics.items()},
        "diagnostics": diagnostics,
        "circularity": circularity,
        "judges": _public_judges(config),
        "generation": config.generation.model_dump(mode="json", exclude={"api_key_env"}),
        "benchmark_config": benchmark_config.model_dump(mode="json"),
    }
    if key:
        scores["arena_key"] = key  # other runs judged against the same baseline, by the same judge, share it
    scores = redact(scores)  # the model label may be an endpoint URL with credentials
    store.write_json(f"{prefix}/{SCORES_FILE}", scores)
    return scores


def evaluate_sync(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`evaluate_model_on_benchmark` for synchronous callers (Prefect tasks, the CLI)."""
    return asyncio.run(evaluate_model_on_benchmark(*args, **kwargs))
