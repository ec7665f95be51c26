"""Score one benchmark's outputs: run the judges that apply to each task and turn judgments into metrics.

- chat items with a baseline: reward-model judge (rm_mean_reward, rm_win_rate, rm_lc_win_rate) and pairwise LLM
  judge (judge_win_rate, judge_lc_win_rate, judge_bt_score);
- math items: math_accuracy (exact match after normalisation);
- translation items: bleu, chrf (overall and per language pair), comet / comet_kiwi when asked for.
Items whose generation failed are excluded from every metric and counted in its `n_failed`.
"""
from __future__ import annotations

from typing import Any, Sequence

from evaluation.benchmarks import Benchmark, EvalItem
from evaluation.config import EvaluationConfig
from evaluation.judges.llm_judge import (JudgeClient, battles_from_judgments, judge_pairs, judgment_counts,
                                         load_prompt)
from evaluation.judges.math_answers import score_math
from evaluation.judges.reward_judge import judge_with_reward
from evaluation.judges.translation import bleu, chrf, comet_scores
from evaluation.metrics.bradley_terry import bradley_terry
from evaluation.metrics.stats import Metric, mean_metric
from evaluation.metrics.win_rate import length_controlled_win_rate, win_rate
from toa_core.interfaces import RewardModel


def _difficulty(items: Sequence[EvalItem]) -> list[float] | None:
    """AlpacaEval's per-instruction difficulty term, used only when every item carries one."""
    values = [item.metadata.get("instruction_difficulty") for item in items]
    return None if any(v is None for v in values) else [float(v) for v in values]


def _preference_metrics(prefix: str, items: list[EvalItem], outputs: dict[str, str], judgments: list[dict],
                        n_failed: int, config: EvaluationConfig) -> dict[str, Metric]:
    judged = [(item, j) for item, j in zip(items, judgments) if j["preference"] is not None]
    failed = n_failed + len(items) - len(judged)
    preferences = [j["preference"] for _, j in judged]
    kwargs = dict(samples=config.bootstrap_samples, seed=config.seed)
    metrics = {f"{prefix}_win_rate": win_rate(preferences, n_failed=failed, **kwargs)}
    difficulty = _difficulty([item for item, _ in judged])
    metrics[f"{prefix}_lc_win_rate"] = length_controlled_win_rate(
        preferences, [len(outputs[item.item_id]) for item, _ in judged],
        [len(item.baseline_output or "") for item, _ in judged], difficulty=difficulty, n_failed=failed, **kwargs)
    return metrics


async def score_chat(items: list[EvalItem], outputs: dict[str, str], n_failed: int, config: EvaluationConfig, *,
                     reward: RewardModel | None, judge: JudgeClient | None) -> tuple[dict[str, Metric], dict[str, list], dict]:
    metrics: dict[str, Metric] = {}
    judgments: dict[str, list] = {}
    diagnostics: dict[str, Any] = {}
    kwargs = dict(samples=config.bootstrap_samples, seed=config.seed)
    with_baseline = [item for item in items if item.baseline_output is not None]
    if reward is not None and items:
        rows = [{"item_id": item.item_id, "messages": item.messages, "output": outputs[item.item_id],
                 "baseline": item.baseline_output} for item in items]
        rm = await judge_with_reward(reward, rows, batch_size=config.judges.reward.batch_size if config.judges.reward else 16)
        judgments["reward"] = rm
        scored = [j["reward_model"] for j in rm if j["reward_model"] is not None]
        metrics["rm_mean_reward"] = mean_metric(scored, unit="reward", n_failed=n_failed + len(rm) - len(scored), **kwargs)
        baseline_scored = [j["reward_baseline"] for j in rm if j["reward_baseline"] is not None]
        if baseline_scored:
            metrics["rm_baseline_mean_reward"] = mean_metric(baseline_scored, unit="reward", **kwargs)
            by_id = {j["item_id"]: j for j in rm}
            metrics.update(_preference_metrics("rm", with_baseline, outputs,
                                               [by_id[item.item_id] for item in with_baseline], n_failed, config))
    if judge is not None and with_baseline:
        llm = config.judges.llm_judge
        pairs = [{"item_id": item.item_id, "instruction": item.instruction, "output": outputs[item.item_id],
                  "baseline": item.baseline_output} for item in with_baseline]
        lj = await judge_pairs(judge, pairs, template=load_prompt(llm), max_tokens=llm.max_tokens if llm else 8,
                               temperature=llm.temperature if llm else 0.0,
                               use_logprobs=llm.use_logprobs if llm else False,
                               max_concurrency=llm.max_concurrency if llm else 4)
        judgments["llm_judge"] = lj
        diagnostics["llm_judge"] = judgment_counts(lj)
        metrics.update(_preference_metrics("judge", with_baseline, outputs, lj, n_failed, config))
        battles = battles_from_judgments(lj)
        if battles:
            bt = bradley_terry(battles, anchor="baseline", **kwargs)["model"]
            metrics["judge_bt_score"] = Metric(bt["score"], tuple(bt["ci95"]) if bt["ci95"] else None,
                                               diagnostics["llm_judge"]["items_judged"],
                                               n_failed + diagnostics["llm_judge"]["items_failed"], "%",
                                               note="Bradley-Terry win rate vs baseline (Arena-Hard style, strong verdicts x3)",
                                               extra={"rating": bt["rating"], "battles": len(battles)})
    return metrics, judgments, diagnostics


def score_math_items(items: list[EvalItem], outputs: dict[str, str], n_failed: int,
                     config: EvaluationConfig) -> tuple[dict[str, Metric], list[dict]]:
    judgments = [{"item_id": item.item_id, **score_math(outputs[item.item_id], item.reference or "")} for item in items]
    correct = [1.0 if j["correct"] else 0.0 for j in judgments]
    metric = mean_metric(correct, scale=100.0, unit="%", n_failed=n_failed,
                         samples=config.bootstrap_samples, seed=config.seed)
    metric.extra = {"extracted": sum(1 for j in judgments if j["extracted"] is not None)}
    return {"math_accuracy": metric}, judgments


def score_translation(items: list[EvalItem], outputs: dict[str, str], n_failed: int,
                      config: EvaluationConfig) -> tuple[dict[str, Metric], list[dict]]:
    kwargs = dict(samples=config.bootstrap_samples, seed=config.seed, n_failed=n_failed)
    hyps = [outputs[item.item_id].strip() for item in items]
    refs = [item.reference or "" for item in items]
    metrics = {"bleu": bleu(hyps, refs, **kwargs), "chrf": chrf(hyps, refs, **kwargs)}
    pairs = sorted({item.metadata.get("language_pair", "") for item in items} - {""})
    if len(pairs) > 1:
        for pair in pairs:
            chosen = [i for i, item in enumerate(items) if item.metadata.get("language_pair") == pair]
            tag = pair.replace("-", "_")
            metrics[f"bleu_{tag}"] = bleu([hyps[i] for i in chosen], [refs[i] for i in chosen], **{**kwargs, "n_failed": 0})
            metrics[f"chrf_{tag}"] = chrf([hyps[i] for i in chosen], [refs[i] for i in chosen], **{**kwargs, "n_failed": 0})
    sources = [item.source_text or "" for item in items]
    if config.judges.comet:
        metrics["comet"] = comet_scores(sources, hyps, refs, model_name=config.judges.comet_model, **kwargs)
    if config.judges.comet_kiwi_model:
        metrics["comet_kiwi"] = comet_scores(sources, hyps, None, model_name=config.judges.comet_kiwi_model, **kwargs)
    judgments = [{"item_id": item.item_id, "hypothesis": h, "reference": r} for item, h, r in zip(items, hyps, refs)]
    return metrics, judgments


async def score_benchmark(benchmark: Benchmark, output_rows: Sequence[dict[str, Any]], config: EvaluationConfig, *,
                          reward: RewardModel | None = None, judge: JudgeClient | None = None
                          ) -> tuple[dict[str, Metric], dict[str, list], dict[str, Any]]:
    """Metrics, judgments (by judge) and diagnostics for one benchmark's outputs."""
    outputs = {row["item_id"]: row["output"] for row in output_rows if row.get("output") is not None}
    missing = [item.item_id for item in benchmark.items if item.item_id not in {r["item_id"] for r in output_rows}]
    if missing:
        raise ValueError(f"benchmark '{benchmark.name}': no output row for {len(missing)} item(s), e.g. {missing[:3]}")
    metrics: dict[str, Metric] = {}
    judgments: dict[str, list] = {}
    diagnostics: dict[str, Any] = {"generation_failures": len(benchmark.items) - len(outputs)}
    for task in ("chat", "math", "translation"):
        task_items = [item for item in benchmark.items if item.task == task]
        ok = [item for item in task_items if item.item_id in outputs]
        n_failed = len(task_items) - len(ok)
        if not task_items:
            continue
        if task == "chat":
            m, j, d = await score_chat(ok, outputs, n_failed, config, reward=reward, judge=judge)
            metrics.update(m), judgments.update(j), diagnostics.update(d)
        elif task == "math":
            m, j = score_math_items(ok, outputs, n_failed, config)
            metrics.update(m)
            judgments["math"] = j
        else:
            m, j = score_translation(ok, outputs, n_failed, config)
            metrics.update(m)
            judgments["translation"] = j
    return metrics, judgments, diagnostics
