"""Prefect tasks of the pipeline flow: the incremental prompt index, the accumulated training data, the gate.

Thin on purpose: the rules live in infra.incremental, infra.promotion and infra.registry. Tasks take the store
config and run ids and return small JSON-able dicts (never datasets).
"""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from infra.config import StoreConfig
from infra.incremental import (AccumulationConfig, accumulate_datasets, indexed_runs, plan_accumulation, prompt_counts,
                               prompt_ids_sampled_in_run, record_synthesized_prompts, synthesized_prompt_ids,
                               training_runs_of)
from infra.promotion import DEFAULT_MAX_FAILURE_RATE, DEFAULT_MIN_SCORED_ITEMS, decide_promotion, report_markdown
from infra.registry import latest_scores, promotion_history, read_latest, record_decision
from infra.run_ids import ACCUMULATED_SUFFIX
from infra.store import open_store
from tasks.artifacts import publish_markdown




def accumulated_data_run_id(run_id: str) -> str:
    """The data run that holds a pipeline run's accumulated datasets (training reads runs/<id>/datasets/)."""
    return f"{run_id}{ACCUMULATED_SUFFIX}"


@task(name="previously-synthesized-prompts")
def previously_synthesized(store_cfg: StoreConfig, run_id: str) -> int:
    """How many prompt ids earlier runs already synthesized (the ones this run skips)."""
    return len(synthesized_prompt_ids(open_store(store_cfg), exclude_runs=[run_id]))


@task(name="record-synthesized-prompts")
def record_prompts(store_cfg: StoreConfig, run_id: str) -> int:
    """Add the prompts this run sampled to the store's index, so later runs skip them; returns their count."""
    store = open_store(store_cfg)
    prompt_ids = prompt_ids_sampled_in_run(store, run_id)
    key = record_synthesized_prompts(store, run_id, prompt_ids)
    get_run_logger().info("recorded %d prompt ids of run %s in %s", len(prompt_ids), run_id, store.uri(key))
    return len(prompt_ids)


@task(name="runs-awaiting-training")
def runs_awaiting_training(store_cfg: StoreConfig) -> list[str]:
    """Indexed runs with prompts that no gate-decided model was trained on (oldest first).

    Empty means every synthesized prompt already went into a model that was evaluated and judged, so training
    again on the same data would only repeat that result. A run whose training or evaluation failed is not
    covered: the next pipeline run trains on its data.
    """
    store = open_store(store_cfg)
    covered: set[str] = set()
    for record in promotion_history(store):
        covered.update(training_runs_of(store, record["run_id"]))
    return [run for run, count in prompt_counts(store).items() if count and run not in covered]


@task(name="accumulate-datasets")
def accumulate(store_cfg: StoreConfig, run_id: str, accumulation: AccumulationConfig | None = None
               ) -> dict[str, Any] | None:
    """Build the training data of `run_id` from the indexed runs' datasets (newest wins per prompt_id), bounded by
    `accumulation` (a window of nights, a per-night decay: infra.incremental).

    Returns None when `run_id` is the only night (its own datasets are the whole data), else
    {"data_run_id", "runs", "rows", "keys", "plan", "by_run"} with the data written to
    runs/<run_id>-accumulated/datasets/, its lineage.json, and a card (datasets/README.md) saying which nights' rows
    were used and why.
    """
    store = open_store(store_cfg)
    counts = prompt_counts(store)
    # Nights: runs that synthesized something (a run that found nothing new has no data to weigh).
    nights = [run for run in indexed_runs(store) if run != run_id and counts.get(run)] + [run_id]
    if len(nights) == 1:
        return None
    plan = plan_accumulation(nights, accumulation)
    used = [entry["run_id"] for entry in plan if entry["used"]]
    data_run_id = accumulated_data_run_id(run_id)
    summary = accumulate_datasets(store, used, f"runs/{data_run_id}/datasets",
                                  weights={entry["run_id"]: entry["weight"] for entry in plan},
                                  seed=(accumulation or AccumulationConfig()).seed)
    store.write_json(f"runs/{data_run_id}/lineage.json", {"built_for": run_id, "from_runs": used, "rows": summary["rows"],
                                                          "plan": plan, "by_run": summary["by_run"]})
    store.write_text(f"runs/{data_run_id}/datasets/README.md",
                     accumulated_card(run_id, data_run_id, plan, summary, accumulation or AccumulationConfig()))
    left_out = [entry["run_id"] for entry in plan if not entry["used"]]
    get_run_logger().info("accumulated %s from %d runs into %s%s", summary["rows"], len(used),
                          store.uri(f"runs/{data_run_id}/datasets/"),
                          f"; left out {', '.join(left_out)}" if left_out else "")
    return {"data_run_id": data_run_id, **summary, "plan": plan}


def accumulated_card(run_id: str, data_run_id: str, plan: list[dict[str, Any]], summary: dict[str, Any],
                     accumulation: AccumulationConfig) -> str:
    """The accumulated data's README: the rule in force, then per night its weight, rows kept and why."""
    rule = []
    if accumulation.window_nights is not None:
        rule.append(f"the newest {accumulation.window_nights} night(s) only (`pipeline.accumulate.window_nights`)")
    if accumulation.decay_per_night is not None:
        rule.append(f"a night k nights old keeps a seeded share {accumulation.decay_per_night:g}^k of its prompts, "
                    f"none below weight {accumulation.min_weight:g} (`pipeline.accumulate.decay_per_night`)")
    lines = [f"# Training data of run `{run_id}` (data run `{data_run_id}`)", "",
             "The datasets of the nightly runs below, concatenated; a prompt synthesized by several runs keeps the "
             "rows of the newest one. Rule: " + ("; ".join(rule) if rule else "every night, every row (no bound "
                                                "configured)") + ".", "",
             "| night | age | weight | SFT rows kept / available | DPO rows kept / available | why |",
             "|---|---|---|---|---|---|"]
    for entry in reversed(plan):
        counts = summary["by_run"].get(entry["run_id"])
        cells = [f"{counts[stage]['kept']} / {counts[stage]['rows']}" if counts else "-" for stage in ("sft", "dpo")]
        lines.append(f"| {entry['run_id']} | {entry['age']} | {entry['weight']:.3g} | {cells[0]} | {cells[1]} | "
                     f"{entry['reason']} |")
    left_out = [entry["run_id"] for entry in plan if not entry["used"]]
    lines += ["", "Totals: " + ", ".join(f"{key} {rows}" for key, rows in sorted(summary["rows"].items())) + "."]
    if left_out:
        lines += ["", f"Not used at all: {', '.join(left_out)} (their rows are not in this training set)."]
    return "\n".join(lines) + "\n"


@task(name="promotion-gate")
def promotion_gate(store_cfg: StoreConfig, run_id: str, candidate_scores: dict[str, Any],
                   current_scores: dict[str, Any] | None, compared_with: str | None, gated: list[str],
                   max_regression: float, flow_run_id: str | None = None, base_scores: dict[str, Any] | None = None,
                   max_failure_rate: float | None = DEFAULT_MAX_FAILURE_RATE,
                   min_scored_items: int = DEFAULT_MIN_SCORED_ITEMS
                   ) -> dict[str, Any]:
    """Decide, record the decision, move `latest` when it promotes; returns the record as a dict."""
    store = open_store(store_cfg)
    decision = decide_promotion(candidate_scores, current_scores, gated, max_regression, base=base_scores,
                                max_failure_rate=max_failure_rate, min_scored_items=min_scored_items)
    record = record_decision(store, run_id, decision, compared_with=compared_with, candidate_scores=candidate_scores,
                             current_scores=current_scores, flow_run_id=flow_run_id, base_scores=base_scores)
    verdict = "PROMOTED" if record.promoted else "NOT PROMOTED"
    publish_markdown(store, f"runs/{run_id}/reports/promotion.md",
                     report_markdown(run_id, decision, compared_with, candidate_scores, gated),
                     title=f"Promotion gate, run {run_id}: {verdict}", artifact="promotion")
    (get_run_logger().info if record.promoted else get_run_logger().warning)("%s: %s", verdict, record.reason)
    return record.to_dict()


def current_latest(store_cfg: StoreConfig) -> tuple[str | None, dict[str, Any] | None]:
    """The run `latest` points at and the gated scores recorded for its model when it was promoted, read once
    from the registry before the gate (the run id is passed to it as `compared_with`). The scores come from the
    registry, never from that run's scores.json, which another evaluation could have rewritten since."""
    pointer = read_latest(open_store(store_cfg))
    if pointer is None:
        return None, None
    return pointer["run_id"], latest_scores(open_store(store_cfg), pointer)


def flatten_scores(scores_by_benchmark: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"<benchmark>.<metric>": {value, ci_low, ci_high, n, higher_is_better}} for every metric, including those
    without an interval (shown to people; the gate gets evaluation.scores.gate_table, which leaves them out)."""
    return {f"{benchmark}.{name}": {key: metric.get(key) for key in ("value", "ci_low", "ci_high", "n", "higher_is_better")}
            for benchmark, data in sorted(scores_by_benchmark.items())
            for name, metric in sorted(data.get("metrics", {}).items())}
