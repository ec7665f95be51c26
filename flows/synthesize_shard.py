"""One shard of a synthesis run as its own flow run: what the `sample-shard` deployment runs on a GPU host.

The synthesis flow with `synthesis.executor: workers` creates these (one per shard, a sliding window of them) as
its children; a worker of the deployment's pool picks each up on its host. The shard flow run:
1. loads the same config as the synthesis run, by its name in this host's operator config folder (a deployment
   run never takes a path), and checks it resolved to the config digest the synthesis run recorded with its shard
   plan (`runs/<id>/shard_plan.json`): a run id planned by another config, or a plan that was replaced, is refused,
2. takes its GPU slots (a lease of the global "gpu" limit, when the config computes on this host),
3. starts or finds the model servers its config names on this host (managed servers; `toa servers up` ones are
   found and reused), or uses the configured remote endpoints,
4. searches the shard's prompts not yet checkpointed and publishes `samples/shard-NNNNN.parquet`.
Running it again for the same shard (a resubmission after a crash) resumes from the checkpoints.
"""
from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from infra.run_ids import check_run_id
from infra.runtime import model_servers
from infra.store import open_store
from runconfig import ConfigError, load_config
from runconfig.parameters import ConfigFile, RunOverrides, synthesis_settings
from tasks.gpu import gpu_slot
from tasks.policy import with_policy_agent
from tasks.run_inputs import RunInputs
from tasks.synthesis import check_shard_plan, config_digest, run_key, sample_shard, shard_gpu_slots, shard_label
from tasks.synthesis_progress import shard_artifact_updater


@flow(name="synthesize-shard")
def synthesize_shard(config: ConfigFile, run_id: str, shard_index: int, limit: int | None = None,
                     prompts: str | None = None, overrides: RunOverrides | None = None,
                     config_digest_expected: str | None = None) -> dict[str, Any]:
    """Sample one shard of a synthesis run (started by the synthesize flow with `synthesis.executor: workers`).

    Args:
        config: Run config of the synthesis run: its name in the operator's config folder on this host.
        run_id: The synthesis run the shard belongs to (its prompts and shard plan are in the store).
        shard_index: Which shard of the run's plan (counted from 0).
        limit: The synthesis run's `limit` parameter.
        prompts: The synthesis run's `prompts` parameter.
        overrides: The synthesis run's typed overrides (runconfig.parameters.RunOverrides; never code-running keys).
        config_digest_expected: Fingerprint of the synthesis run's config; a host that resolves another one stops.
            Whatever is passed, the digest must be the one the synthesis run recorded with its shard plan.
    """
    logger = get_run_logger()
    check_run_id(run_id)
    inputs = RunInputs.of(config)
    cfg = load_config(inputs.config.path, synthesis_settings(overrides, limit, prompts))
    digest = config_digest(cfg)  # of the config file, as the synthesis run recorded it (before the policy agent)
    if config_digest_expected and digest != config_digest_expected:
        raise ConfigError(f"{config}: resolves to another config on this host than on the host that started run "
                          f"{run_id}; deploy the same project version and configs to every host of the pool")
    store = open_store(cfg.store)
    cfg = with_policy_agent(cfg, store, run_id)  # the run's pinned `latest`, served on this host (when configured)
    plan_key = run_key(run_id, "shards.json")
    if not store.exists(plan_key):
        raise ConfigError(f"run {run_id} has no shard plan at {store.uri(plan_key)}; shards are started by the "
                          "synthesize flow (synthesis.executor: workers), not on their own")
    plan = store.read_json(plan_key)
    check_shard_plan(store, run_id, plan, digest)  # the run's own config and plan, nobody else's
    if not 0 <= shard_index < len(plan):
        raise ConfigError(f"shard_index {shard_index} is out of range: run {run_id} has {len(plan)} shards")
    label = shard_label(shard_index, len(plan))
    slots = shard_gpu_slots(cfg)
    with gpu_slot(f"{label} of run {run_id}", slots=slots) if slots else contextlib.nullcontext():
        with model_servers(cfg, run_id) as endpoints:
            outcome = sample_shard(cfg, run_id, shard_index, plan[shard_index], endpoints, shards=len(plan),
                                   attempt=flow_run.get_id(),
                                   on_progress=shard_artifact_updater("synthesis-shard-progress",
                                                                      f"{label} of run {run_id}",
                                                                      len(plan[shard_index])))
    logger.info("%s done: %d prompts (%d resumed from checkpoints), %d candidates, %d failed generations -> %s",
                label, outcome["prompts"], outcome["resumed_prompts"], outcome["candidates"], outcome["errors"],
                outcome["uri"])
    return outcome
