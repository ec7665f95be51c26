"""Decontamination in a run: the index (shipped + config's evaluation sets), the prompt check, the answer check.

- `decontaminate_prompts` (a task, after ingest): every prompt message is checked; matched prompts are written to
  `runs/<id>/decontamination/prompts.jsonl` (prompt id, source line, benchmark, item id, the matching n-gram)
  and left out of the shard plan. The summary is `decontamination/summary.json` (reused on resume).
- `contaminated_targets` (called by ranking): SFT targets / DPO chosen that overlap an evaluation set; ranking
  is redone with them excluded, and they are written to `decontamination/answers.jsonl`.
The index itself is toa_core/decontamination.py; reading benchmark files into one is
evaluation/decontamination_sources.py (behind `toa decontam build-index`).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from evaluation.benchmarks import BenchmarkError
from evaluation.decontamination_sources import benchmark_items
from infra.store import Store, open_store
from toa_core.decontamination import (DecontaminationConfig, DecontaminationIndex, check_prompts, load_indexes,
                                      match_reason)
from toa_core.ingest import read_prompts
from runconfig import RunConfig

log = logging.getLogger(__name__)
PROMPTS_FILE = "decontamination/prompts.jsonl"
ANSWERS_FILE = "decontamination/answers.jsonl"
SUMMARY_FILE = "decontamination/summary.json"


# ----------------------------------------------------------------------------------------------------------
# The run's index


def run_index(cfg: RunConfig) -> tuple[DecontaminationIndex, list[dict[str, str]]]:
    """The index a run checks against, and the evaluation sets it could not read (name, reason)."""
    settings: DecontaminationConfig = cfg.synthesis.decontaminate
    index = load_indexes(settings.index_files, shipped=settings.shipped_index)
    unchecked = []
    if settings.evaluation_sets:
        for benchmark in cfg.evaluation.benchmarks:
            name = f"eval:{benchmark.name}"
            try:
                items = benchmark_items(benchmark)
            except BenchmarkError as error:
                unchecked.append({"benchmark": benchmark.name, "reason": str(error)[:300]})
                log.warning("decontamination: evaluation set '%s' could not be read (%s); only the shipped index "
                            "covers it", benchmark.name, str(error)[:200])
                continue
            extra = DecontaminationIndex(index.ngram, index.min_tokens, index.stride, index.max_items_per_ngram)
            extra.add_benchmark(name, items, source=benchmark.source or benchmark.kind)
            index.merge(extra)
    return index, unchecked


@task(name="decontaminate-prompts", cache_policy=NO_CACHE)
def decontaminate_prompts(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """Check the run's prompts against the evaluation sets; returns the summary (with the quarantined ids)."""
    store = open_store(cfg.store)
    key = f"runs/{run_id}/{SUMMARY_FILE}"
    if store.exists(key):
        return store.read_json(key)
    settings = cfg.synthesis.decontaminate
    if not settings.enabled:
        return {"enabled": False, "checked": 0, "quarantined": 0, "by_benchmark": {}, "quarantined_ids": [],
                "index": [], "unchecked": []}
    index, unchecked = run_index(cfg)
    prompts = read_prompts(store, run_id)
    records = check_prompts(index, prompts)
    by_benchmark: dict[str, int] = {}
    for record in records:
        by_benchmark[record["benchmark"]] = by_benchmark.get(record["benchmark"], 0) + 1
    if records:
        store.write_text(f"runs/{run_id}/{PROMPTS_FILE}",
                         "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        log.warning("decontamination: %d of %d prompts overlap evaluation sets (%s); quarantined in %s",
                    len(records), len(prompts), ", ".join(f"{k}: {v}" for k, v in sorted(by_benchmark.items())),
                    store.uri(f"runs/{run_id}/{PROMPTS_FILE}"))
    summary = {"enabled": True, "checked": len(prompts), "quarantined": len(records),
               "by_benchmark": by_benchmark, "quarantined_ids": [r["prompt_id"] for r in records],
               "index": index.summary(), "unchecked": unchecked,
               "rule": f"normalised {index.ngram}-gram overlap (items of {index.min_tokens}-{index.ngram - 1} tokens: "
                       f"the whole item; shorter items: the whole message)"}
    store.write_json(key, summary)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Chosen answers


def contaminated_targets(index: DecontaminationIndex, sft_tables: Iterable[pa.Table]) -> list[dict[str, Any]]:
    """SFT targets (= DPO chosen) whose text overlaps the index: [{candidate_id, prompt_id, model, match...}]."""
    rows = [row for table in sft_tables for row in table.select(["prompt_id", "candidate_id", "model", "messages"])
            .to_pylist()]
    matches = index.check([row["messages"][-1]["content"] for row in rows])
    return [{"prompt_id": row["prompt_id"], "candidate_id": row["candidate_id"], "model": row["model"],
             **match.to_dict(), "reason": match_reason(match)} for row, match in zip(rows, matches) if match is not None]


def chosen_outside_targets(sft_tables: Iterable[pa.Table], dpo_tables: Iterable[pa.Table]) -> list[pa.Table]:
    """DPO chosen answers that are not SFT targets (the policy agent's on-policy pairs choose its own best answer),
    in the layout `contaminated_targets` reads; empty when every chosen is a target (the usual ranking)."""
    targets = {candidate for table in sft_tables for candidate in table["candidate_id"].to_pylist()}
    extra = []
    for table in dpo_tables:
        keep = pa.array([c not in targets for c in table["chosen_candidate_id"].to_pylist()], pa.bool_())
        chosen = table.filter(keep)
        if chosen.num_rows:
            extra.append(pa.table({"prompt_id": chosen["prompt_id"], "candidate_id": chosen["chosen_candidate_id"],
                                   "model": chosen["chosen_model"], "messages": chosen["chosen"]}))
    return extra


def rank_without_contaminated_answers(cfg: RunConfig, store: Store, run_id: str,
                                      rank: Callable[[list[str]], tuple]) -> tuple:
    """Run `rank(excluded_ids)` and, while a target overlaps an evaluation set, again with it excluded.

    Returns rank's result; flagged answers are written to decontamination/answers.jsonl."""
    settings = cfg.synthesis.decontaminate
    result = rank([])
    if not (settings.enabled and settings.check_answers):
        return result
    index, _ = run_index(cfg)
    flagged: list[dict[str, Any]] = []
    for _ in range(5):  # each pass replaces the flagged targets by the next eligible answer
        found = contaminated_targets(index, [*result[:2], *chosen_outside_targets(result[:2], result[2:4])])
        if not found:
            break
        flagged.extend(found)
        result = rank([f["candidate_id"] for f in flagged])
    if flagged:
        store.write_text(f"runs/{run_id}/{ANSWERS_FILE}",
                         "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in flagged))
        log.warning("decontamination: %d chosen answers overlapped evaluation sets and were replaced", len(flagged))
    return result


def decontamination_counts(summary: dict[str, Any]) -> dict[str, int]:
    """The manifest's counts of the decontaminate stage: prompts checked, quarantined, and per benchmark."""
    counts = {"prompts_checked": summary.get("checked", 0), "prompts_quarantined": summary.get("quarantined", 0)}
    counts.update({f"quarantined.{name}": value for name, value in sorted(summary.get("by_benchmark", {}).items())})
    return counts
