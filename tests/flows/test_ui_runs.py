"""How synthesis runs read in the Prefect UI, checked through the API the UI reads (Prefect's test harness runs a
real API server): flow runs named by their run id, artifact keys stable per kind (a history across runs) and
published once per run, an incremental run with nothing new ending "Nothing new" with its reason and no empty
plots or tables, and a deleted run's prompts synthesized again."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra.incremental import record_synthesized_prompts
from infra.store import open_store
from tests.fixtures.models import REPO_ROOT, tiny_config_file
from tests.fixtures.prefect import api_client, artifacts_by_flow_run, flow_runs_named, flow_run_inputs


@pytest.fixture
def four_prompts(tmp_path) -> Path:
    lines = (REPO_ROOT / "data" / "prompts" / "mixed_instructions.jsonl").read_text().splitlines()[:4]
    path = tmp_path / "four.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def synthesize_and_index(config: Path, run_id: str, limit: int | None = 2):
    """One incremental synthesis run, recorded in the prompt index as the pipeline does; returns its final state."""
    from flows.synthesize import synthesize

    state = synthesize(config=str(config), run_id=run_id, limit=limit, incremental=True, return_state=True)
    assert state.is_completed(), state
    record_synthesized_prompts(open_store(str(config.parent / "store")), run_id)
    return state


def test_synthesis_runs_read_well_in_the_ui(tmp_path, four_prompts, prefect_harness, tiny_llama_dir, tiny_reward_dir):
    config = tiny_config_file(tmp_path, synthesis={"prompts": {"source": str(four_prompts)}, "shard_size": 4,
                                                   "ranking": {"dpo_rejected_rank": 6, "test_fraction": 0.2}})
    store = open_store(str(tmp_path / "store"))

    first = synthesize_and_index(config, "ui-first")
    second = synthesize_and_index(config, "ui-second")  # the two prompts the first run did not take
    assert "2 prompts in 1 shards" in first.message and "2 prompts in 1 shards" in second.message

    # Nothing left: the run says so, by which runs, and publishes nothing.
    third = synthesize_and_index(config, "ui-nothing", limit=None)
    assert third.name == "Nothing new"
    assert third.message.startswith("nothing new: 4 prompts already synthesized by ")
    assert "ui-first (2)" in third.message and "ui-second (2)" in third.message
    assert third.result()["skipped"] == third.message and not store.list("runs/ui-nothing/datasets/")

    with api_client() as client:
        runs = {run.name: run for run in flow_runs_named(client, "ui-first", "ui-second", "ui-nothing")}
        assert set(runs) == {"ui-first", "ui-second", "ui-nothing"}  # each flow run is named by its run id
        assert runs["ui-nothing"].state.name == "Nothing new"
        artifacts = artifacts_by_flow_run(client, [run.id for run in runs.values()])
        assert all(kind != "flow_run" for _, _, kind in flow_run_inputs(client, [run.id for run in runs.values()]))

    assert artifacts[runs["ui-nothing"].id] == []  # no empty progress, plot or table
    keys = {}
    for name in ("ui-first", "ui-second"):
        published = artifacts[runs[name].id]
        keys[name] = sorted(artifact.key for artifact in published)
        assert len(keys[name]) == len(set(keys[name])), keys[name]  # each key once per run
        assert all("ui-" not in artifact.key for artifact in published)  # keys name a kind, never a run
        assert all(name in (artifact.description or "") for artifact in published)  # the run id is in the description
    assert keys["ui-first"] == keys["ui-second"]  # the same keys again: one history per kind
    assert {"synthesis-models", "synthesis-rewards", "synthesis-summary", "synthesis-progress"} <= set(keys["ui-first"])

    # The first run's folder is deleted: its prompts are synthesized again.
    shutil.rmtree(tmp_path / "store" / "runs" / "ui-first")
    again = synthesize_and_index(config, "ui-again", limit=None)
    assert again.name == "Completed" and "2 prompts in 1 shards" in again.message
