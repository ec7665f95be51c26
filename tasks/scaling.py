"""Prefect tasks of the scaling flow: search one strategy at its planned budgets, then tabulate and plot.

Layout in the run folder (`runs/<run_id>/`):
    prompts/part-*.parquet                         the prompts, shared by every strategy (ingested once)
    scaling/samples/<strategy>-n<budget>.parquet   every candidate of one search run (published when complete)
    scaling/checkpoints/<strategy>-n<budget>/      one file per finished prompt while a run is in progress
    scaling/scaling.csv, scaling.json              one row per (strategy, budget): means, intervals, tokens
    scaling/per_prompt.csv                         one row per (strategy, budget, prompt)
    scaling/scaling.png                            the figure (also a Prefect artifact)

A rerun of the same run id skips every published run and every checkpointed prompt, so an interrupted sweep
loses only the searches in flight; a sweep extended to a larger budget reuses any published run that covers it.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Sequence

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.store import Store, open_store
from tasks.synthesis import run_key
from toa_core.candidate_table import candidates_to_table, parquet_bytes_to_table, table_to_parquet_bytes
from toa_core.config import SearchConfig
from toa_core.engine import run_search
from toa_core.ingest import read_prompts
from toa_core.records import Prompt, PromptResult
from toa_core.scaling import (CURVE_COLUMNS, PROMPT_COLUMNS, REUSE, CurvePoint, planned_runs, prompt_points,
                              summarize, table_csv, top_k_for)
from toa_core.strategies import SearchContext
from runconfig import RunConfig

log = logging.getLogger(__name__)

STRATEGY_LABELS = {
    "toa": "TOA", "random": "Random", "ensemble": "Par. Ensemble", "prs": "PRS", "seq_refine": "Seq. Refine",
    "moa": "MoA", "self_moa": "Self-MoA",
}
_RUN_FILE = re.compile(r"^(?P<strategy>[a-z_]+)-n(?P<budget>\d+)\.parquet$")


# -- where things live ------------------------------------------------------------------------------------------

def scaling_key(run_id: str, *parts: str) -> str:
    return run_key(run_id, "scaling", *parts)


def samples_key(run_id: str, strategy: str, budget: int) -> str:
    return scaling_key(run_id, "samples", f"{strategy}-n{budget}.parquet")


def finished_runs(store: Store, run_id: str, strategy: str) -> list[int]:
    """Budgets at which `strategy` has a published (complete) run in this run folder."""
    budgets = []
    for key in store.list(scaling_key(run_id, "samples") + "/"):
        match = _RUN_FILE.match(key.rsplit("/", 1)[-1])
        if match and match["strategy"] == strategy:
            budgets.append(int(match["budget"]))
    return sorted(budgets)


def search_config_at(cfg: RunConfig, strategy: str, budget: int) -> SearchConfig:
    """The run's search settings for one (strategy, budget). An explicit `search.width` (given for the config's
    own budget) keeps its ratio to the budget, never below the number of models: the paper's width is a share of
    N (N/3 for chat, N/2 for math), so it has to shrink with a smaller budget."""
    update: dict[str, Any] = {"strategy": strategy, "budget": budget}
    if cfg.search.width is not None:
        update["width"] = max(len(cfg.models), cfg.search.width * budget // cfg.search.budget)
    return SearchConfig.model_validate({**cfg.search.model_dump(), **update})


# -- searching --------------------------------------------------------------------------------------------------

@task(name="scaling-search", cache_policy=NO_CACHE)
def search_strategy(cfg: RunConfig, run_id: str, strategy: str, budgets: list[int],
                    endpoints: dict[str, Any] | None = None) -> dict[str, Any]:
    """Search every prompt of the run with `strategy` at each budget it needs (see toa_core.scaling.REUSE).

    Returns {"strategy", "runs": {budget: uri}, "searched": [budgets searched now], "generations": new ones}.
    """
    store = open_store(cfg.store)
    prompts = read_prompts(store, run_id)
    needed = planned_runs(strategy, budgets, existing=finished_runs(store, run_id, strategy))
    todo = [b for b in needed if not store.exists(samples_key(run_id, strategy, b))]
    generations = 0
    if todo:
        generations = asyncio.run(_search_budgets(cfg, store, run_id, strategy, todo, prompts, endpoints or {}))
    runs = {b: store.uri(samples_key(run_id, strategy, b)) for b in needed}
    log.info("scaling %s: runs at %s (%s searched now, %d new generations; reuse: %s)",
             strategy, needed, todo or "none", generations, REUSE[strategy])
    return {"strategy": strategy, "runs": runs, "searched": todo, "generations": generations}


async def _search_budgets(cfg: RunConfig, store: Store, run_id: str, strategy: str, budgets: list[int],
                          prompts: list[Prompt], endpoints: dict[str, Any]) -> int:
    """One set of backends for all of a strategy's budgets (loading models is the slow part on CPU)."""
    from infra.runtime import open_backends

    generations = 0
    async with open_backends(cfg, endpoints) as (agents, reward):
        for budget in budgets:
            search = search_config_at(cfg, strategy, budget)
            prefix = scaling_key(run_id, "checkpoints", f"{strategy}-n{budget}")
            finished = {key.rsplit("/", 1)[-1].removesuffix(".parquet") for key in store.list(prefix + "/")
                        if key.endswith(".parquet")}
            pending = [p for p in prompts if p.prompt_id not in finished]

            async def checkpoint(result: PromptResult, prefix: str = prefix) -> None:
                await asyncio.to_thread(store.write_bytes, f"{prefix}/{result.prompt.prompt_id}.parquet",
                                        table_to_parquet_bytes(candidates_to_table(result.candidates)))

            if pending:
                ctx = SearchContext(agents=agents, reward=reward, search=search)
                await run_search(pending, ctx, on_result=checkpoint)
                generations += len(pending) * budget
            _publish_run(store, run_id, strategy, budget, [p.prompt_id for p in prompts], prefix)
    return generations


def _publish_run(store: Store, run_id: str, strategy: str, budget: int, prompt_ids: list[str], prefix: str) -> None:
    """Merge the per-prompt checkpoints (in prompt order) into the run's samples file, then drop them."""
    tables = [parquet_bytes_to_table(store.read_bytes(f"{prefix}/{pid}.parquet")) for pid in prompt_ids]
    table = pa.concat_tables(tables) if tables else candidates_to_table([])
    store.write_bytes(samples_key(run_id, strategy, budget), table_to_parquet_bytes(table))
    for key in store.list(prefix + "/"):
        store.delete(key)


# -- the table and the figure ---------------------------------------------------------------------------------

@task(name="scaling-report", cache_policy=NO_CACHE)
def report_scaling(cfg: RunConfig, run_id: str, strategies: list[str], budgets: list[int],
                   runs: dict[str, dict[int, str]], bootstrap_samples: int = 1000) -> dict[str, Any]:
    """Cut every budget out of the runs, compute the curve points, and publish the CSV/JSON table and the PNG."""
    from tasks.artifacts import figure_png, publish_png, publish_table

    store = open_store(cfg.store)
    prompt_ids = [p.prompt_id for p in read_prompts(store, run_id)]
    model_order = [m.name for m in cfg.models]
    top_k = top_k_for(budgets)
    points = []
    for strategy in strategies:
        rows_by_run = {int(budget): parquet_bytes_to_table(store.read_bytes(store.key_of(uri))).to_pylist()
                       for budget, uri in runs[strategy].items()}
        points += prompt_points(strategy, budgets, rows_by_run, prompt_ids, model_order, top_k=top_k)
    curve = summarize(points, top_k=top_k, bootstrap_samples=bootstrap_samples, seed=cfg.search.seed)

    rows = [point.as_row() for point in curve]
    store.write_text(scaling_key(run_id, "scaling.csv"), table_csv(rows, CURVE_COLUMNS))
    store.write_text(scaling_key(run_id, "per_prompt.csv"), table_csv([p.as_row() for p in points], PROMPT_COLUMNS))
    publish_table(store, scaling_key(run_id, "scaling.json"), rows,
                  title=f"Scaling sweep {run_id}: mean best / top-{top_k} reward per strategy and budget",
                  artifact="scaling-table")
    title = f"{cfg.name}: {len(prompt_ids)} prompts, reward {cfg.reward.model or cfg.reward.kind}"
    png = publish_png(store, scaling_key(run_id, "scaling.png"), figure_png(scaling_figure(curve, title)),
                      title=f"Scaling curves of run {run_id}", artifact="scaling-figure")
    return {"table_csv": store.uri(scaling_key(run_id, "scaling.csv")),
            "table_json": store.uri(scaling_key(run_id, "scaling.json")),
            "per_prompt_csv": store.uri(scaling_key(run_id, "per_prompt.csv")),
            "figure": png, "rows": rows}


def scaling_figure(curve: Sequence[CurvePoint], title: str = ""):
    """The paper's scaling figure: mean best and mean top-k reward (rows) against generations and against tokens
    per prompt (columns), one line per strategy, shaded 95% bootstrap intervals over prompts."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    top_k = curve[0].top_k if curve else 10
    metrics = (("mean_best_reward", "best_ci_low", "best_ci_high", "mean best reward"),
               ("mean_topk_reward", "topk_ci_low", "topk_ci_high", f"mean top-{top_k} reward"))
    x_axes = (("budget", "generations per prompt"), ("mean_tokens", "tokens per prompt (prompt + completion)"))
    strategies = list(dict.fromkeys(point.strategy for point in curve))
    colors = plt.get_cmap("tab10")
    for row, (value, low, high, ylabel) in enumerate(metrics):
        for col, (x_field, xlabel) in enumerate(x_axes):
            ax = axes[row][col]
            for i, strategy in enumerate(strategies):
                points = [p for p in curve if p.strategy == strategy and getattr(p, value) is not None]
                if not points:
                    continue
                xs = [getattr(p, x_field) for p in points]
                ax.plot(xs, [getattr(p, value) for p in points], marker="o", color=colors(i),
                        label=STRATEGY_LABELS.get(strategy, strategy), linewidth=2 if strategy == "toa" else 1.3)
                ax.fill_between(xs, [getattr(p, low) for p in points], [getattr(p, high) for p in points],
                                color=colors(i), alpha=0.15, linewidth=0)
            ax.set_xlabel(xlabel)
            if x_field == "budget":
                ax.set_xticks(sorted({p.budget for p in curve}))
            if col == 0:
                ax.set_ylabel(ylabel)
            if x_field == "mean_tokens":
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:  # one legend for all four panels, below them, so it never hides a curve
        figure.legend(handles, labels, loc="lower center", ncol=len(handles), frameon=False)
    figure.suptitle(title + ("\n" if title else "") + "shaded: 95% bootstrap interval over prompts", fontsize=11)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return figure
