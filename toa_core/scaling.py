"""Scaling curves: how the best reward grows with the generation budget, strategy by strategy, on the same prompts.

This is the pure part of `toa scaling` (the paper's scaling figure): which searches have to run, how the
candidates of a budget are cut out of a larger run, and the statistics of one curve point. The flow that runs
the searches and draws the figure is flows/scaling.py.

Reusing generations across budgets. A run at budget M contains the run at a smaller budget N when the strategy's
plan for N is the plan for M cut short, generation for generation:
- random      prefix: generation i is a fresh answer whose sampling seed depends on (seed, prompt, i) only;
- seq_refine  prefix: chain c holds generations c*K .. c*K+K-1 and only depends on its own earlier steps;
              budget N keeps chains 0.. and cuts the last one short, which is exactly the indices < N;
- moa         prefix: stack s, layer l, agent k is generation s*K*L + l*K + k; a budget cuts whole layers, then the
              first agents of the last layer, i.e. again exactly the indices < N;
- self_moa    prefix: the same plan as moa with W samples of one model per layer instead of the K models;
- ensemble    per model: the budget is split N//K per agent (remainder to the first agents) and the call order is
              shuffled with a seed that depends on the budget, so indices do not line up; the first n_k(N)
              answers of each agent k in the larger run are, however, a sample of exactly the same distribution
              (independent fresh answers, n_k(N) <= n_k(M)). Distributionally equal, not byte-identical;
- toa, prs    no reuse: what TOA does at play t depends on the budget (width = N/3), and PRS refines the best of
              its first N/2 answers, so every budget is its own search.
- ab_mcts     no reuse: its exploration floor is a share of the plays so far, but its Thompson draws interleave
              with the budget's plays, so a smaller budget is not a prefix of a larger one (kept separate to be safe).
With a seeded backend (the sampling seed is honoured) the prefix strategies reproduce the smaller run exactly.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Literal, Mapping, Sequence

from toa_core.config import STRATEGIES
from toa_core.strategies.base import derive_seed
from toa_core.strategies.ensemble import per_model_counts

ReuseMode = Literal["prefix", "per_model", "none"]

REUSE: dict[str, ReuseMode] = {
    "random": "prefix",
    "seq_refine": "prefix",
    "moa": "prefix",
    "self_moa": "prefix",
    "ensemble": "per_model",
    "toa": "none",
    "ab_mcts": "none",
    "prs": "none",
}
assert set(REUSE) == set(STRATEGIES), "every strategy needs a reuse rule"

TOP_K = 10  # the paper's "average top-10 reward"


def top_k_for(budgets: Sequence[int], top_k: int = TOP_K) -> int:
    """The k of the "mean top-k reward" curve: 10 as in the paper, but never more than the smallest budget, so
    every point of a sweep averages the same number of responses (a top-10 of 4 candidates would be a top-4, and
    the curve would fall as the budget grows)."""
    return max(1, min(top_k, min(budgets)))


def parse_budgets(text: str | Iterable[int]) -> list[int]:
    """'16,40,80,160' (or a list of ints) -> sorted unique positive budgets; ValueError names the bad item."""
    items = [part.strip() for part in text.split(",")] if isinstance(text, str) else list(text)
    budgets: set[int] = set()
    for item in items:
        if item == "":
            continue
        try:
            budget = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"budget '{item}' is not an integer; give generations per prompt like 16,40,80,160") from None
        if budget < 1:
            raise ValueError(f"budget {budget} must be at least 1 generation per prompt")
        budgets.add(budget)
    if not budgets:
        raise ValueError("no budgets given; e.g. --budgets 16,40,80,160")
    return sorted(budgets)


def parse_strategies(text: str | Iterable[str]) -> list[str]:
    """'toa,random' (or a list) -> the strategies in the given order, without repeats; ValueError on unknown ones."""
    items = [part.strip() for part in text.split(",")] if isinstance(text, str) else list(text)
    chosen: list[str] = []
    for item in items:
        if not item:
            continue
        if item not in REUSE:
            raise ValueError(f"unknown strategy '{item}'; known: {', '.join(STRATEGIES)}")
        if item not in chosen:
            chosen.append(item)
    if not chosen:
        raise ValueError(f"no strategies given; choose from {', '.join(STRATEGIES)}")
    return chosen


def planned_runs(strategy: str, budgets: Sequence[int], existing: Iterable[int] = ()) -> list[int]:
    """The budgets at which `strategy` has to be searched so that every budget in `budgets` can be read off.

    Reusable strategies need one run at the largest budget, or any finished run (`existing`) at least that large;
    the others need one run per budget.
    """
    budgets = sorted(set(budgets))
    if REUSE[strategy] == "none":
        return budgets
    largest = budgets[-1]
    covering = sorted(b for b in existing if b >= largest)
    return [covering[0] if covering else largest]


def source_run(strategy: str, budget: int, runs: Iterable[int]) -> int:
    """Which of the finished `runs` of `strategy` holds the candidates of `budget`."""
    runs = sorted(set(runs))
    if REUSE[strategy] == "none":
        if budget not in runs:
            raise ValueError(f"{strategy} at budget {budget} needs its own search, but only {runs} ran")
        return budget
    covering = [b for b in runs if b >= budget]
    if not covering:
        raise ValueError(f"{strategy}: no run at a budget >= {budget} (ran: {runs})")
    return covering[0]


def candidate_index(candidate_id: str) -> int:
    """The generation index of a candidate id `<prompt_id>-<index>` (its position in the strategy's plan)."""
    try:
        return int(candidate_id.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"candidate id '{candidate_id}' does not end in '-<generation index>'") from None


def candidates_at_budget(strategy: str, rows: Sequence[Mapping[str, Any]], budget: int,
                         model_order: Sequence[str]) -> list[Mapping[str, Any]]:
    """The candidates (rows with candidate_id and model) of one prompt that a search at `budget` would have made,
    cut out of a run at a budget >= `budget` (see the module docstring for why each cut is valid).

    `model_order` is the configured agent order (the ensemble gives the remainder to the first agents).
    """
    ordered = sorted(rows, key=lambda row: candidate_index(row["candidate_id"]))
    if len(ordered) < budget:
        raise ValueError(f"{strategy}: a run with {len(ordered)} candidates cannot provide budget {budget}")
    mode = REUSE[strategy]
    if mode == "none":
        if len(ordered) != budget:
            raise ValueError(f"{strategy} is not reusable across budgets: need a run at {budget}, got {len(ordered)}")
        return ordered
    if mode == "prefix":
        return [row for row in ordered if candidate_index(row["candidate_id"]) < budget]
    wanted = dict(zip(model_order, per_model_counts(budget, len(model_order))))
    unknown = sorted({row["model"] for row in ordered} - set(wanted))
    if unknown:
        raise ValueError(f"ensemble candidates from models {unknown} that are not in the configured order {list(model_order)}")
    taken: dict[str, int] = {name: 0 for name in wanted}
    picked = []
    for row in ordered:
        if taken[row["model"]] < wanted[row["model"]]:
            taken[row["model"]] += 1
            picked.append(row)
    short = {name: (taken[name], wanted[name]) for name in wanted if taken[name] < wanted[name]}
    if short:
        raise ValueError(f"ensemble run has too few answers per model for budget {budget}: {short} (have, need)")
    return picked


# -- statistics -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptPoint:
    """One prompt searched by one strategy at one budget. Rewards are raw reward-model scores; None when no
    candidate of the prompt got a reward (every generation failed), so a failure never counts as a low score."""
    strategy: str
    budget: int
    prompt_id: str
    best_reward: float | None
    topk_reward: float | None  # mean of the top_k best rewards (all of them when fewer were scored)
    scored: int
    failed: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def prompt_point(strategy: str, budget: int, prompt_id: str, rows: Sequence[Mapping[str, Any]],
                 top_k: int = TOP_K) -> PromptPoint:
    """Best and top-k mean reward, failures and tokens (prompt + completion, failed requests included) of one prompt."""
    rewards = sorted((float(row["reward"]) for row in rows
                      if row.get("reward") is not None and math.isfinite(float(row["reward"]))), reverse=True)
    top = rewards[:top_k]
    return PromptPoint(
        strategy=strategy, budget=budget, prompt_id=prompt_id,
        best_reward=rewards[0] if rewards else None,
        topk_reward=sum(top) / len(top) if top else None,
        scored=len(rewards),
        failed=sum(1 for row in rows if row.get("error") is not None),
        prompt_tokens=sum(int(row.get("prompt_tokens") or 0) for row in rows),
        completion_tokens=sum(int(row.get("completion_tokens") or 0) for row in rows),
    )


@dataclass(frozen=True)
class CurvePoint:
    """One point of one curve: the mean over prompts, with a bootstrap confidence interval and the SEM."""
    strategy: str
    budget: int
    prompts: int               # prompts searched
    prompts_scored: int        # prompts with at least one reward (the means are over these)
    generations_failed: int
    mean_best_reward: float | None
    best_ci_low: float | None
    best_ci_high: float | None
    best_sem: float | None
    top_k: int                 # k of the top-k columns (see top_k_for)
    mean_topk_reward: float | None
    topk_ci_low: float | None
    topk_ci_high: float | None
    topk_sem: float | None
    mean_tokens: float         # prompt + completion tokens per prompt: the compute axis
    mean_completion_tokens: float

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


PROMPT_COLUMNS = tuple(f.name for f in fields(PromptPoint))
CURVE_COLUMNS = tuple(f.name for f in fields(CurvePoint))


def mean_interval(values: Sequence[float], *, samples: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> tuple[float | None, float | None, float | None, float | None]:
    """(mean, low, high, sem): percentile-bootstrap interval over the values (prompts) and the standard error.
    With one value the interval and SEM are that value / None (nothing to resample)."""
    n = len(values)
    if n == 0:
        return None, None, None, None
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean, None
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(samples))
    tail = (1.0 - confidence) / 2.0
    low = means[min(samples - 1, int(math.floor(tail * samples)))]
    high = means[min(samples - 1, int(math.ceil((1.0 - tail) * samples)) - 1)]
    return mean, low, high, sem


def summarize(points: Iterable[PromptPoint], *, top_k: int = TOP_K, bootstrap_samples: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> list[CurvePoint]:
    """Curve points, one per (strategy, budget), in first-seen strategy order and increasing budget.
    `top_k` is the k the points' topk_reward was computed with (recorded in every row)."""
    groups: dict[tuple[str, int], list[PromptPoint]] = {}
    order: list[str] = []
    for point in points:
        groups.setdefault((point.strategy, point.budget), []).append(point)
        if point.strategy not in order:
            order.append(point.strategy)
    curve = []
    for strategy, budget in sorted(groups, key=lambda key: (order.index(key[0]), key[1])):
        group = groups[(strategy, budget)]
        best = [p.best_reward for p in group if p.best_reward is not None]
        top = [p.topk_reward for p in group if p.topk_reward is not None]
        # One seed per (strategy, budget) so adding a strategy does not move the others' intervals.
        point_seed = derive_seed(seed, strategy, budget)
        best_stats = mean_interval(best, samples=bootstrap_samples, confidence=confidence, seed=point_seed)
        top_stats = mean_interval(top, samples=bootstrap_samples, confidence=confidence, seed=point_seed + 1)
        curve.append(CurvePoint(
            strategy=strategy, budget=budget, prompts=len(group), prompts_scored=len(best),
            generations_failed=sum(p.failed for p in group),
            mean_best_reward=best_stats[0], best_ci_low=best_stats[1], best_ci_high=best_stats[2], best_sem=best_stats[3],
            top_k=top_k, mean_topk_reward=top_stats[0], topk_ci_low=top_stats[1], topk_ci_high=top_stats[2],
            topk_sem=top_stats[3],
            mean_tokens=sum(p.tokens for p in group) / len(group),
            mean_completion_tokens=sum(p.completion_tokens for p in group) / len(group),
        ))
    return curve


def table_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Rows as CSV text with the given header; None becomes an empty cell."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if row.get(key) is None else row[key]) for key in columns})
    return buffer.getvalue()


def prompt_points(strategy: str, budgets: Sequence[int], runs: Mapping[int, Sequence[Mapping[str, Any]]],
                  prompt_ids: Sequence[str], model_order: Sequence[str], top_k: int = TOP_K) -> list[PromptPoint]:
    """Every (budget, prompt) point of one strategy. `runs` maps each finished run's budget to its candidate rows
    (all prompts); each budget is read from the smallest run that can provide it."""
    by_run: dict[int, dict[str, list[Mapping[str, Any]]]] = {}
    for run_budget, rows in runs.items():
        grouped: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            grouped.setdefault(row["prompt_id"], []).append(row)
        by_run[run_budget] = grouped
    points = []
    for budget in sorted(set(budgets)):
        run_budget = source_run(strategy, budget, runs)
        for prompt_id in prompt_ids:
            rows = by_run[run_budget].get(prompt_id)
            if not rows:
                raise ValueError(f"{strategy} run at budget {run_budget} has no candidates for prompt {prompt_id}")
            picked = candidates_at_budget(strategy, rows, budget, model_order)
            points.append(prompt_point(strategy, budget, prompt_id, picked, top_k=top_k))
    return points
