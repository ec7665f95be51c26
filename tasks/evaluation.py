"""Prefect tasks of the evaluate flow: evaluate one benchmark, evaluate the base model (cached), report.

Thin on purpose: the work lives in evaluation/. Tasks take the config (path or mapping) and small strings, and
return store URIs and headline numbers, never outputs or datasets.
"""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from evaluation.config import BenchmarkConfig
from evaluation.generation import resolve_model_under_test
from evaluation.report import comparison_png, comparison_rows, markdown_report
from evaluation.runner import SCORES_FILE, evaluate_sync
from evaluation.scores import base_cache_prefix, eval_prefix, previous_scores
from infra.store import open_store
from tasks.artifacts import PhaseTimer, artifact_key, publish_markdown, publish_png, publish_table
from tasks.gpu import gpu_slot
from runconfig import RunConfig, load_config, parse_config


def run_config(config: str | dict[str, Any]) -> RunConfig:
    """The run config from a YAML path or an already loaded mapping."""
    return parse_config(config, source="<config>") if isinstance(config, dict) else load_config(config)


def _benchmark(cfg: RunConfig, name: str) -> BenchmarkConfig:
    for benchmark in cfg.evaluation.benchmarks:
        if benchmark.name == name:
            return benchmark
    raise ValueError(f"no benchmark named '{name}' in evaluation.benchmarks")


def _headline(scores: dict[str, Any]) -> dict[str, Any]:
    return {name: round(m["value"], 3) if m.get("value") is not None else None for name, m in scores["metrics"].items()}


# Not retried by Prefect: the judges and model clients retry their own requests; a re-run of the flow reuses the
# outputs already in the store.
@task(name="evaluate-benchmark", task_run_name="evaluate-{benchmark}", retries=0, cache_policy=NO_CACHE)
def evaluate_benchmark(config: str | dict[str, Any], benchmark: str, model: str, run_id: str,
                       synthesis_reward: dict[str, Any] | None) -> dict[str, Any]:
    """Generate, judge and score `model` on one benchmark into runs/<run_id>/eval/<benchmark>/."""
    cfg = run_config(config)
    store = open_store(cfg.store)
    model_under_test = resolve_model_under_test(model, cfg.evaluation.generation, store)
    prefix = eval_prefix(run_id, benchmark)
    with gpu_slot(f"evaluate-{benchmark}-{run_id}"):  # the model under test and the judges run in process
        scores = evaluate_sync(store, prefix, _benchmark(cfg, benchmark), cfg.evaluation, model_under_test,
                               run_id=run_id, synthesis_reward=synthesis_reward)
    logger = get_run_logger()
    logger.info("%s: %s", benchmark, _headline(scores))
    if scores["circularity"]["circular"]:
        logger.warning("%s: circular evaluation: %s", benchmark, "; ".join(scores["circularity"]["reasons"]))
    return {"scores": store.uri(f"{prefix}/{SCORES_FILE}"), "headline": _headline(scores),
            "circular": scores["circularity"]["circular"]}


@task(name="evaluate-base-model", task_run_name="evaluate-base-{benchmark}", retries=0, cache_policy=NO_CACHE)
def evaluate_base_model(config: str | dict[str, Any], benchmark: str,
                        synthesis_reward: dict[str, Any] | None) -> str | None:
    """The base model's scores on this benchmark (cached across runs under eval_cache/base/); its key or None."""
    cfg = run_config(config)
    if not cfg.evaluation.base_model:
        return None
    store = open_store(cfg.store)
    bench = _benchmark(cfg, benchmark)
    prefix = base_cache_prefix(cfg.evaluation, bench)
    key = f"{prefix}/{SCORES_FILE}"
    if store.exists(key):
        get_run_logger().info("base model scores for %s reused from %s", benchmark, store.uri(key))
        return key
    model_under_test = resolve_model_under_test(cfg.evaluation.base_model, cfg.evaluation.generation, store)
    with gpu_slot(f"evaluate-base-{benchmark}"):
        evaluate_sync(store, prefix, bench, cfg.evaluation, model_under_test, run_id=None,
                      synthesis_reward=synthesis_reward)
    return key


@task(name="evaluation-report", task_run_name="report-{benchmark}", cache_policy=NO_CACHE)
def evaluation_report(config: str | dict[str, Any], run_id: str, benchmark: str, base_key: str | None) -> dict[str, str]:
    """Markdown report + PNG (this run vs the previous evaluated run, when there is one, vs the base model) + table.

    Prefect artifact keys: evaluation-<benchmark> (table), evaluation-<benchmark>-report, evaluation-<benchmark>-plot.
    """
    timer = PhaseTimer()
    store = open_store(run_config(config).store)
    current = store.read_json(f"{eval_prefix(run_id, benchmark)}/{SCORES_FILE}")
    previous = previous_scores(store, run_id, benchmark)
    base = store.read_json(base_key) if base_key else None
    prefix = eval_prefix(run_id, benchmark)
    timer.lap("read scores")
    markdown = markdown_report(current, previous, base)
    rows = comparison_rows(current, previous, base)
    png = comparison_png(current, previous, base)
    timer.lap("report and plot")
    against = " vs ".join(["this run"] + (["previous run"] if previous else []) + (["base model"] if base else []))
    publish_markdown(store, f"{prefix}/report.md", markdown, title=f"Evaluation {benchmark}, run {run_id}",
                     artifact=artifact_key("evaluation", benchmark, "report"))
    png_uri = publish_png(store, f"{prefix}/comparison.png", png,
                          title=f"Evaluation {benchmark}, run {run_id}: {against}",
                          artifact=artifact_key("evaluation", benchmark, "plot"))
    publish_table(store, f"{prefix}/comparison.json", rows, title=f"Evaluation {benchmark}, run {run_id}",
                  artifact=artifact_key("evaluation", benchmark))
    timer.lap("publish")  # store writes and Prefect artifacts
    get_run_logger().info("evaluation report of %s, run %s: %s", benchmark, run_id, timer.summary())
    return {"report": store.uri(f"{prefix}/report.md"), "plot": png_uri}
