"""Prefect tasks of the synthesis flow: ingest -> plan shards -> sample each shard -> rank -> report.

Every task takes the validated RunConfig and a run id, reads its inputs from the store and returns store URIs
(never big objects). Resume is built in:
- the prompt table and the shard plan are written once per run id and reused by any rerun; the plan's record
  (`shard_plan.json`) says what made it and which config samples it, so a rerun with another plan, or a shard flow
  run with another config, is refused instead of mixing two runs in one folder;
- a shard is complete when `samples/shard-NNNNN.parquet` exists (published atomically, so never half-written);
- inside a shard every finished prompt is checkpointed at once (`checkpoints/shard-NNNNN/<prompt_id>.parquet`),
  so a process killed mid-shard loses only the generations in flight.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.store import Store, fetch_source, open_store
from toa_core.candidate_table import (candidates_to_table, parquet_bytes_to_table, table_to_parquet_bytes,
                                      trees_to_jsonl)
from toa_core.engine import run_search
from toa_core.ingest import IngestError, load_prompts, read_prompts, write_prompts
from toa_core.records import Prompt, PromptResult
from toa_core.strategies import SearchContext
from tasks.synthesis_progress import (CANDIDATE_ERRORS, CANDIDATES, PROMPTS, RETRIES, CountingChatModel, ShardCounters,
                                      ShardProgressWriter, sum_counters)
from runconfig import RunConfig

log = logging.getLogger(__name__)


# -- where things live in a run folder -------------------------------------------------------------------

def run_key(run_id: str, *parts: str) -> str:
    return "/".join(("runs", run_id) + parts)


def shard_key(run_id: str, index: int) -> str:
    return run_key(run_id, "samples", f"shard-{index:05d}.parquet")


def tree_key(run_id: str, index: int) -> str:
    return run_key(run_id, "trees", f"shard-{index:05d}.jsonl")


def checkpoint_prefix(run_id: str, index: int) -> str:
    return run_key(run_id, "checkpoints", f"shard-{index:05d}")


# -- ingest ----------------------------------------------------------------------------------------------

@task(name="ingest-prompts", cache_policy=NO_CACHE)
def ingest_prompts(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """Load, validate and normalise the prompt source into `prompts/part-*.parquet` (once per run id).

    Bad rows go to `quarantine.jsonl` with their reason and source line; with `strict: true` the first few
    problems are raised before any sampling starts. A remote source is downloaded into a private folder of this
    run's ingest (mkdtemp: not guessable, owner-only), removed when ingest ends, failed or not; errors name the
    source, never that folder.
    """
    store = open_store(cfg.store)
    if store.list(run_key(run_id, "prompts") + "/"):
        prompts = read_prompts(store, run_id)
        log.info("prompts already ingested for run %s (%d prompts); reusing them", run_id, len(prompts))
        return {"prompts": len(prompts), "reused": True}
    ingest_cfg = cfg.synthesis.prompts
    if ingest_cfg is None:
        raise IngestError("synthesis.prompts is not set: name a prompt source (file, folder, s3:// URI or dataset)")
    with tempfile.TemporaryDirectory(prefix="toaflow-prompts-") as scratch:
        local = None
        try:
            if "://" in ingest_cfg.source or ingest_cfg.format not in ("hf_dataset",):
                try:
                    local = fetch_source(ingest_cfg.source, cfg.store, dest_dir=scratch)
                except FileNotFoundError:
                    if ingest_cfg.format in ("auto", "hf_dataset") and "://" not in ingest_cfg.source:
                        local = None  # not a local path: let ingestion try it as a dataset name
                    else:
                        raise
            report = load_prompts(ingest_cfg, local)
        except (IngestError, OSError) as error:
            if scratch not in str(error):
                raise
            # Say which source failed, not where this worker downloaded it.
            raise IngestError(str(error).replace(str(local) if local else scratch, ingest_cfg.source)
                              .replace(scratch, "<download>")) from None
    if report.quarantined:
        store.write_text(run_key(run_id, "quarantine.jsonl"),
                         "".join(_json_line(row) for row in report.quarantined))
        log.warning("%d bad prompt rows quarantined in %s", len(report.quarantined),
                    store.uri(run_key(run_id, "quarantine.jsonl")))
    if not report.prompts:
        raise IngestError(f"{ingest_cfg.source}: no usable prompts ({report.summary()}); "
                          f"see {store.uri(run_key(run_id, 'quarantine.jsonl'))} for the reasons")
    if cfg.reward.kind == "verifier":
        _require_checks(ingest_cfg.source, report.prompts)
    write_prompts(store, run_id, report.prompts)
    return {**report.summary(), "reused": False}


def _require_checks(source: str, prompts: list[Prompt]) -> None:
    """reward.kind verifier: every prompt must carry its checks, or the run stops before any generation."""
    from toa_core.verifiers.checks import VERIFY_FIELD

    lacking = [p for p in prompts if not p.metadata.get(VERIFY_FIELD)]
    if lacking:
        first = lacking[0]
        raise IngestError(f"{source}: line {first.metadata.get('line', '?')} (and {len(lacking) - 1} more of "
                          f"{len(prompts)} prompts): no `{VERIFY_FIELD}` field, which reward kind 'verifier' needs "
                          f"(metadata.{VERIFY_FIELD}: the checks an answer must pass); add it to each record, or "
                          "name a gold-answer column with synthesis.prompts.answer_field (docs/data_formats.md)")


def _json_line(row: dict[str, Any]) -> str:
    import json

    return json.dumps(row, ensure_ascii=False, default=str) + "\n"


class ShardPlanMismatch(ValueError):
    """A run id whose shard plan was made from other settings, or is sampled with another config; the message
    says which and what to do."""


PLAN_RECORD = "shard_plan.json"


def config_digest(cfg: RunConfig) -> str:
    """A fingerprint of the effective config: shard flow runs check that their host resolved the same one."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_inputs_digest(cfg: RunConfig, limit: int | None, incremental: bool) -> str:
    """A fingerprint of what decides a run's shard plan: the prompt source and its sampling, the shard size, the
    limit and whether earlier runs' prompts are left out. Other settings (budget, executor, window) may change
    between attempts of a run; these may not."""
    prompts = cfg.synthesis.prompts.model_dump(mode="json") if cfg.synthesis.prompts else None
    return _digest({"prompts": prompts, "shard_size": cfg.synthesis.shard_size, "limit": limit,
                    "incremental": incremental})


def check_shard_plan(store: Store, run_id: str, plan: list[list[str]], digest: str) -> None:
    """Refuse to sample run `run_id` with a config whose digest is not the one its synthesis run recorded, or a
    plan that is not the recorded one (ShardPlanMismatch)."""
    record_key = run_key(run_id, PLAN_RECORD)
    if not store.exists(record_key):
        raise ShardPlanMismatch(f"run {run_id} has no shard plan record ({PLAN_RECORD}); its shards are sampled only "
                                "for a synthesize flow run that planned them")
    record = store.read_json(record_key)
    if record.get("plan_digest") != _digest(plan):
        raise ShardPlanMismatch(f"run {run_id}: its shard plan (shards.json) is not the one its synthesis run "
                                "recorded; start a new run id")
    if record.get("config_digest") != digest:
        raise ShardPlanMismatch(f"run {run_id} is sampled with another config (digest {record.get('config_digest')}) "
                                f"than this shard's ({digest}): a shard flow run takes the config, limit, prompts and "
                                "overrides of the synthesis run that started it")


@task(name="plan-shards", cache_policy=NO_CACHE)
def plan_shards(cfg: RunConfig, run_id: str, exclude_prompt_ids: list[str] | None = None,
                limit: int | None = None, incremental: bool = False, digest: str | None = None) -> list[list[str]]:
    """Split the run's prompts into shards of `synthesis.shard_size` (the plan is stored and reused on rerun).

    `exclude_prompt_ids` (incremental runs) are left out first; `limit` then keeps a seeded sample of the rest,
    so a nightly run with a limit takes new prompts instead of re-drawing the same, already synthesized ones.

    The plan's record (`shard_plan.json`) keeps the digest of what decided it (`plan_inputs_digest`) and of the
    config that samples it now (`digest`: the config file's, before a policy agent is added; default: `cfg`'s).
    A rerun of the run id with other plan inputs (another limit, prompt source or
    shard size) raises ShardPlanMismatch instead of mixing two plans; of two parents racing on a new run id, the
    one that reads back the other's record stops.
    """
    store = open_store(cfg.store)
    plan_key, record_key = run_key(run_id, "shards.json"), run_key(run_id, PLAN_RECORD)
    inputs = plan_inputs_digest(cfg, limit, incremental)
    if store.exists(plan_key):
        plan = store.read_json(plan_key)
        record = store.read_json(record_key) if store.exists(record_key) else {"plan_inputs": inputs}
        if record.get("plan_inputs") != inputs:
            raise ShardPlanMismatch(
                f"run {run_id} was planned from other settings (prompt source, limit, shard size or incremental); "
                "rerun it with the settings it started with, or use a new run id")
        _write_plan_record(store, record_key, inputs, plan, digest or config_digest(cfg))
        return plan
    excluded = set(exclude_prompt_ids or ())
    ids = [p.prompt_id for p in read_prompts(store, run_id) if p.prompt_id not in excluded]
    if limit is not None and len(ids) > limit:
        import random

        keep = set(random.Random(cfg.synthesis.prompts.seed if cfg.synthesis.prompts else 0).sample(ids, limit))
        ids = [prompt_id for prompt_id in ids if prompt_id in keep]
    size = cfg.synthesis.shard_size
    plan = [ids[start:start + size] for start in range(0, len(ids), size)]
    store.write_json(plan_key, plan)
    _write_plan_record(store, record_key, inputs, plan, digest or config_digest(cfg))
    if store.read_json(plan_key) != plan or store.read_json(record_key).get("plan_inputs") != inputs:
        raise ShardPlanMismatch(f"run {run_id} was planned at the same time by another synthesis run with other "
                                "settings; use a new run id")
    return plan


def _write_plan_record(store: Store, key: str, inputs: str, plan: list[list[str]], digest: str) -> None:
    record = {"plan_inputs": inputs, "plan_digest": _digest(plan), "config_digest": digest}
    if not store.exists(key) or store.read_json(key) != record:
        store.write_json(key, record)


# -- sampling --------------------------------------------------------------------------------------------

def progress_key(run_id: str, index: int) -> str:
    return run_key(run_id, "progress", f"shard-{index:05d}.json")


def shard_label(index: int, shards: int) -> str:
    """How a shard is named in task runs, flow runs and logs: "shard 3/12" (counted from 1)."""
    return f"shard {index + 1}/{shards}"


@dataclass
class ShardOutcome:
    """One shard's result. `candidates` / `errors` count the rows of the published shard, whichever attempt
    generated them; `new_candidates` / `new_errors` / `retries` only what this attempt did."""
    index: int
    uri: str
    prompts: int
    candidates: int
    errors: int
    retries: int
    resumed_prompts: int
    skipped: bool
    new_candidates: int = 0
    new_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def sample_shard(cfg: RunConfig, run_id: str, index: int, prompt_ids: list[str],
                 endpoints: dict[str, Any] | None = None, *, shards: int | None = None, attempt: str | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search every prompt of one shard, checkpointing each finished prompt; publish the shard when complete.

    Progress (prompts, generations, failures) goes to `progress/shard-NNNNN.json` while the shard runs
    (tasks/synthesis_progress.py); `attempt` names the task or flow run doing it, `on_progress` sees each record.
    With `synthesis.processes_per_host` > 1 the prompts are searched by that many processes of this host.
    """
    store = open_store(cfg.store)
    label = shard_label(index, shards or index + 1)
    final_key = shard_key(run_id, index)
    if store.exists(final_key):
        rows, errors = _shard_rows_and_errors(store, final_key)
        return ShardOutcome(index, store.uri(final_key), len(prompt_ids), rows, errors, 0, 0, skipped=True).as_dict()
    wanted = set(prompt_ids)
    prompts = [p for p in read_prompts(store, run_id) if p.prompt_id in wanted]
    prefix = checkpoint_prefix(run_id, index)
    finished = {key.rsplit("/", 1)[-1].removesuffix(".parquet") for key in store.list(prefix + "/")
                if key.endswith(".parquet")}
    pending = [p for p in prompts if p.prompt_id not in finished]
    resumed = len(finished & wanted)
    processes = max(1, min(cfg.synthesis.processes_per_host, len(pending)))
    log.info("%s: %d prompts, %d already checkpointed, %d to search%s", label, len(prompts), resumed, len(pending),
             f" in {processes} processes" if processes > 1 else "")
    counters = [ShardCounters() for _ in range(processes)]
    with ShardProgressWriter(store, progress_key(run_id, index), shard=index, shards=shards or index + 1,
                             prompts=len(prompt_ids), resumed=resumed, counters=counters,
                             interval_s=cfg.synthesis.progress_interval_s, attempt=attempt,
                             on_update=on_progress) as progress:
        if processes == 1:
            asyncio.run(_search_with_checkpoints(cfg, store, prefix, pending, endpoints or {}, label, counters[0]))
        else:
            _search_in_processes(cfg, prefix, pending, endpoints or {}, label, counters)
        outcome = _publish_shard(store, run_id, index, prompt_ids, prefix)
        totals = sum_counters(counters)
        outcome.retries, outcome.resumed_prompts = totals[RETRIES], resumed
        outcome.new_candidates, outcome.new_errors = totals[CANDIDATES], totals[CANDIDATE_ERRORS]
        progress.finish(outcome.as_dict())
    return outcome.as_dict()


def _shard_rows_and_errors(store: Store, key: str) -> tuple[int, int]:
    """Rows and failed generations of a published shard (a resume reports them, not zeros)."""
    import io

    import pyarrow.parquet as pq

    errors = pq.read_table(io.BytesIO(store.read_bytes(key)), columns=["error"]).column("error")
    return len(errors), len(errors) - errors.null_count


async def _search_with_checkpoints(cfg: RunConfig, store: Store, prefix: str, prompts: list[Prompt],
                                   endpoints: dict[str, Any], label: str, counters: ShardCounters) -> None:
    """Run the engine over `prompts`, writing each result to the store as soon as its search ends."""
    from tqdm import tqdm

    from infra.runtime import open_backends

    if not prompts:
        return
    bar = tqdm(total=len(prompts), desc=label, unit="prompt", disable=not sys.stderr.isatty())

    async def checkpoint(result: PromptResult) -> None:
        table = candidates_to_table(result.candidates)
        if result.tree is not None:
            await asyncio.to_thread(store.write_text, f"{prefix}/{result.prompt.prompt_id}.tree.jsonl",
                                    trees_to_jsonl([(result.prompt.prompt_id, result.tree, result.search)]))
        # The parquet file is the "prompt finished" marker, so it is written last.
        await asyncio.to_thread(store.write_bytes, f"{prefix}/{result.prompt.prompt_id}.parquet",
                                table_to_parquet_bytes(table))
        counters.add(RETRIES, result.retries)
        counters.add(CANDIDATES, len(result.candidates))
        counters.add(CANDIDATE_ERRORS, sum(1 for candidate in result.candidates if candidate.error))
        counters.add(PROMPTS)
        bar.update(1)

    try:
        async with open_backends(cfg, endpoints) as (agents, reward):
            counted = [CountingChatModel(agent, counters) for agent in agents]
            ctx = SearchContext(agents=counted, reward=reward, search=cfg.search)
            await run_search(prompts, ctx, on_result=checkpoint)
    finally:
        bar.close()


def _search_in_processes(cfg: RunConfig, prefix: str, prompts: list[Prompt], endpoints: dict[str, Any], label: str,
                         counters: list[ShardCounters]) -> None:
    """Split `prompts` over `len(counters)` processes of this host (one event loop and one core each).

    Each process gets its share of the shard's concurrency: `search.prompt_concurrency` trees and every agent's
    `max_concurrency` are divided among them, so the servers see the same load as from one process.
    """
    import multiprocessing

    n = len(counters)
    share = cfg.model_copy(deep=True)
    share.search.prompt_concurrency = -(-cfg.search.prompt_concurrency // n)
    for model in share.models:
        model.max_concurrency = -(-model.max_concurrency // n)
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_search_part, name=f"{label} part {k + 1}/{n}",
                                args=(share, prefix, prompts[k::n], endpoints, f"{label} part {k + 1}/{n}",
                                      counters[k]))
                for k in range(n)]
    for child in children:
        child.start()
    try:
        for child in children:
            child.join()
    finally:
        for child in children:  # the shard itself is stopping (an error, a cancelled run): stop its helpers too
            if child.is_alive():
                child.terminate()
                child.join(30)
    failed = [f"{child.name} (exit code {child.exitcode})" for child in children if child.exitcode != 0]
    if failed:
        raise RuntimeError(f"{label}: orchestrator processes failed: {', '.join(failed)}; their finished prompts are "
                           "checkpointed, so a retry searches only the rest")


def _search_part(cfg: RunConfig, prefix: str, prompts: list[Prompt], endpoints: dict[str, Any], label: str,
                 counters: ShardCounters) -> None:
    """One orchestrator process of a shard (the target of `_search_in_processes`)."""
    from infra.processes import die_with_parent

    die_with_parent()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s")
    asyncio.run(_search_with_checkpoints(cfg, open_store(cfg.store), prefix, prompts, endpoints, label, counters))


def _publish_shard(store: Store, run_id: str, index: int, prompt_ids: list[str], prefix: str) -> ShardOutcome:
    """Merge a shard's checkpoints into one parquet file (in plan order), publish it, then drop the checkpoints."""
    tables, trees = [], []
    for prompt_id in prompt_ids:
        tables.append(parquet_bytes_to_table(store.read_bytes(f"{prefix}/{prompt_id}.parquet")))
        tree_file = f"{prefix}/{prompt_id}.tree.jsonl"
        if store.exists(tree_file):
            trees.append(store.read_text(tree_file))
    table = pa.concat_tables(tables) if tables else candidates_to_table([])
    if trees:
        store.write_text(tree_key(run_id, index), "".join(trees))
    uri = store.write_bytes(shard_key(run_id, index), table_to_parquet_bytes(table))
    for key in store.list(prefix + "/"):
        store.delete(key)
    errors = table.num_rows - table.column("error").null_count
    return ShardOutcome(index, uri, len(prompt_ids), table.num_rows, errors, 0, 0, skipped=False)


def shard_gpu_slots(cfg: RunConfig) -> int:
    """GPU slots one shard holds: 0 when it only talks to servers elsewhere, else the GPUs its managed servers
    name (at least 1 for in-process models or servers without explicit GPUs)."""
    reward_model = cfg.reward.ranker if cfg.reward.kind == "verifier" else cfg.reward  # a verifier runs no model
    in_process = any(m.backend == "transformers" for m in cfg.models) or (
        reward_model is not None and reward_model.kind in ("hf_classifier", "llm_judge"))
    managed = cfg.servers.servers if cfg.servers.managed else []
    if not in_process and not managed:
        return 0
    gpus = {gpu for server in managed for gpu in (server.gpus or [])}
    return max(1, len(gpus))


@task(name="sample-shard", cache_policy=NO_CACHE)
def sample_shard_task(cfg: RunConfig, run_id: str, index: int, prompt_ids: list[str],
                      endpoints: dict[str, Any] | None = None, shards: int | None = None) -> dict[str, Any]:
    """`sample_shard` as a Prefect task of the synthesis flow (executor local), holding its GPU slots."""
    from prefect.runtime import task_run

    from tasks.gpu import gpu_slot

    label = shard_label(index, shards or index + 1)
    slots = shard_gpu_slots(cfg)
    with gpu_slot(f"{label} of run {run_id}", slots=slots) if slots else contextlib.nullcontext():
        return sample_shard(cfg, run_id, index, prompt_ids, endpoints, shards=shards, attempt=task_run.get_id())


# -- ranking and report ----------------------------------------------------------------------------------

@task(name="rank-candidates", cache_policy=NO_CACHE)
def rank_candidates(cfg: RunConfig, run_id: str, shard_uris: list[str]) -> dict[str, Any]:
    """Rank every shard's candidates into SFT and DPO datasets (`datasets/{sft,dpo}/{train,test}.parquet`)."""
    import tempfile
    from pathlib import Path

    from tasks.decontamination import rank_without_contaminated_answers
    from tasks.policy import model_versions, policy_record
    from toa_core.ranking import build_datasets_with_policy, write_datasets

    store = open_store(cfg.store)
    policy = cfg.synthesis.policy_agent
    record = policy_record(cfg, store, run_id)
    # The policy's own pairs only when it took part (before the first promotion there is no policy to pair).
    pairs = policy.pairs if record is not None and any(m.name == policy.name for m in cfg.models) else "all"
    with tempfile.TemporaryDirectory(prefix="toaflow-rank-") as scratch:
        local_shards = [store.download_file(store.key_of(uri), Path(scratch) / f"{i:05d}.parquet")
                        for i, uri in enumerate(shard_uris)]
        prompts = read_prompts(store, run_id)
        *tables, stats = rank_without_contaminated_answers(  # chosen answers are checked against the eval sets
            cfg, store, run_id, lambda excluded: build_datasets_with_policy(
                [str(p) for p in local_shards], prompts, cfg.synthesis.ranking, run_id, excluded,
                policy_model=policy.name, pairs=pairs))
    if record is not None:
        tables = with_model_versions(tables, model_versions(cfg, record))
    datasets = write_datasets(store, run_id, *tables, stats=stats)
    counts = stats.to_dict()
    if record is not None:
        counts.update(policy_pair_counts(tables[2:], policy.name))
    ranking = {"datasets": datasets, "counts": counts, "per_model": stats.per_model}
    if cfg.reward.kind == "verifier":
        from toa_core.rewards.verifier import pair_decisions

        dpo = tables[2:]  # dpo train, dpo test
        ranking["pairs_decided_by"] = pair_decisions(
            [r for t in dpo for r in t.column("chosen_reward").to_pylist()],
            [r for t in dpo for r in t.column("rejected_reward").to_pylist()], cfg.reward.ranker is not None)
    return ranking


def with_model_versions(tables: list[pa.Table], versions: dict[str, str]) -> list[pa.Table]:
    """SFT tables get `model_version`, DPO tables `chosen_model_version` and `rejected_model_version`: which model
    version wrote the answer (the policy agent's is the store key of the `latest` model it was)."""
    def version_column(table: pa.Table, column: str) -> pa.Array:
        return pa.array([versions.get(name) for name in table[column].to_pylist()], pa.string())

    sft_train, sft_test, dpo_train, dpo_test = tables
    return [*(t.append_column("model_version", version_column(t, "model")) for t in (sft_train, sft_test)),
            *(t.append_column("chosen_model_version", version_column(t, "chosen_model"))
               .append_column("rejected_model_version", version_column(t, "rejected_model")) for t in (dpo_train, dpo_test))]


def policy_pair_counts(dpo_tables: list[pa.Table], policy_name: str) -> dict[str, int]:
    """How many DPO pairs (train + test) the policy agent wrote a side of."""
    chosen = sum(t["chosen_model"].to_pylist().count(policy_name) for t in dpo_tables)
    rejected = sum(t["rejected_model"].to_pylist().count(policy_name) for t in dpo_tables)
    both = sum(sum(1 for c, r in zip(t["chosen_model"].to_pylist(), t["rejected_model"].to_pylist())
                   if c == r == policy_name) for t in dpo_tables)
    return {"dpo_pairs_policy_chosen": chosen, "dpo_pairs_policy_rejected": rejected, "dpo_pairs_policy_both": both}


@task(name="report-synthesis", cache_policy=NO_CACHE)
def report_synthesis(cfg: RunConfig, run_id: str, ingest: dict[str, Any], shards: list[dict[str, Any]],
                     ranking: dict[str, Any], decontamination: dict[str, Any] | None = None) -> str:
    """Per-model table, markdown summary and reward-distribution PNG: in `reports/` and as Prefect artifacts
    (keys synthesis-models, synthesis-rewards, synthesis-summary; the run id is in each description)."""
    from prefect import get_run_logger

    from tasks.artifacts import PhaseTimer, figure_png, publish_markdown, publish_png, publish_table
    from tasks.dataset_card import quality_markdown
    from tasks.synthesis_report import per_model_table, reward_distribution_figure, summary_markdown

    timer = PhaseTimer()
    store = open_store(cfg.store)
    samples = pa.concat_tables([parquet_bytes_to_table(store.read_bytes(store.key_of(s["uri"]))) for s in shards]) \
        if shards else candidates_to_table([])
    timer.lap("read shards")
    model_rows = per_model_table(samples)
    datasets = {name: uri for name, uri in ranking["datasets"].items() if name != "stats"}
    from infra.manifest import Manifest

    retries_total = Manifest.load(store, run_id).data.get("retries", {}).get("chat+reward", 0)
    markdown = summary_markdown(run_id, store.uri(run_key(run_id) + "/"), ingest, shards, ranking["counts"],
                                model_rows, datasets, retries_total)
    markdown += "\n## Data quality\n\n" + "\n".join(quality_markdown(
        ranking["counts"], ranking.get("per_model", {}), decontamination, cfg.synthesis.ranking.allow_truncated))
    timer.lap("tables")
    png = figure_png(reward_distribution_figure(samples))
    timer.lap("plot")
    publish_table(store, run_key(run_id, "reports", "synthesis_models.json"), model_rows,
                  title=f"Models in synthesis run {run_id}", artifact="synthesis-models")
    publish_png(store, run_key(run_id, "reports", "reward_distribution.png"), png,
                title=f"Reward by model and by tree depth, synthesis run {run_id}", artifact="synthesis-rewards")
    key = run_key(run_id, "reports", "synthesis.md")
    publish_markdown(store, key, markdown, title=f"Synthesis run {run_id}", artifact="synthesis-summary")
    timer.lap("publish")  # store writes and Prefect artifacts
    get_run_logger().info("synthesis report of run %s: %s", run_id, timer.summary())
    return store.uri(key)
