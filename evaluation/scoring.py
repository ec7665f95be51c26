"""Score one benchmark's outputs: run the judges that apply to each task and turn judgments into metrics.

- chat items with a baseline: reward-model judge (rm_mean_reward, rm_win_rate, rm_lc_win_rate); the pairwise LLM
  judge, AlpacaEval-style (judge_win_rate, judge_lc_win_rate) or, on `arena_hard` benchmarks, with
  arena-hard-auto's protocol (judge_win_rate, judge_bt_score: Bradley-Terry against the baseline, per category
  with the category's own baseline; the unsuffixed metric is the headline category, v2.0 adds
  judge_bt_score_<category> and judge_win_rate_<category>);
- math items: math_accuracy (math-verify, our extraction as fallback);
- checked items (`verifiable` benchmarks): pass_rate (every check of the item passes), check_pass_rate (share of
  single checks passed), both over all items, by the checks of toa_core/verifiers (the verifier reward's own);
- translation items: bleu, chrf (overall and per language pair), comet / comet_kiwi when asked for.

Failures count: a failed or empty generation is a loss in every win rate (preference 0, length 0), wrong in
math_accuracy, an empty hypothesis in BLEU/chrF/COMET; it stays in `n` and is counted in `n_failed`. Only items
the judge itself could not score (a reward-model error, an unreadable verdict) are left out, in `n_excluded`.
rm_mean_reward is the one metric without the failed items (an empty answer has no meaningful reward): they are
in its `n_excluded`, and `n_failed` says how many there were.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Mapping, Sequence

from evaluation.alpaca_eval_files import LengthControlInputs
from evaluation.benchmarks import Benchmark, EvalItem
from evaluation.config import EvaluationConfig
from evaluation.judges.llm_judge import JudgeClient, judge_arena, judge_pairs, judgment_counts, load_arena_prompt, load_prompt
from toa_core.verifiers.math_answers import score_math
from evaluation.judges.reward_judge import judge_with_reward
from evaluation.judges.translation import bleu, chrf, comet_scores
from evaluation.metrics.arena_hard import CATEGORY_BASELINES, arena_scores, games_from_judgment, headline_category
from evaluation.metrics.length_control import LengthPrior, length_controlled_win_rate
from evaluation.metrics.stats import Metric, mean_metric
from evaluation.metrics.win_rate import win_rate
from toa_core.interfaces import RewardModel

MODEL_PLAYER = "this model"
ARENA_MAX_TOKENS = {"v0.1": 4096, "v2.0": 16000}  # arena-hard-auto's config/arena-hard-v*.yaml


def is_failed(output: str | None) -> bool:
    """A generation that failed for good, or produced nothing but whitespace."""
    return output is None or not output.strip()


def _difficulty(items: Sequence[EvalItem], inputs: LengthControlInputs | None) -> list[float] | None:
    """Per-item instruction difficulty from the loaded table (AlpacaEval benchmarks), else None."""
    if inputs is None or inputs.difficulty is None:
        return None
    values = []
    for item in items:
        index = item.metadata.get("alpaca_eval_index")
        if index is None or int(index) not in inputs.difficulty:
            raise ValueError(f"item {item.item_id}: no instruction difficulty for AlpacaEval index {index} in "
                             f"{inputs.difficulty_source}")
        values.append(inputs.difficulty[int(index)])
    return values


def _preference_metrics(prefix: str, items: list[EvalItem], outputs: dict[str, str | None], judgments: list[dict],
                        config: EvaluationConfig, inputs: LengthControlInputs | None) -> dict[str, Metric]:
    """Win rate and LC win rate from per-item preferences; failed generations are losses."""
    judged = [(item, j) for item, j in zip(items, judgments) if j["preference"] is not None]
    excluded = len(items) - len(judged)
    failed = sum(1 for item, _ in judged if is_failed(outputs[item.item_id]))
    preferences = [j["preference"] for _, j in judged]
    kwargs = dict(samples=config.bootstrap_samples, seed=config.seed)
    metrics = {f"{prefix}_win_rate": win_rate(preferences, n_failed=failed, n_excluded=excluded, **kwargs)}
    judged_items = [item for item, _ in judged]
    lc = length_controlled_win_rate(
        preferences, [len(outputs[item.item_id] or "") for item in judged_items],
        [len(item.baseline_output or "") for item in judged_items], difficulty=_difficulty(judged_items, inputs),
        gamed=inputs.gamed if inputs else None, prior=inputs.prior if inputs else LengthPrior(),
        difficulty_source=inputs.difficulty_source if inputs else None, n_failed=failed,
        samples=config.length_control.bootstrap_samples, seed=config.seed)
    lc.n_excluded = excluded
    metrics[f"{prefix}_lc_win_rate"] = lc
    return metrics


def arena_settings(version: str, config: EvaluationConfig) -> dict[str, Any]:
    """Judge budget, strong weight, rounds, style control and solver of an arena_hard benchmark."""
    arena = config.arena_hard
    return {"max_tokens": arena.max_tokens or ARENA_MAX_TOKENS[version], "strong_weight": arena.strong_weight,
            "rounds": arena.bootstrap_rounds, "solver": arena.solver,
            "style_control": arena.style_control if arena.style_control is not None else version == "v2.0"}


def arena_metric(judgments: Sequence[dict], others: Mapping[str, Sequence[dict]], settings: Mapping[str, Any],
                 *, n_failed: int, seed: int, baseline_model: str = "baseline",
                 category: str | None = None) -> tuple[Metric, dict[str, Any]]:
    """judge_bt_score of this model in one category, fitted with every other player judged against the same
    baseline (`baseline_model`, which the official solver needs to order its columns)."""
    players = {MODEL_PLAYER: [g for j in judgments for g in games_from_judgment(MODEL_PLAYER, j, settings["strong_weight"])]}
    for name, rows in others.items():
        players[name] = [g for j in rows for g in games_from_judgment(name, j, settings["strong_weight"])]
    solver = settings.get("solver", "exact")
    scores = arena_scores(players, style_control=settings["style_control"], rounds=settings["rounds"], seed=seed,
                          solver=solver, baseline=baseline_model)
    mine = scores.get(MODEL_PLAYER)
    counted = sum(1 for j in judgments if games_from_judgment(MODEL_PLAYER, j))
    leaderboard = {"baseline": 50.0, **{name: round(s.score, 3) for name, s in scores.items()}}
    extra = {"players": leaderboard, "games": mine.games if mine else 0, "baseline_model": baseline_model,
             "style_control": settings["style_control"], "bootstrap_rounds": settings["rounds"],
             "strong_weight": settings["strong_weight"]}
    if category is not None:
        extra["category"] = category
    if settings["style_control"]:
        extra["solver"] = solver  # which fit the style-controlled score comes from
    if mine is not None and mine.style_coefficients:
        extra["style_coefficients"] = mine.style_coefficients
    metric = Metric(mine.score if mine else None, (mine.ci_low, mine.ci_high) if mine else None, counted, n_failed,
                    "%", note="Arena-Hard score: Bradley-Terry win probability against the baseline (= 50)",
                    extra=extra, n_excluded=len(judgments) - counted, ci_level=0.90)
    return metric, {"players": leaderboard}


def category_suffix(category: str) -> str:
    """A category as a metric-name suffix: judge_bt_score_hard_prompt, judge_bt_score_creative_writing."""
    return re.sub(r"[^A-Za-z0-9]+", "_", category).strip("_").lower()


def by_category(rows: Sequence[dict], categories: Mapping[str, str]) -> dict[str, list[dict]]:
    """Judgment rows grouped by their question's category (rows of questions not asked here are left out)."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        category = categories.get(str(row.get("item_id")))
        if category is not None:
            grouped.setdefault(category, []).append(row)
    return grouped


def with_headline(name: str, per_category: Mapping[str, Metric], *, emit_categories: bool) -> dict[str, Metric]:
    """`name` = the headline category's metric (hard_prompt on v2.0, as the leaderboard reports it), carrying
    every category's value in extra["categories"]; with `emit_categories`, also `<name>_<category>` each."""
    headline = headline_category(list(per_category))
    top = per_category[headline]
    summary = {category: {"value": m.value, "ci_low": m.ci95[0] if m.ci95 else None,
                          "ci_high": m.ci95[1] if m.ci95 else None, "n": m.n}
               for category, m in sorted(per_category.items())}
    metrics = {name: replace(top, extra={**top.extra, "headline_category": headline, "categories": summary})}
    if emit_categories:
        metrics.update({f"{name}_{category_suffix(category)}": m for category, m in sorted(per_category.items())})
    return metrics


def arena_category_metrics(judgments: Sequence[dict], others: Mapping[str, Sequence[dict]],
                           settings: Mapping[str, Any], *, categories: Mapping[str, str],
                           baselines: Mapping[str, str], seed: int, emit_categories: bool) -> dict[str, Metric]:
    """judge_bt_score per category, each against its own baseline with its own fit (as show_result.py scores
    one category at a time), plus the headline. `categories`: {item_id: category}; `baselines`: {category:
    baseline model}."""
    mine = by_category(judgments, categories)
    theirs = {name: by_category(rows, categories) for name, rows in others.items()}
    per_category = {}
    for category, rows in sorted(mine.items()):
        per_category[category], _ = arena_metric(
            rows, {name: grouped.get(category, []) for name, grouped in theirs.items()}, settings,
            n_failed=sum(1 for j in rows if j.get("generation_failed")), seed=seed,
            baseline_model=baselines.get(category) or CATEGORY_BASELINES.get(category, "baseline"), category=category)
    return with_headline("judge_bt_score", per_category, emit_categories=emit_categories)


async def score_chat(items: list[EvalItem], outputs: dict[str, str | None], config: EvaluationConfig, *,
                     reward: RewardModel | None, judge: JudgeClient | None, kind: str = "", version: str = "v0.1",
                     length_control: LengthControlInputs | None = None,
                     arena_players: Mapping[str, Sequence[dict]] | None = None
                     ) -> tuple[dict[str, Metric], dict[str, list], dict]:
    metrics: dict[str, Metric] = {}
    judgments: dict[str, list] = {}
    diagnostics: dict[str, Any] = {}
    kwargs = dict(samples=config.bootstrap_samples, seed=config.seed)
    with_baseline = [item for item in items if item.baseline_output is not None]
    answered = [item for item in items if not is_failed(outputs[item.item_id])]
    n_failed = len(items) - len(answered)
    if reward is not None and items:
        rows = [{"item_id": item.item_id, "messages": item.messages, "output": outputs[item.item_id],
                 "baseline": item.baseline_output} for item in answered]
        rm = await judge_with_reward(reward, rows, batch_size=config.judges.reward.batch_size if config.judges.reward else 16)
        rm += [{"item_id": item.item_id, "reward_model": None, "reward_baseline": None,
                "preference": 0.0 if item.baseline_output is not None else None, "error": "generation failed"}
               for item in items if is_failed(outputs[item.item_id])]
        judgments["reward"] = rm
        scored = [j["reward_model"] for j in rm if j["reward_model"] is not None]
        metrics["rm_mean_reward"] = mean_metric(scored, unit="reward", n_failed=n_failed, **kwargs)
        metrics["rm_mean_reward"].n_excluded = len(items) - len(scored)  # the failed items too: they have no reward
        metrics["rm_mean_reward"].failed_in_excluded = True
        baseline_scored = [j["reward_baseline"] for j in rm if j["reward_baseline"] is not None]
        if baseline_scored:
            metrics["rm_baseline_mean_reward"] = mean_metric(baseline_scored, unit="reward", **kwargs)
        if with_baseline:  # even when every generation failed: then the win rate is 0, not missing
            by_id = {j["item_id"]: j for j in rm}
            metrics.update(_preference_metrics("rm", with_baseline, outputs,
                                               [by_id[item.item_id] for item in with_baseline], config, length_control))
    if judge is not None and with_baseline:
        llm = config.judges.llm_judge
        pairs = [{"item_id": item.item_id, "instruction": item.instruction, "output": outputs[item.item_id],
                  "baseline": item.baseline_output} for item in with_baseline]
        concurrency = llm.max_concurrency if llm else 4
        temperature = llm.temperature if llm else 0.0
        if kind == "arena_hard":
            settings = arena_settings(version, config)
            system, template = load_arena_prompt(config.arena_hard.prompt_file)
            pairs = [{**pair, "category": item.metadata.get("category")} for pair, item in zip(pairs, with_baseline)]
            lj = await judge_arena(judge, pairs, system=system, template=template, max_tokens=settings["max_tokens"],
                                   temperature=temperature, max_concurrency=concurrency)
            judgments["arena_hard"] = lj
            diagnostics["arena_hard"] = {"questions": len(lj), "generation_failed": sum(j["generation_failed"] for j in lj),
                                         "without_verdict": sum(1 for j in lj if j["preference"] is None)}
            categories = {item.item_id: item.metadata.get("category") or "arena-hard" for item in with_baseline}
            baselines = {item.metadata.get("category") or "arena-hard": item.metadata.get("baseline_generator") or ""
                         for item in with_baseline}
            # what the report prints: which fit produced the scores, and each category's baseline
            diagnostics["arena_hard"]["fit"] = (f"style control, {settings['solver']} solver" if settings["style_control"]
                                                else "no style control")
            diagnostics["arena_hard"]["baselines"] = "; ".join(
                f"{category}: {model or CATEGORY_BASELINES.get(category, '?')}" for category, model in sorted(baselines.items()))
            per_category_win_rate = {}
            for category, rows in by_category(lj, categories).items():
                judged = [j for j in rows if j["preference"] is not None]
                per_category_win_rate[category] = win_rate(
                    [j["preference"] for j in judged], n_failed=sum(j["generation_failed"] for j in judged),
                    n_excluded=len(rows) - len(judged), **kwargs)
            emit_categories = version == "v2.0"
            metrics.update(with_headline("judge_win_rate", per_category_win_rate, emit_categories=emit_categories))
            metrics.update(arena_category_metrics(lj, arena_players or {}, settings, categories=categories,
                                                  baselines=baselines, seed=config.seed,
                                                  emit_categories=emit_categories))
        else:
            answered_pairs = [p for p in pairs if not is_failed(p["output"])]
            lj = await judge_pairs(judge, answered_pairs, template=load_prompt(llm), max_tokens=llm.max_tokens if llm else 8,
                                   temperature=temperature, use_logprobs=llm.use_logprobs if llm else False,
                                   max_concurrency=concurrency)
            lj += [{"item_id": p["item_id"], "games": [], "preference": 0.0, "generation_failed": True}
                   for p in pairs if is_failed(p["output"])]
            by_id = {j["item_id"]: j for j in lj}
            lj = [by_id[item.item_id] for item in with_baseline]
            judgments["llm_judge"] = lj
            diagnostics["llm_judge"] = judgment_counts(lj)
            metrics.update(_preference_metrics("judge", with_baseline, outputs, lj, config, length_control))
    return metrics, judgments, diagnostics


def score_math_items(items: list[EvalItem], outputs: dict[str, str | None],
                     config: EvaluationConfig) -> tuple[dict[str, Metric], list[dict]]:
    judgments = [{"item_id": item.item_id, **score_math(outputs[item.item_id], item.reference or "")} for item in items]
    correct = [1.0 if j["correct"] else 0.0 for j in judgments]
    n_failed = sum(1 for item in items if is_failed(outputs[item.item_id]))
    metric = mean_metric(correct, scale=100.0, unit="%", n_failed=n_failed,
                         samples=config.bootstrap_samples, seed=config.seed)
    metric.extra = {"extracted": sum(1 for j in judgments if j["extracted"] is not None),
                    "decided_by_math_verify": sum(1 for j in judgments if j["method"] == "math_verify")}
    return {"math_accuracy": metric}, judgments


def score_checked_items(items: list[EvalItem], outputs: dict[str, str | None],
                        config: EvaluationConfig) -> tuple[dict[str, Metric], list[dict]]:
    """pass_rate and check_pass_rate; a failed generation fails every check of its item (it stays in n)."""
    from toa_core.verifiers.checks import VERIFY_FIELD, parse_checks, run_checks

    judgments, passed, shares = [], [], []
    for item in items:
        outcomes = run_checks(parse_checks(item.metadata[VERIFY_FIELD]), outputs[item.item_id] or "")
        passed.append(1.0 if all(o.passed for o in outcomes) else 0.0)
        shares.append(sum(o.passed for o in outcomes) / len(outcomes))
        judgments.append({"item_id": item.item_id, "passed": bool(passed[-1]),
                          "checks": [{"kind": o.kind, "passed": o.passed, "detail": o.detail} for o in outcomes]})
    n_failed = sum(1 for item in items if is_failed(outputs[item.item_id]))
    kwargs = dict(scale=100.0, unit="%", n_failed=n_failed, samples=config.bootstrap_samples, seed=config.seed)
    return {"pass_rate": mean_metric(passed, **kwargs), "check_pass_rate": mean_metric(shares, **kwargs)}, judgments


def score_translation(items: list[EvalItem], outputs: dict[str, str | None],
                      config: EvaluationConfig) -> tuple[dict[str, Metric], list[dict]]:
    hyps = [(outputs[item.item_id] or "").strip() for item in items]  # a failed generation: an empty hypothesis
    failed = [is_failed(outputs[item.item_id]) for item in items]
    kwargs = dict(samples=config.bootstrap_samples, seed=config.seed, n_failed=sum(failed))
    refs = [item.reference or "" for item in items]
    metrics = {"bleu": bleu(hyps, refs, **kwargs), "chrf": chrf(hyps, refs, **kwargs)}
    pairs = sorted({item.metadata.get("language_pair", "") for item in items} - {""})
    if len(pairs) > 1:
        for pair in pairs:
            chosen = [i for i, item in enumerate(items) if item.metadata.get("language_pair") == pair]
            tag = pair.replace("-", "_")
            pair_kwargs = {**kwargs, "n_failed": sum(failed[i] for i in chosen)}
            metrics[f"bleu_{tag}"] = bleu([hyps[i] for i in chosen], [refs[i] for i in chosen], **pair_kwargs)
            metrics[f"chrf_{tag}"] = chrf([hyps[i] for i in chosen], [refs[i] for i in chosen], **pair_kwargs)
    sources = [item.source_text or "" for item in items]
    if config.judges.comet:
        metrics["comet"] = comet_scores(sources, hyps, refs, model_name=config.judges.comet_model, **kwargs)
    if config.judges.comet_kiwi_model:
        metrics["comet_kiwi"] = comet_scores(sources, hyps, None, model_name=config.judges.comet_kiwi_model, **kwargs)
    judgments = [{"item_id": item.item_id, "hypothesis": h, "reference": r, "generation_failed": f}
                 for item, h, r, f in zip(items, hyps, refs, failed)]
    return metrics, judgments


async def score_benchmark(benchmark: Benchmark, output_rows: Sequence[dict[str, Any]], config: EvaluationConfig, *,
                          reward: RewardModel | None = None, judge: JudgeClient | None = None,
                          version: str = "v0.1", length_control: LengthControlInputs | None = None,
                          arena_players: Mapping[str, Sequence[dict]] | None = None,
                          ) -> tuple[dict[str, Metric], dict[str, list], dict[str, Any]]:
    """Metrics, judgments (by judge) and diagnostics for one benchmark's outputs.

    `length_control`: difficulty / gamed rows / prior for the LC win rates (None: no difficulty, default prior).
    `arena_players`: {player: arena judgments} of other models judged against the same baseline (arena_hard)."""
    outputs = {row["item_id"]: row.get("output") for row in output_rows}
    missing = [item.item_id for item in benchmark.items if item.item_id not in outputs]
    if missing:
        raise ValueError(f"benchmark '{benchmark.name}': no output row for {len(missing)} item(s), e.g. {missing[:3]}")
    failed = sum(1 for item in benchmark.items if is_failed(outputs[item.item_id]))
    metrics: dict[str, Metric] = {}
    judgments: dict[str, list] = {}
    diagnostics: dict[str, Any] = {"generation_failures": failed,
                                   "failure_rate": round(failed / len(benchmark.items), 4) if benchmark.items else 0.0}
    for task in ("chat", "math", "translation", "checked"):
        task_items = [item for item in benchmark.items if item.task == task]
        if not task_items:
            continue
        if task == "chat":
            m, j, d = await score_chat(task_items, outputs, config, reward=reward, judge=judge, kind=benchmark.kind,
                                       version=version, length_control=length_control, arena_players=arena_players)
            metrics.update(m), judgments.update(j), diagnostics.update(d)
        elif task == "math":
            m, j = score_math_items(task_items, outputs, config)
            metrics.update(m)
            judgments["math"] = j
        elif task == "checked":
            m, j = score_checked_items(task_items, outputs, config)
            metrics.update(m)
            judgments["checks"] = j
        else:
            m, j = score_translation(task_items, outputs, config)
            metrics.update(m)
            judgments["translation"] = j
    return metrics, judgments, diagnostics
