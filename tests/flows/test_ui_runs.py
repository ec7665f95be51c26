"""How synthesis runs read in the Prefect UI, checked through the API the UI reads (Prefect's test harness runs a
real API server): flow runs named by their run id, artifact keys stable per kind (a history across runs) and
published once per run, an incremental run with nothing new ending Completed with "Nothing new: <its reason>", the
tag `nothing-new` and no empty plots or tables, and a deleted run's prompts synthesized again."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from infra.incremental import record_synthesized_prompts
from infra.store import open_store
from tests.fixtures.models import REPO_ROOT, tiny_config_file
from tests.fixtures.prefect import api_client, artifacts_by_flow_run, flow_runs_named, flow_run_inputs


@pytest.fixture
def two_prompts(tmp_path) -> Path:
    lines = (REPO_ROOT / "data" / "prompts" / "mixed_instructions.jsonl").read_text().splitlines()[:2]
    path = tmp_path / "two.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def synthesize_and_index(config: Path, run_id: str):
    """One incremental synthesis run, recorded in the prompt index as the pipeline does; returns its final state."""
    from flows.synthesize import synthesize

    state = synthesize(config=str(config), run_id=run_id, incremental=True, return_state=True)
    assert state.is_completed(), state
    record_synthesized_prompts(open_store(str(config.parent / "store")), run_id)
    return state


def test_synthesis_runs_read_well_in_the_ui(tmp_path, two_prompts, prefect_harness, tiny_llama_dir, tiny_reward_dir):
    config = tiny_config_file(tmp_path, synthesis={"prompts": {"source": str(two_prompts)}, "shard_size": 4,
                                                   "ranking": {"dpo_rejected_rank": 6, "test_fraction": 0.2}})
    store = open_store(str(tmp_path / "store"))

    first = synthesize_and_index(config, "ui-first")
    assert first.name == "Completed"
    assert first.message.startswith("2 prompts in 1 shards, 24 candidates (24 new, 0 failed)")

    # Nothing left: the run says so, by which run, and publishes nothing.
    nothing = synthesize_and_index(config, "ui-nothing")
    assert nothing.name == "Completed"  # a name the UI's run lists show
    assert nothing.message == "Nothing new: 2 prompts already synthesized by ui-first (2)"
    assert nothing.result()["skipped"] == "2 prompts already synthesized by ui-first (2)"
    assert not store.list("runs/ui-nothing/datasets/")

    # The first run's folder is deleted: its prompts are synthesized again.
    shutil.rmtree(tmp_path / "store" / "runs" / "ui-first")
    again = synthesize_and_index(config, "ui-again")
    assert again.name == "Completed" and again.message.startswith("2 prompts in 1 shards")

    with api_client() as client:
        runs = {run.name: run for run in flow_runs_named(client, "ui-first", "ui-nothing", "ui-again")}
        assert set(runs) == {"ui-first", "ui-nothing", "ui-again"}  # each flow run is named by its run id
        assert runs["ui-nothing"].state.name == "Completed" and runs["ui-nothing"].tags == ["nothing-new"]
        assert runs["ui-first"].tags == []
        artifacts = artifacts_by_flow_run(client, [run.id for run in runs.values()])
        assert all(kind != "flow_run" for _, _, kind in flow_run_inputs(client, [run.id for run in runs.values()]))

    assert artifacts[runs["ui-nothing"].id] == []  # no empty progress, plot or table
    keys = {}
    for name in ("ui-first", "ui-again"):
        published = artifacts[runs[name].id]
        keys[name] = sorted(artifact.key for artifact in published)
        assert len(keys[name]) == len(set(keys[name])), keys[name]  # each key once per run
        assert all("ui-" not in artifact.key for artifact in published)  # keys name a kind, never a run
        assert all(name in (artifact.description or "") for artifact in published)  # the run id is in the description
    assert keys["ui-first"] == keys["ui-again"]  # the same keys again: one history per kind
    assert {"synthesis-models", "synthesis-rewards", "synthesis-summary", "synthesis-progress"} <= set(keys["ui-first"])
    [progress] = [artifact for artifact in artifacts[runs["ui-first"].id] if artifact.key == "synthesis-progress"]
    assert float(progress.data) == 100.0  # its total is the run's prompts: all of them done
    assert progress.description.startswith("synthesis run ui-first: 2/2 prompts, 24 generations")
