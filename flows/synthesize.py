"""The synthesis flow: ingest prompts -> decontaminate -> shard -> sample each shard -> rank -> datasets + card.

    toa synthesize --config configs/tiny.yaml --run-id X --limit 8

Shards run in a sliding window of `synthesis.max_shards_in_flight`: as tasks of this flow run (executor `local`)
or as child flow runs of the `sample-shard` deployment on the workers of a GPU pool, one per host (executor
`workers`, tasks/shard_execution.py). Progress in prompts and generations is aggregated over all shards in the
run's progress artifact.

Re-running the same run id resumes: finished shards are skipped, and inside an unfinished shard only prompts
without a checkpoint are searched again. The flow returns store URIs, never big objects. In the Prefect UI the
flow run is named by its run id and ends with a message saying what it did; an incremental run that finds every
prompt already synthesized ends with the message "Nothing new: ..." (saying by which runs), tagged `nothing-new`,
and publishes no plots or tables.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from infra.incremental import synthesized_prompts_by_run
from infra.manifest import Manifest
from infra.run_ids import check_new_run_id, new_run_id
from infra.runtime import model_servers
from infra.store import open_store
from tasks.dataset_card import write_dataset_card
from tasks.decontamination import decontaminate_prompts, decontamination_counts
from tasks.flow_runs import finish, name_flow_run, run_name
from tasks.policy import policy_record, with_policy_agent
from tasks.run_inputs import RunInputs
from tasks.shard_execution import run_shards_locally, run_shards_on_workers
from tasks.synthesis import (config_digest, ingest_prompts, plan_shards, progress_key, rank_candidates,
                             report_synthesis, run_key)
from tasks.synthesis_progress import SynthesisProgress
from toa_core.ingest import read_prompts
from runconfig import LOCAL_MAX_SHARDS_IN_FLIGHT, load_config
from runconfig.parameters import ConfigFile, RunOverrides, override_mapping, synthesis_settings


def sample_attempt_counts(outcomes: list[dict[str, Any]]) -> dict[str, int]:
    """What one attempt of the sample stage did (shards it found complete count as skipped, not as work)."""
    return {"shards_sampled": sum(1 for o in outcomes if not o["skipped"]),
            "shards_skipped": sum(1 for o in outcomes if o["skipped"]),
            "candidates_generated": sum(o["new_candidates"] for o in outcomes),
            "failed_generations": sum(o["new_errors"] for o in outcomes),
            "prompts_resumed_from_checkpoints": sum(o["resumed_prompts"] for o in outcomes),
            "retries": sum(o["retries"] for o in outcomes)}


@flow(name="synthesize", flow_run_name=run_name,
      task_runner=ThreadPoolTaskRunner(max_workers=LOCAL_MAX_SHARDS_IN_FLIGHT))
def synthesize(config: ConfigFile = "demo.yaml", run_id: str | None = None, limit: int | None = None,
               prompts: str | None = None, incremental: bool = False,
               overrides: RunOverrides | None = None) -> dict[str, Any]:
    """Synthesize SFT and DPO datasets from a prompt source with the configured search strategy.

    Args:
        config: Run config: the name of a config in the operator's config folder (demo.yaml, ...); the operator's
            own runs (`toa synthesize`) may also give a path.
        run_id: Run id to create or resume; empty = a new id from the config name and the time.
        limit: Use a seeded random sample of at most this many prompts (for smoke runs); empty = every prompt.
        prompts: Prompt source overriding `synthesis.prompts.source` (file, folder, s3:// URI or dataset name);
            from a deployment, only a source under the operator's prompt roots (docs/operations.md).
        incremental: Skip prompts that earlier runs in this store already synthesized (nightly mode).
        overrides: Settings that replace the config file's values for this run (empty = keep them).
    """
    if run_id:
        check_new_run_id(run_id)  # before anything else: it becomes store keys and local folders
    logger = get_run_logger()
    inputs = RunInputs.of(config)  # a deployment run names an operator config; refused here otherwise
    # `prompts` is checked against the operator's prompt roots before anything is read or downloaded.
    roots = load_config(inputs.config.path, override_mapping(overrides)).synthesis.prompt_roots
    prompts = inputs.prompts(prompts, roots)
    cfg = load_config(inputs.config.path, synthesis_settings(overrides, limit, prompts))  # validated up front
    shard_config = inputs.shard_config_name() if cfg.synthesis.executor == "workers" else None
    run_id = run_id or new_run_id(cfg.name)
    name_flow_run(run_id)
    store = open_store(cfg.store)
    digest = config_digest(cfg)  # of the config file: shard hosts add the policy agent themselves
    cfg = with_policy_agent(cfg, store, run_id)  # the pinned `latest` as one more agent (when configured)
    manifest = Manifest.open(store, run_id, config=cfg.model_dump(mode="json"),
                             seeds={"search": cfg.search.seed, "split": cfg.synthesis.ranking.seed,
                                    "ingest": cfg.synthesis.prompts.seed if cfg.synthesis.prompts else 0})
    manifest.record_trust(inputs.trust(cfg.model_dump(mode="json")))
    logger.info("synthesis run %s -> %s", run_id, store.uri(run_key(run_id) + "/"))
    policy = policy_record(cfg, store, run_id)
    if policy is not None:
        manifest.note("policy", {**policy, "agent": cfg.synthesis.policy_agent.name})

    # Incremental runs apply `limit` after leaving out prompts earlier runs synthesized, not at ingest.
    sample_limit = cfg.synthesis.prompts.limit if incremental and cfg.synthesis.prompts else None
    ingest_cfg = cfg
    if sample_limit is not None:
        ingest_cfg = cfg.model_copy(deep=True)
        ingest_cfg.synthesis.prompts.limit = None

    with manifest.stage_attempt("ingest") as attempt:
        ingest = ingest_prompts(ingest_cfg, run_id)
        if ingest.get("reused"):  # a resume: the first attempt's figures (quarantined, duplicates) still hold
            ingest = {**(manifest.stage("ingest") or {}).get("counts", {}), **ingest}
        attempt.counts = {k: v for k, v in ingest.items() if isinstance(v, int) and not isinstance(v, bool)}

    with manifest.stage_attempt("decontaminate") as attempt:
        decontamination = decontaminate_prompts(cfg, run_id)
        manifest.add_lineage("decontaminate", [store.uri(run_key(run_id, "prompts") + "/")],
                             [store.uri(run_key(run_id, "decontamination") + "/")])
        attempt.counts = decontamination_counts(decontamination)

    earlier = synthesized_prompts_by_run(store, exclude_runs=[run_id]) if incremental else {}
    quarantined = set(decontamination["quarantined_ids"])
    excluded = sorted(set().union(*earlier.values()) | quarantined) or None
    plan = plan_shards(cfg, run_id, excluded, sample_limit, incremental, digest)
    if not plan:
        # Every prompt was synthesized by an earlier run (or quarantined): nothing to sample, rank or plot.
        reason = nothing_new_reason({p.prompt_id for p in read_prompts(store, run_id)}, earlier, quarantined)
        with manifest.stage_attempt("sample") as attempt:
            attempt.counts = {"shards": 0, "candidates_generated": 0}
        logger.info("synthesis run %s: %s", run_id, reason)
        return finish({"run_id": run_id, "run_uri": store.uri(run_key(run_id) + "/"), "datasets": {}, "counts": {},
                       "report": None, "card": None, "manifest": manifest.uri, "skipped": reason},
                      reason, nothing_new=True)
    outcomes: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []  # in the order shards end, also when one fails
    with manifest.stage_attempt("sample") as attempt:
        progress = SynthesisProgress(store, lambda index: progress_key(run_id, index), plan, cfg.search.budget,
                                     artifact="synthesis-progress", run_label=run_id)
        try:
            if cfg.synthesis.executor == "workers":
                # Each shard flow run starts or finds the model servers on its own host: none are started here.
                outcomes = run_shards_on_workers(
                    cfg, run_id, plan, progress, logger=logger, finished=finished,
                    parameters=shard_parameters(shard_config, limit, prompts, overrides, digest))
            else:
                with model_servers(cfg, run_id) as endpoints:
                    outcomes = run_shards_locally(cfg, run_id, plan, endpoints, progress, logger, finished=finished)
        finally:  # what this attempt did is recorded even when a shard failed
            attempt.attempt_counts = sample_attempt_counts(finished)
            manifest.add_retries("chat+reward", attempt.attempt_counts["retries"])
        manifest.add_lineage("sample", [store.uri(run_key(run_id, "prompts") + "/")], [o["uri"] for o in outcomes])
        if policy is not None:  # the promoted model wrote some of these samples (model column: the agent's name)
            manifest.add_lineage("policy", [store.uri(policy["model"])], [o["uri"] for o in outcomes])
        # The stage as a whole: every published shard, whichever attempt generated it.
        attempt.counts = {
            "shards": len(outcomes),
            "candidates_generated": sum(o["candidates"] for o in outcomes),
            "failed_generations": sum(o["errors"] for o in outcomes),
            "prompts_resumed_from_checkpoints": (manifest.stage("sample") or {}).get("counts", {}).get(
                "prompts_resumed_from_checkpoints", 0) + attempt.attempt_counts["prompts_resumed_from_checkpoints"],
            "retries": manifest.data["retries"].get("chat+reward", 0),
        }

    with manifest.stage_attempt("rank") as attempt:
        ranking = rank_candidates(cfg, run_id, [o["uri"] for o in outcomes])
        manifest.add_lineage("rank", [o["uri"] for o in outcomes], list(ranking["datasets"].values()))
        attempt.counts = ranking["counts"]

    report = report_synthesis(cfg, run_id, ingest, outcomes, ranking, decontamination)
    card = write_dataset_card(cfg, run_id, ingest, decontamination, ranking)
    counts = ranking["counts"]
    candidates, failed = sum(o["candidates"] for o in outcomes), sum(o["errors"] for o in outcomes)
    new = sum(o["new_candidates"] for o in outcomes)
    message = (f"{sum(o['prompts'] for o in outcomes)} prompts in {len(outcomes)} shards, "
               f"{candidates} candidates ({new} new, {failed} failed); "
               f"SFT {counts.get('sft_train', 0)}+{counts.get('sft_test', 0)}, "
               f"DPO {counts.get('dpo_train', 0)}+{counts.get('dpo_test', 0)} rows (train+test)")
    return finish({"run_id": run_id, "run_uri": store.uri(run_key(run_id) + "/"), "datasets": ranking["datasets"],
                   "counts": counts, "report": report, "card": card, "manifest": manifest.uri}, message)


def shard_parameters(config: str, limit: int | None, prompts: str | None, overrides: RunOverrides | None,
                     digest: str) -> dict[str, Any]:
    """The sample-shard deployment's parameters for this run's shards: what is set, nothing null (its schema,
    like a form left empty, leaves unset parameters out)."""
    parameters = {"config": config, "limit": limit, "prompts": prompts, "config_digest_expected": digest,
                  "overrides": overrides.model_dump(exclude_none=True) if overrides else None}
    return {key: value for key, value in parameters.items() if value is not None}


def nothing_new_reason(prompt_ids: set[str], earlier: dict[str, set[str]], quarantined: set[str] = frozenset(),
                       shown: int = 3) -> str:
    """"40 prompts already synthesized by night-2 (38), night-1 (2)" (the run ends "Nothing new: " and this): which
    earlier runs (oldest first in `earlier`) hold the run's prompts (a prompt counts for the newest run that has
    it), and how many decontamination quarantined."""
    holder: dict[str, str] = {}
    for run, ids in earlier.items():
        holder.update({prompt_id: run for prompt_id in ids & prompt_ids})
    counts: dict[str, int] = {}
    for run in holder.values():
        counts[run] = counts.get(run, 0) + 1
    by_run = sorted(counts.items(), key=lambda item: -item[1])
    runs = ", ".join(f"{run} ({count})" for run, count in by_run[:shown])
    if len(by_run) > shown:
        runs += f" and {len(by_run) - shown} more runs"
    held_back = len((quarantined & prompt_ids) - set(holder))
    if not held_back:
        return f"{len(prompt_ids)} prompts already synthesized by {runs or 'earlier runs'}"
    parts = ([f"{len(holder)} already synthesized by {runs}"] if holder else []) + [
        f"{held_back} quarantined by decontamination"]
    return f"{len(prompt_ids)} prompts, " + " and ".join(parts)
