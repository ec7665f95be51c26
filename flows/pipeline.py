"""The pipeline flow: synthesize -> train -> evaluate -> promotion gate.

Nightly runs are incremental: synthesis samples only prompts that no earlier run synthesized (the store's
index/prompts/), and training uses the data of every earlier run plus the new one. The new model replaces
`latest` only if no gated metric blocks (infra.promotion: too many failed generations, a regression beyond the
interval against `latest`, or worse than the base model); otherwise `latest` stays and the record says which
metric blocked it and why (registry/promotions/, runs/<id>/promotion.json).

Policy in the loop (synthesis.policy_agent, training.common.start_from: latest): the run pins the model `latest`
points at when it starts (runs/<id>/policy.json); synthesis adds it as one more agent and training starts from it
(infra/policy.py). The accumulated data may be bounded (pipeline.accumulate: a window of nights, a decay).

In the Prefect UI the run and its subflow runs are named by the run id; the run ends Completed (a state the UI's
run lists show) with a message giving the verdict: "Blocked: <the gate's reason>" and the tag `blocked` when the
gate refused the candidate (infra/alerts.py tells someone), "Nothing new: <reason>" and the tag `nothing-new`
when there was nothing to train on.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from evaluation.scores import base_model_scores, gate_table, load_scores
from flows.evaluate import evaluate
from flows.synthesize import synthesize
from flows.train import train
from infra.manifest import Manifest
from infra.policy import pin_policy
from infra.run_ids import check_new_run_id, new_run_id
from infra.store import open_store
from tasks.flow_runs import call_subflow, finish, name_flow_run, run_name
from tasks.preflight import preflight_task
from tasks.publish import publish_line, publish_promoted
from tasks.run_inputs import RunInputs
from tasks.pipeline import (ACCUMULATED_SUFFIX, accumulate, current_latest, flatten_scores, previously_synthesized, promotion_gate,
                            record_prompts, runs_awaiting_training)
from runconfig import load_config
from runconfig.parameters import ConfigFile, RunOverrides, override_mapping


@flow(name="pipeline", flow_run_name=run_name, log_prints=False)
def pipeline(config: ConfigFile = "demo.yaml", run_id: str | None = None, incremental: bool = True,
             promote: bool = True, overrides: RunOverrides | None = None, preflight: bool = True) -> dict[str, Any]:
    """Synthesize data, train, evaluate, and promote the model if no gated benchmark regressed.

    Args:
        config: Run config: the name of a config in the operator's config folder (demo.yaml, ...); the operator's
            own runs (`toa pipeline`) may also give a path.
        run_id: Run id to create or resume (a re-run skips finished work); empty = a new id from the config name.
        incremental: Sample only prompts no earlier run synthesized and train on all runs' data (nightly mode);
            false = sample every prompt and train on this run's data only.
        promote: Run the promotion gate and move `latest` when it passes; false = evaluate only.
        overrides: Settings that replace the config file's values for this run (empty = keep them).
        preflight: Check the config against the installed packages and the models' files first (toa preflight) and
            stop with its report on a problem, before any server or GPU is started; false = skip the check.
    """
    if run_id:
        # Before anything else: it becomes store keys and local folders, and so does its accumulated data run.
        check_new_run_id(run_id, room_for=ACCUMULATED_SUFFIX)
    logger = get_run_logger()
    inputs = RunInputs.of(config)  # a deployment run names an operator config; refused here otherwise
    cfg = load_config(inputs.config.path, override_mapping(overrides))
    if promote and not cfg.evaluation.gate.metrics:
        # Refused before any work: the gate fails closed, so hours of synthesis and training would end unpromoted.
        raise ValueError(f"config {config!r} has no evaluation.gate.metrics, and promote=true needs at least one gated "
                         "metric (the gate promotes nothing it cannot check): add evaluation.gate.metrics to the "
                         "config, or run with promote=false (synthesis-only reproductions: use `toa synthesize`)")
    run_id = run_id or new_run_id(cfg.name)
    name_flow_run(run_id)
    if preflight:
        # First: a model that cannot load or a server that cannot start fails here in seconds, with the fix,
        # not hours later on reserved GPUs.
        preflight_task(inputs.config.path, override_mapping(overrides))
    store = open_store(cfg.store)
    logger.info("pipeline run %s -> %s", run_id, store.uri(f"runs/{run_id}/"))

    if promote and store.exists(f"runs/{run_id}/promotion.json"):
        # This run went all the way through already: report its outcome instead of deciding twice.
        record = store.read_json(f"runs/{run_id}/promotion.json")
        logger.info("run %s is complete (its promotion was decided); nothing to resume", run_id)
        return finish({"run_id": run_id, "run_uri": store.uri(f"runs/{run_id}/"), "flow_run_id": flow_run.get_id(),
                       "scores": flatten_scores(load_scores(store, run_id)), "promotion": record},
                      f"already complete, decided {record.get('decided_at')}: {verdict(record)}", nothing_new=True)

    if incremental:
        logger.info("incremental: %d prompts synthesized by earlier runs are skipped",
                    previously_synthesized(cfg.store, run_id))
    policy = None
    if cfg.synthesis.policy_agent.enabled or cfg.training.common.start_from == "latest":
        # Pinned once for the whole run: synthesis serves this version, training starts from it, and a resume uses
        # the same one even if `latest` moved meanwhile.
        policy = pin_policy(store, run_id)
        logger.info("policy in the loop: %s", f"`latest` is run {policy['run_id']} ({policy['model']})"
                    if policy["run_id"] else "no model is `latest` yet: the base model and the configured agents only")
    synthesized = call_subflow(synthesize, config=config, run_id=run_id, incremental=incremental,
                               overrides=overrides)
    new_prompts = record_prompts(cfg.store, run_id)
    result: dict[str, Any] = {"run_id": run_id, "run_uri": store.uri(f"runs/{run_id}/"), "data_run_id": None,
                              "new_prompts": new_prompts, "scores": {}, "promotion": None,
                              "flow_run_id": flow_run.get_id(), "policy": (policy or {}).get("run_id")}
    if incremental and not runs_awaiting_training(cfg.store):
        # Every prompt already trained a model that was evaluated and judged: training again on the same data
        # would only repeat that result.
        found = (synthesized or {}).get("skipped") or f"{new_prompts} new prompts"
        result["skipped"] = (f"{found}; every synthesized prompt already went into a model the gate judged, "
                             "so training, evaluation and promotion are skipped")
        logger.info("%s", result["skipped"])
        return finish(result, result["skipped"], nothing_new=True)

    manifest = Manifest.load(store, run_id)  # synthesize created it
    accumulated = accumulate(cfg.store, run_id, cfg.pipeline.accumulate) if incremental else None
    data_run_id = accumulated["data_run_id"] if accumulated else run_id
    if accumulated:
        manifest.add_lineage("accumulate", inputs=[store.uri(f"runs/{run}/datasets/") for run in accumulated["runs"]],
                             outputs=[store.uri(f"runs/{data_run_id}/datasets/")])
    call_subflow(train, config=config, run_id=run_id, data_run_id=data_run_id, overrides=overrides)
    call_subflow(evaluate, config=config, run_id=run_id, overrides=overrides)

    evaluated = load_scores(store, run_id)
    scores = gate_table(evaluated)  # metrics with a value and an interval: what the gate may compare
    result.update(data_run_id=data_run_id, scores=flatten_scores(evaluated))
    if promote:
        # `latest`'s scores as recorded in the registry when it was promoted (not its scores.json, which another
        # evaluation could have rewritten).
        compared_with, current_scores = current_latest(cfg.store)
        # The base model was scored in this run's evaluate stage (or cached): a candidate worse than the model it
        # was trained from is never promoted, first run included.
        base_scores = gate_table(base_model_scores(store, cfg.evaluation)) or None
        gate = cfg.evaluation.gate
        with manifest.stage_attempt("promote") as attempt:
            record = promotion_gate(cfg.store, run_id, scores, current_scores, compared_with, list(gate.metrics),
                                    gate.max_regression, result["flow_run_id"], base_scores=base_scores,
                                    max_failure_rate=gate.max_failure_rate,
                                    min_scored_items=gate.min_scored_items)
            attempt.counts = {"promoted": int(record["promoted"])}
            attempt.outputs = [store.uri(f"runs/{run_id}/promotion.json")]
        result["promotion"] = record
        published = ""
        if record["promoted"] and cfg.pipeline.publish.enabled:
            # After the promotion, never before: a failed push is reported and the promotion stands.
            result["publish"] = publish_promoted(cfg, run_id)
            published = publish_line(result["publish"])
        return finish(result, verdict(record) + published, blocked=not record["promoted"])
    return finish(result, f"evaluated {len(result['scores'])} metrics; promotion off")


def verdict(record: dict[str, Any]) -> str:
    """One line for the run's final state: promoted or not, and why."""
    return (f"promoted to latest: {record['reason']}" if record["promoted"]
            else f"NOT promoted (latest unchanged): {record['reason']}")
