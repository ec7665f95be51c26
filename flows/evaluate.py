"""The `evaluate` flow: generate on each benchmark with the model under test, judge, score, compare, report.

    toa evaluate --config C --model URI [--run-id R]

Results land in runs/<R>/eval/<benchmark>/ (outputs, judgments, scores.json, report.md, comparison.png) and in
the Prefect UI as artifacts. Without --model the run's own trained model is evaluated (models/dpo, else sft).

A run owns its evaluation: the evaluate flow writes into a new run, or into an existing run only that run's own
model (runs/<R>/models/...), never after the run's promotion was decided, and only with the model and config that
first evaluated it (recorded in runs/<R>/eval/owner.json). So neither a UI user nor a mistake can rewrite the
scores.json of `latest` (or of any other run) with another model's or another config's results.
"""
from __future__ import annotations

import hashlib
from typing import Any

from prefect import flow, get_run_logger

from infra.manifest import Manifest, config_hash, manifest_key
from infra.run_ids import check_new_run_id, check_run_id, new_run_id
from toa_core.credentials import redact_text
from infra.store import open_store
from tasks.evaluation import evaluate_base_model, evaluate_benchmark, evaluation_report, run_config
from tasks.flow_runs import finish, name_flow_run, run_name
from tasks.run_inputs import RunInputs
from runconfig import read_config_mapping
from runconfig.parameters import ConfigFile, RunOverrides, override_mapping

EVAL_OWNER_FILE = "owner.json"


class ForeignRunError(ValueError):
    """An evaluation that would write into a run it does not own; the message says what to pass instead."""


def run_of_model(model: str | None) -> str | None:
    """The run id in a store key like runs/<id>/models/dpo (checked: it becomes a store key), else None."""
    parts = (model or "").split("/")
    if len(parts) > 2 and parts[0] == "runs":
        return check_run_id(parts[1], "run id in the model location")
    return None


def default_model(store: Any, run_id: str) -> str:
    """The run's final policy: models/dpo when published, else models/sft."""
    for stage in ("dpo", "sft"):
        if store.list(f"runs/{run_id}/models/{stage}/"):
            return f"runs/{run_id}/models/{stage}"
    raise FileNotFoundError(f"run '{run_id}' has no trained model under {store.uri(f'runs/{run_id}/models/')}; "
                            f"pass --model (a model folder, store location or endpoint)")


def check_run_ownership(store: Any, run_id: str, model: str, evaluation_config_hash: str) -> None:
    """Refuse (ForeignRunError) to evaluate `model` into run `run_id` unless the run is this evaluation's own: a
    new run, or an existing one whose own model this is, whose promotion is not decided yet, and which was not
    evaluated before with another model or config (runs/<id>/eval/owner.json: digests and a redacted label, never
    an endpoint's credentials). Records the owner on success."""
    prefix = f"runs/{run_id}/"
    owner_key = f"{prefix}eval/{EVAL_OWNER_FILE}"
    label = redact_text(model)
    if store.list(prefix) and run_of_model(model) != run_id:
        raise ForeignRunError(f"run {run_id!r} exists and {label!r} is not its model: an evaluation writes into its "
                              "own run; leave run_id empty (a new run) or pass a new run id")
    if store.exists(f"{prefix}promotion.json"):
        raise ForeignRunError(f"run {run_id!r} has its promotion decided: its scores are the record the gate used and "
                              "are not rewritten; evaluate into a new run id")
    owner = {"model": label, "model_digest": hashlib.sha256(model.encode()).hexdigest()[:16],
             "config_hash": evaluation_config_hash}
    if store.exists(owner_key):
        recorded = store.read_json(owner_key)
        changed = [what for what, key in (("model", "model_digest"), ("config", "config_hash"))
                   if recorded.get(key) != owner[key]]
        if changed:
            raise ForeignRunError(f"run {run_id!r} was evaluated with another {' and '.join(changed)} "
                                  f"({recorded.get('model')!r}); its scores are not rewritten: evaluate into a new "
                                  "run id")
        return
    store.write_json(owner_key, owner)


def synthesis_reward(store: Any, run_id: str, config_reward: dict[str, Any]) -> dict[str, Any] | None:
    """The reward model that guided this run's synthesis: the manifest's record, else the config's `reward`."""
    if store.exists(manifest_key(run_id)):
        recorded = (store.read_json(manifest_key(run_id)).get("config") or {}).get("reward")
        if recorded:
            return recorded
    return config_reward


@flow(name="evaluate", flow_run_name=run_name)
def evaluate(config: ConfigFile, run_id: str | None = None, model: str | None = None,
             overrides: RunOverrides | None = None) -> dict[str, Any]:
    """Evaluate `model` (default: the run's trained model) on every benchmark of `evaluation.benchmarks`.

    Args:
        config: Run config, by name in the operator's config folder (the operator's own runs may give a path);
            `evaluation` says what to run.
        run_id: Run whose eval/ folder receives the results: a new run, or an existing run evaluating its own model
            (not after its promotion was decided); empty = the run named in `model`, or a new id.
        model: Model under test: a store key or URI (runs/<id>/models/dpo), a local folder, builtin:NAME, or an
            OpenAI-compatible endpoint URL (append #name for the served model). Empty = the run's trained model.
            From a deployment: a store key runs/<id>/models/<stage> or builtin:NAME only.
        overrides: Settings that replace the config file's values for this run (empty = keep them).

    Returns {"run_id", "model", "benchmarks": {name: {"scores", "report", "plot", "headline", "circular"}}}.
    """
    if run_id:
        check_new_run_id(run_id)  # before anything else: it becomes store keys and local folders
    inputs = RunInputs.of(config)  # a deployment run names an operator config; refused here otherwise
    model = inputs.model(model)  # and a model in the store, never a folder or endpoint of its choosing
    model_run_id = run_of_model(model)  # a run id inside `model` is checked as early as `run_id`
    logger = get_run_logger()
    settings = override_mapping(overrides)
    path = inputs.config.path
    # Tasks read the config file itself, or the overridden mapping when there are overrides.
    config = read_config_mapping(path, settings) if settings else str(path)
    cfg = run_config(config)
    store = open_store(cfg.store)
    if not run_id:
        run_id = model_run_id or new_run_id(f"{cfg.name}-eval")
    name_flow_run(run_id)
    model = model or default_model(store, run_id)
    check_run_ownership(store, run_id, model, config_hash(cfg.model_dump(mode="json")))
    reward = synthesis_reward(store, run_id, cfg.reward.model_dump(mode="json"))
    manifest = Manifest.open(store, run_id, config=cfg.model_dump(mode="json"))
    manifest.record_trust(inputs.trust(cfg.model_dump(mode="json")))
    manifest.start_stage("evaluate")
    results: dict[str, Any] = {}
    try:
        for benchmark in cfg.evaluation.benchmarks:
            # The base model first: the gate compares with it, and on arena_hard it is a player of this model's
            # Bradley-Terry fit.
            base_key = evaluate_base_model(config, benchmark.name, reward)
            logger.info("evaluating %s on %s", model, benchmark.name)
            result = evaluate_benchmark(config, benchmark.name, model, run_id, reward)
            result.update(evaluation_report(config, run_id, benchmark.name, base_key))
            results[benchmark.name] = result
    except Exception as error:
        manifest.fail_stage("evaluate", error)
        raise
    counts = {f"{name}.{metric}": value for name, result in results.items()
              for metric, value in result["headline"].items() if value is not None}
    manifest.finish_stage("evaluate", counts=counts, outputs=[r["scores"] for r in results.values()])
    model_uri = store.uri(model) if model.startswith("runs/") else model
    manifest.add_lineage("evaluate", inputs=[model_uri], outputs=[r["scores"] for r in results.values()])
    return finish({"run_id": run_id, "model": model, "benchmarks": results}, headline_line(model, results))


def headline_line(model: str, results: dict[str, Any], per_benchmark: int = 3) -> str:
    """"runs/x/models/dpo: mini rm_mean_reward 0.044, rm_win_rate 100" for the run's final state."""
    parts = []
    for name, result in results.items():
        shown = [(metric, value) for metric, value in result["headline"].items() if value is not None]
        parts.append(f"{name} " + ", ".join(f"{metric} {value:.4g}" for metric, value in shown[:per_benchmark]))
    return f"{model}: " + ("; ".join(parts) or "no benchmarks configured")
