"""The `train` flow: SFT, then DPO from the SFT policy, each stage its own process; then the report.

    toa train --config configs/train_llama31_8b.yaml --run-id R [--data-run-id D]

A re-run with the same run id skips stages already published and resumes an interrupted one from its newest
checkpoint in the store. The run manifest records each stage's status, metrics and lineage.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from infra.manifest import Manifest
from infra.run_ids import check_new_run_id, check_run_id
from infra.store import StoreKeyNotFound, open_store
from tasks.flow_runs import finish, run_name
from tasks.run_inputs import RunInputs
from tasks.training import stage_settings, train_stage, training_report
from training.data import dataset_key
from runconfig import read_config_mapping
from runconfig.parameters import ConfigFile, RunOverrides, override_mapping

SUMMARY_KEYS = ("global_step", "first_loss", "final_loss", "final_reward_accuracy", "train_runtime_s")


@flow(name="train", flow_run_name=run_name)
def train(config: ConfigFile, run_id: str, data_run_id: str | None = None, force: bool = False,
          overrides: RunOverrides | None = None) -> dict[str, Any]:
    """Train `run_id`'s SFT and DPO models from the datasets of `data_run_id` (default: the same run).

    Args:
        config: Run config: the name of a config in the operator's config folder (the operator's own runs may give
            a path); only `store` and `training` are used.
        run_id: Run whose models/sft and models/dpo are written (a re-run resumes from stored checkpoints).
        data_run_id: Run whose datasets/{sft,dpo} are trained on; empty = `run_id` itself.
        force: Retrain stages whose models are already published.
        overrides: Settings that replace the config file's values for this run (empty = keep them).

    Returns {stage: {"uri", "metrics"}, "report": {"table", "curves"}}.
    """
    check_new_run_id(run_id)
    if data_run_id:
        check_run_id(data_run_id, "data run id")  # read only: the pipeline's '<run id>-accumulated' is fine
    inputs = RunInputs.of(config)  # a deployment run names an operator config; refused here otherwise
    settings_overrides = override_mapping(overrides)
    path = inputs.config.path
    # The stage processes read the config file itself, or the overridden mapping when there are overrides.
    config = read_config_mapping(path, settings_overrides) if settings_overrides else str(path)
    settings = stage_settings(config)
    store = open_store(settings.store)
    try:  # inside `toa pipeline` the run's manifest already holds the whole config: add to it
        manifest = Manifest.load(store, run_id)
    except StoreKeyNotFound:
        manifest = Manifest.open(store, run_id, config=settings.model_dump(mode="json"),
                                 seeds={"training": settings.training.common.seed})
    manifest.record_trust(inputs.trust(settings.model_dump(mode="json")))
    stages = [name for name in ("sft", "dpo") if getattr(settings.training, name).enabled]
    results: dict[str, Any] = {}
    for stage in stages:
        manifest.start_stage(f"train.{stage}")
        try:
            result = train_stage(stage, config, run_id, data_run_id, force=force)
        except Exception as error:
            manifest.fail_stage(f"train.{stage}", error)
            raise
        summary = {key: result["metrics"][key] for key in SUMMARY_KEYS if result["metrics"].get(key) is not None}
        manifest.finish_stage(f"train.{stage}", counts=summary, outputs=[result["uri"]])
        inputs = [store.uri(dataset_key(data_run_id or run_id, stage, "train"))]
        if stage == "dpo" and "sft" in results:
            inputs.append(results["sft"]["uri"])
        manifest.add_lineage(f"train.{stage}", inputs=inputs, outputs=[result["uri"]])
        results[stage] = result
    if stages:
        results["report"] = training_report(config, run_id, stages)
    return finish(results, "; ".join(stage_line(stage, results[stage]["metrics"]) for stage in stages)
                  or "no stage enabled (training.sft.enabled and training.dpo.enabled are false)")


def stage_line(stage: str, metrics: dict[str, Any]) -> str:
    """"SFT: 10 steps, loss 2.31 -> 1.02" for the run's final state."""
    def number(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, (int, float)) else "-"

    return (f"{stage.upper()}: {metrics.get('global_step')} steps, loss {number(metrics.get('first_loss'))} -> "
            f"{number(metrics.get('final_loss'))}")
