"""Reading evaluation results back: per-run scores, the promotion gate's table, earlier runs, base-model cache.

Layout: runs/<run_id>/eval/<benchmark>/scores.json; the base model's scores are cached (they do not change
between runs) under eval_cache/base/<key>/<benchmark>/, keyed by the base model, benchmark, judges and generation.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from evaluation.config import BenchmarkConfig, EvaluationConfig

SCORES_FILE = "scores.json"


def eval_prefix(run_id: str, benchmark: str) -> str:
    return f"runs/{run_id}/eval/{benchmark}"


def base_cache_prefix(config: EvaluationConfig, benchmark: BenchmarkConfig) -> str:
    """Where the base model's results for this benchmark live; any change to what is measured changes the key."""
    identity = {
        "base_model": config.base_model,
        "benchmark": benchmark.model_dump(mode="json", exclude={"name"}),
        "judges": config.judges.model_dump(mode="json"),
        "generation": config.generation.model_dump(mode="json"),
        "bootstrap": [config.bootstrap_samples, config.seed],
        "length_control": config.length_control.model_dump(mode="json"),
        # the default solver is left out so base-model results cached before it existed stay valid
        "arena_hard": config.arena_hard.model_dump(mode="json", exclude={"solver"} if config.arena_hard.solver == "exact"
                                                   else None),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"eval_cache/base/{digest}/{benchmark.name}"


def arena_key(benchmark: BenchmarkConfig, config: EvaluationConfig) -> str:
    """Who can share one Arena-Hard leaderboard: the same questions and baseline, judge, prompt and settings."""
    from evaluation.judges.llm_judge import ARENA_PROMPT_FILE

    prompt = config.arena_hard.prompt_file or str(ARENA_PROMPT_FILE)
    try:
        prompt_text = open(prompt, encoding="utf-8").read()
    except OSError:
        prompt_text = prompt
    identity = {
        "benchmark": benchmark.model_dump(mode="json", exclude={"name"}),
        "judge": (config.judges.llm_judge.model if config.judges.llm_judge else None),
        "prompt": hashlib.sha256(prompt_text.encode()).hexdigest(),
        "arena": config.arena_hard.model_dump(mode="json", exclude={"prompt_file", "bootstrap_rounds", "style_control",
                                                                   "solver"}),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def arena_players(store: Any, benchmark: str, key: str, *, exclude_prefix: str) -> dict[str, list[dict[str, Any]]]:
    """{player: arena judgments} of every other evaluated model (earlier runs, the base model) whose scores carry
    the same arena key; the Bradley-Terry fit counts them all as players against the common baseline."""
    players: dict[str, list[dict[str, Any]]] = {}
    candidates = [k for k in store.list("runs/") if k.endswith(f"/eval/{benchmark}/{SCORES_FILE}") and k.count("/") == 4]
    candidates += [k for k in store.list("eval_cache/base/") if k.endswith(f"/{benchmark}/{SCORES_FILE}")]
    for scores_key in sorted(candidates):
        prefix = scores_key[: -len(SCORES_FILE) - 1]
        if prefix == exclude_prefix or not store.exists(f"{prefix}/judgments.jsonl"):
            continue
        scores = store.read_json(scores_key)
        if scores.get("arena_key") != key:
            continue
        name = f"run {scores['run_id']}" if scores.get("run_id") else f"base model {scores.get('model')}"
        rows = [json.loads(line) for line in store.read_text(f"{prefix}/judgments.jsonl").splitlines() if line.strip()]
        players[name] = [row for row in rows if row.get("judge") == "arena_hard"]
    return players


def load_scores(store: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """{benchmark: scores.json} for every benchmark evaluated in run `run_id` (empty when none)."""
    prefix = f"runs/{run_id}/eval/"
    result = {}
    for key in store.list(prefix):
        parts = key[len(prefix):].split("/")
        if len(parts) == 2 and parts[1] == SCORES_FILE:
            result[parts[0]] = store.read_json(key)
    return result


def gate_table(scores: dict[str, dict[str, Any]], metrics: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Flatten {benchmark: scores} into the promotion gate's table: {"<benchmark>.<metric>": {value, ci_low,
    ci_high, n, n_failed, n_excluded, higher_is_better}} (only `metrics` when given).

    A metric with a value but no interval (n < 2) is left out, which the gate reports as missing (blocking); one
    without a value (nothing to score: every item failed, say) is kept, so the gate can say why it is missing."""
    table = {}
    for benchmark, data in scores.items():
        for name, metric in data.get("metrics", {}).items():
            full = f"{benchmark}.{name}"
            if metrics is not None and full not in metrics:
                continue
            if metric.get("value") is not None and metric.get("ci_low") is None:
                continue
            table[full] = {"value": metric["value"], "ci_low": metric["ci_low"], "ci_high": metric["ci_high"],
                           "n": metric["n"], "n_failed": metric.get("n_failed", 0),
                           "n_excluded": metric.get("n_excluded", 0),
                           "failed_in_excluded": metric.get("failed_in_excluded", False),
                           "higher_is_better": metric.get("higher_is_better", True)}
    return table


def gated_metrics(store: Any, run_id: str, config: EvaluationConfig) -> dict[str, dict[str, Any]]:
    """The gated metrics (evaluation.gate.metrics) of run `run_id`, each with value and 95% interval."""
    return gate_table(load_scores(store, run_id), list(config.gate.metrics))


def base_model_scores(store: Any, config: EvaluationConfig) -> dict[str, dict[str, Any]]:
    """{benchmark: scores.json} of the base model (evaluation.base_model) for every configured benchmark cached so
    far; empty when no base model is configured."""
    if not config.base_model:
        return {}
    result = {}
    for benchmark in config.benchmarks:
        key = f"{base_cache_prefix(config, benchmark)}/{SCORES_FILE}"
        if store.exists(key):
            result[benchmark.name] = store.read_json(key)
    return result


def previous_scores(store: Any, run_id: str, benchmark: str) -> dict[str, Any] | None:
    """scores.json of the most recently evaluated other run on this benchmark (by `evaluated_at`), or None."""
    best = None
    suffix = f"/eval/{benchmark}/{SCORES_FILE}"
    for key in store.list("runs/"):
        if not key.endswith(suffix) or key == f"{eval_prefix(run_id, benchmark)}/{SCORES_FILE}":
            continue
        if key.count("/") != 4:  # runs/<id>/eval/<benchmark>/scores.json
            continue
        data = store.read_json(key)
        if best is None or str(data.get("evaluated_at", "")) > str(best.get("evaluated_at", "")):
            best = data
    return best
