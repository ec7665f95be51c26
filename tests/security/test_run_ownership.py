"""Runs own their outputs (issue 21): an evaluation never rewrites another run's scores.json, a shard flow run
samples only the run whose recorded config and plan it matches, a second parent with another plan is refused,
and a run id toaflow derives itself ('<run id>-accumulated') cannot be taken by hand."""
from __future__ import annotations

import pytest
import yaml

from infra.run_ids import InvalidRunId, check_new_run_id
from infra.store import open_store
from runconfig import load_config
from tests.fixtures.models import REPO_ROOT, tiny_config_file
from toaflow.cli import main


def evaluation_config(tmp_path):
    return tiny_config_file(tmp_path, "eval.yaml", evaluation={
        "benchmarks": [{"name": "mini", "kind": "toaflow_mini", "limit": 2}],
        "judges": {"reward": {"kind": "hf_classifier", "model": "builtin:tiny-reward"}},
        "generation": {"max_tokens": 4}, "base_model": "builtin:tiny-llama", "bootstrap_samples": 50})


def test_a_foreign_scores_json_cannot_be_written(tmp_path, prefect_harness):
    """The evaluate flow (what the evaluate deployment runs) refuses to put another model's scores into an existing
    run, and any scores into a run whose promotion was decided: the gate's record stays what it was."""
    from flows.evaluate import ForeignRunError, evaluate

    config = evaluation_config(tmp_path)
    store = open_store(str(tmp_path / "store"))
    store.write_text("runs/latest-run/models/dpo/adapter_config.json", "{}")
    recorded = {"benchmark": "mini", "model": "runs/latest-run/models/dpo", "metrics": {"rm_win_rate": {"value": 71}}}
    store.write_json("runs/latest-run/eval/mini/scores.json", recorded)

    with pytest.raises(ForeignRunError, match="'latest-run' exists and 'builtin:tiny-llama' is not its model"):
        evaluate(config=str(config), run_id="latest-run", model="builtin:tiny-llama")
    store.write_json("runs/latest-run/promotion.json", {"promoted": True})
    with pytest.raises(ForeignRunError, match="promotion decided"):
        evaluate(config=str(config), run_id="latest-run")  # even its own model: the record the gate used stays
    store.write_json("runs/night-7/manifest.json", {"run_id": "night-7"})  # another run's folder
    with pytest.raises(ForeignRunError, match="'night-7' exists and 'runs/latest-run/models/dpo' is not its model"):
        evaluate(config=str(config), model="runs/latest-run/models/dpo", run_id="night-7")
    assert store.read_json("runs/latest-run/eval/mini/scores.json") == recorded
    assert not store.exists("runs/latest-run/eval/mini/outputs.jsonl") and not store.list("runs/night-7/eval/")


def test_an_evaluated_run_keeps_its_model_and_config(tmp_path):
    from flows.evaluate import ForeignRunError, check_run_ownership

    store = open_store(str(tmp_path / "store"))
    store.write_text("runs/r/models/sft/adapter_config.json", "{}")
    check_run_ownership(store, "r", "runs/r/models/sft", "cfg-a")  # its own model: recorded as the owner
    check_run_ownership(store, "r", "runs/r/models/sft", "cfg-a")  # a resume with the same model and config
    with pytest.raises(ForeignRunError, match="another config"):
        check_run_ownership(store, "r", "runs/r/models/sft", "cfg-b")
    check_run_ownership(store, "fresh", "builtin:tiny-llama", "cfg-a")  # a new run takes any model
    assert store.read_json("runs/r/eval/owner.json")["model"] == "runs/r/models/sft"


@pytest.fixture
def planned_run(tmp_path):
    """A synthesis run with its prompts ingested and its shard plan made (as the synthesize flow does)."""
    from tasks.synthesis import ingest_prompts, plan_shards

    synthesis = yaml.safe_load((REPO_ROOT / "configs" / "tiny.yaml").read_text())["synthesis"]
    synthesis["prompts"]["source"] = str(REPO_ROOT / "data" / "prompts" / "mixed_instructions.jsonl")
    config = tiny_config_file(tmp_path, synthesis={**synthesis, "shard_size": 4})
    cfg = load_config(config)
    ingest_prompts.fn(cfg, "planned")
    plan = plan_shards.fn(cfg, "planned", None, 8)
    return config, cfg, plan


def test_sample_shard_refuses_a_run_planned_with_another_config(planned_run, prefect_harness):
    from flows.synthesize_shard import synthesize_shard
    from tasks.synthesis import ShardPlanMismatch, config_digest

    config, cfg, plan = planned_run
    store = open_store(cfg.store)
    with pytest.raises(ShardPlanMismatch, match="sampled with another config"):  # no digest passed: still checked
        synthesize_shard(config=str(config), run_id="planned", shard_index=0, overrides={"search_budget": 2})
    with pytest.raises(ShardPlanMismatch, match="sampled with another config"):
        synthesize_shard(config=str(config), run_id="planned", shard_index=0, limit=3,
                         config_digest_expected=config_digest(load_config(config, {"synthesis.prompts.limit": 3})))
    store.write_json("runs/planned/shards.json", [plan[0][:1]])  # a plan someone replaced
    with pytest.raises(ShardPlanMismatch, match="not the one its synthesis run recorded"):
        synthesize_shard(config=str(config), run_id="planned", shard_index=0, limit=8)
    assert not store.list("runs/planned/samples/") and not store.list("runs/planned/checkpoints/")


def test_a_second_parent_with_another_plan_is_refused(planned_run):
    from tasks.synthesis import ShardPlanMismatch, plan_shards

    config, cfg, plan = planned_run
    store = open_store(cfg.store)
    assert plan_shards.fn(cfg, "planned", None, 8) == plan  # the same parent again: its plan is reused
    for other in ({"limit": 5}, {"incremental": True}):
        with pytest.raises(ShardPlanMismatch, match="planned from other settings"):
            plan_shards.fn(cfg, "planned", None, other.get("limit", 8), other.get("incremental", False))
    bigger = load_config(config, {"synthesis.shard_size": 8})
    with pytest.raises(ShardPlanMismatch, match="planned from other settings"):
        plan_shards.fn(bigger, "planned", None, 8)
    assert store.read_json("runs/planned/shards.json") == plan


@pytest.mark.parametrize("run_id", ["night-accumulated", "x-accumulated"])
def test_reserved_suffixes_cannot_be_taken_by_hand(run_id, tmp_path, capsys, monkeypatch):
    from flows.evaluate import evaluate
    from flows.pipeline import pipeline
    from flows.synthesize import synthesize
    from flows.train import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidRunId, match="reserves"):
        check_new_run_id(run_id)
    config = tiny_config_file(tmp_path)
    for flow, extra in ((synthesize, {}), (pipeline, {}), (train, {}), (evaluate, {"model": "builtin:tiny-llama"})):
        with pytest.raises(InvalidRunId, match="-accumulated"):
            flow.fn(config=str(config), run_id=run_id, **extra)
    for command in ("synthesize", "pipeline", "train"):
        assert main([command, "--config", str(config), "--run-id", run_id]) == 2
        assert "reserves" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
