"""The synthesis flow: ingest prompts -> decontaminate -> shard -> sample each shard -> rank -> datasets + card.

    toa synthesize --config configs/tiny.yaml --run-id X --limit 8

Re-running the same run id resumes: finished shards are skipped, and inside an unfinished shard only prompts
without a checkpoint are searched again. The flow returns store URIs, never big objects.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from infra.incremental import synthesized_prompt_ids
from infra.manifest import Manifest
from infra.registry import new_run_id
from infra.runtime import model_servers
from infra.store import open_store
from tasks.artifacts import ProgressReporter
from tasks.dataset_card import write_dataset_card
from tasks.decontamination import decontaminate_prompts, decontamination_counts
from tasks.synthesis import ingest_prompts, plan_shards, rank_candidates, report_synthesis, run_key, sample_shard_task
from runconfig import load_config


@flow(name="synthesize", task_runner=ThreadPoolTaskRunner(max_workers=8))
def synthesize(config: str = "configs/demo.yaml", run_id: str | None = None, limit: int | None = None,
               prompts: str | None = None, incremental: bool = False) -> dict[str, Any]:
    """Synthesize SFT and DPO datasets from a prompt source with the configured search strategy.

    Args:
        config: Run config YAML, relative to the project folder (e.g. configs/demo.yaml).
        run_id: Run id to create or resume; empty = a new id from the config name and the time.
        limit: Use a seeded random sample of at most this many prompts (for smoke runs).
        prompts: Prompt source overriding `synthesis.prompts.source` (file, folder, s3:// URI or dataset name).
        incremental: Skip prompts that earlier runs in this store already synthesized (nightly mode).
    """
    logger = get_run_logger()
    overrides: dict[str, Any] = {}
    if limit is not None:
        overrides["synthesis.prompts.limit"] = limit
    if prompts is not None:
        overrides["synthesis.prompts.source"] = prompts
    cfg = load_config(config, overrides)  # validated before any work starts
    run_id = run_id or new_run_id(cfg.name)
    store = open_store(cfg.store)
    manifest = Manifest.open(store, run_id, config=cfg.model_dump(mode="json"),
                             seeds={"search": cfg.search.seed, "split": cfg.synthesis.ranking.seed,
                                    "ingest": cfg.synthesis.prompts.seed if cfg.synthesis.prompts else 0})
    logger.info("synthesis run %s -> %s", run_id, store.uri(run_key(run_id) + "/"))

    # Incremental runs apply `limit` after leaving out prompts earlier runs synthesized, not at ingest.
    sample_limit = cfg.synthesis.prompts.limit if incremental and cfg.synthesis.prompts else None
    ingest_cfg = cfg
    if sample_limit is not None:
        ingest_cfg = cfg.model_copy(deep=True)
        ingest_cfg.synthesis.prompts.limit = None

    manifest.start_stage("ingest")
    ingest = ingest_prompts(ingest_cfg, run_id)
    manifest.finish_stage("ingest", counts={k: v for k, v in ingest.items() if isinstance(v, int)})

    manifest.start_stage("decontaminate")
    decontamination = decontaminate_prompts(cfg, run_id)
    manifest.add_lineage("decontaminate", [store.uri(run_key(run_id, "prompts") + "/")],
                         [store.uri(run_key(run_id, "decontamination") + "/")])
    manifest.finish_stage("decontaminate", counts=decontamination_counts(decontamination))

    excluded = sorted(synthesized_prompt_ids(store, exclude_runs=[run_id])) if incremental else []
    excluded = sorted(set(excluded) | set(decontamination["quarantined_ids"])) or None
    plan = plan_shards(cfg, run_id, excluded, sample_limit)
    manifest.start_stage("sample")
    progress = ProgressReporter(len(plan), artifact=f"synthesis-progress-{run_id}",
                                description=f"shards of run {run_id} finished")
    outcomes: list[dict[str, Any]] = []
    sampler = sample_shard_task.with_options(retries=cfg.synthesis.shard_retries,
                                             retry_delay_seconds=cfg.synthesis.shard_retry_delay_s)
    with model_servers(cfg, run_id) as endpoints:
        # Shards run `parallel_shards` at a time; each holds `search.prompt_concurrency` trees in flight.
        waves = [list(enumerate(plan))[i:i + cfg.synthesis.parallel_shards]
                 for i in range(0, len(plan), cfg.synthesis.parallel_shards)]
        for wave in waves:
            futures = [sampler.submit(cfg, run_id, index, ids, endpoints) for index, ids in wave]
            for future in futures:
                outcome = future.result()
                outcomes.append(outcome)
                progress.advance()
                logger.info("shard %05d done: %s", outcome["index"], outcome["uri"])
    manifest.add_retries("chat+reward", sum(o["retries"] for o in outcomes))
    manifest.add_lineage("sample", [store.uri(run_key(run_id, "prompts") + "/")], [o["uri"] for o in outcomes])
    manifest.finish_stage("sample", counts={
        "shards": len(outcomes),
        "candidates_generated": sum(o["candidates"] for o in outcomes),
        "failed_generations": sum(o["errors"] for o in outcomes),
        "prompts_resumed_from_checkpoints": sum(o["resumed_prompts"] for o in outcomes),
    })

    manifest.start_stage("rank")
    ranking = rank_candidates(cfg, run_id, [o["uri"] for o in outcomes])
    manifest.add_lineage("rank", [o["uri"] for o in outcomes], list(ranking["datasets"].values()))
    manifest.finish_stage("rank", counts=ranking["counts"])

    report = report_synthesis(cfg, run_id, ingest, outcomes, ranking, decontamination)
    card = write_dataset_card(cfg, run_id, ingest, decontamination, ranking)
    return {"run_id": run_id, "run_uri": store.uri(run_key(run_id) + "/"), "datasets": ranking["datasets"],
            "counts": ranking["counts"], "report": report, "card": card, "manifest": manifest.uri}
