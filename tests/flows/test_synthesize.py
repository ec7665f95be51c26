"""The synthesis flow end to end on tiny models: datasets and manifest in the store, resume without new
generations, shard publishing, the S3 path against a real S3-compatible server, and `toa sample`."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from infra.store import open_store
from tests.fixtures.models import tiny_config_file

REPO = Path(__file__).resolve().parents[2]


def test_synthesize_writes_datasets_and_resumes_without_generating(tmp_path, prefect_harness, count_generations,
                                                                   tiny_llama_dir, tiny_reward_dir):
    from flows.synthesize import synthesize

    config = tiny_config_file(tmp_path)
    first = synthesize(config=str(config), run_id="x", limit=8)
    assert count_generations["n"] == 8 * 12  # exactly the budget per prompt
    store = open_store(str(tmp_path / "store"))
    for key in ("runs/x/datasets/sft/train.parquet", "runs/x/datasets/dpo/train.parquet", "runs/x/manifest.json",
                "runs/x/reports/synthesis.md", "runs/x/reports/reward_distribution.png"):
        assert store.exists(key), key
    shards = [k for k in store.list("runs/x/samples/") if k.endswith(".parquet")]
    assert len(shards) == 2  # 8 prompts / shard_size 4
    assert not store.list("runs/x/checkpoints/")  # merged into the shards, then removed
    samples = [pq.read_table(io.BytesIO(store.read_bytes(k))) for k in shards]
    assert sum(t.num_rows for t in samples) == 96
    manifest = store.read_json("runs/x/manifest.json")
    assert manifest["stages"]["rank"]["status"] == "finished"
    assert first["counts"]["sft_train"] + first["counts"]["sft_test"] == 8

    sft = pq.read_table(io.BytesIO(store.read_bytes("runs/x/datasets/sft/train.parquet")))
    assert sft.column("messages").to_pylist()[0][-1]["role"] == "assistant"

    count_generations["n"] = 0
    second = synthesize(config=str(config), run_id="x", limit=8)
    assert count_generations["n"] == 0  # every shard is complete: not a single new generation request
    assert second["counts"] == first["counts"]


def test_killed_shard_resumes_from_prompt_checkpoints(tmp_path, count_generations, tiny_llama_dir, tiny_reward_dir):
    """Prompts checkpointed before a crash are not searched again; the shard appears only once complete."""
    from tasks.synthesis import checkpoint_prefix, ingest_prompts, plan_shards, sample_shard, shard_key
    from runconfig import load_config

    cfg = load_config(tiny_config_file(tmp_path), {"synthesis.prompts.limit": 4})
    ingest_prompts.fn(cfg, "k")
    [shard] = plan_shards.fn(cfg, "k")
    store = open_store(cfg.store)

    # Crash after the first two prompts: simulate by sampling a shard made of those two only, then removing
    # the published file so that only their checkpoints remain (what a killed process leaves behind).
    sample_shard(cfg, "k", 0, shard[:2])
    published = store.read_bytes(shard_key("k", 0))
    store.delete(shard_key("k", 0))
    table = pq.read_table(io.BytesIO(published))
    for prompt_id in shard[:2]:
        rows = table.filter(pc.equal(table["prompt_id"], prompt_id))
        buffer = io.BytesIO()
        pq.write_table(rows, buffer)
        store.write_bytes(f"{checkpoint_prefix('k', 0)}/{prompt_id}.parquet", buffer.getvalue())
    count_generations["n"] = 0
    assert not store.exists(shard_key("k", 0))

    outcome = sample_shard(cfg, "k", 0, shard)
    assert count_generations["n"] == 2 * 12  # only the two unfinished prompts were searched
    assert outcome["resumed_prompts"] == 2
    merged = pq.read_table(io.BytesIO(store.read_bytes(shard_key("k", 0))))
    assert sorted(set(merged.column("prompt_id").to_pylist())) == sorted(shard)
    assert merged.num_rows == 4 * 12


def test_synthesize_on_s3(tmp_path, prefect_harness, s3_store_config, tiny_llama_dir, tiny_reward_dir):
    from flows.synthesize import synthesize

    store_section = {"root": s3_store_config.root, "endpoint_url": s3_store_config.endpoint_url,
                     "retry": s3_store_config.retry.model_dump()}
    config = tiny_config_file(tmp_path, store=store_section)
    result = synthesize(config=str(config), run_id="s3run", limit=4)
    assert result["run_uri"].startswith("s3://")
    store = open_store(s3_store_config)
    assert store.exists("runs/s3run/datasets/dpo/train.parquet")
    assert json.loads(store.read_text("runs/s3run/manifest.json"))["run_id"] == "s3run"


def test_toa_sample_tiny_writes_a_valid_tree(tmp_path, tiny_llama_dir, tiny_reward_dir):
    out = tmp_path / "tiny.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "toaflow.cli", "sample", "--config", str(tiny_config_file(tmp_path)),
         "--prompts", str(REPO / "data" / "prompts" / "mixed_instructions.jsonl"), "--strategy", "toa",
         "--budget", "12", "--limit", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "summary: 36 rows, 0 errors, 0 retries (3 prompts, 0 prompt rows skipped)"
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 36
    ids = {r["candidate_id"] for r in rows}
    for row in rows:
        parent = row["parent_id"]
        assert parent is None or parent in ids
        if parent is not None:
            parent_row = next(r for r in rows if r["candidate_id"] == parent)
            assert parent_row["prompt_id"] == row["prompt_id"]
            assert row["depth"] == parent_row["depth"] + 1
        assert row["error"] is None and row["reward"] is not None


def test_incremental_limit_is_applied_after_excluding_synthesized_prompts(tmp_path):
    """A nightly run with a limit samples prompts no earlier run synthesized (not the same seeded subset)."""
    from tasks.synthesis import ingest_prompts, plan_shards
    from runconfig import load_config

    cfg = load_config(tiny_config_file(tmp_path))
    ingest_prompts.fn(cfg, "night-1")
    first = [pid for shard in plan_shards.fn(cfg, "night-1", None, 4) for pid in shard]
    ingest_prompts.fn(cfg, "night-2")
    second = [pid for shard in plan_shards.fn(cfg, "night-2", first, 4) for pid in shard]
    assert len(first) == len(second) == 4
    assert not set(first) & set(second)


@pytest.mark.slow
def test_toa_sample_demo_writes_readable_english(tmp_path):
    """The embedded default end to end through `transformers serve`: SmolLM2 agents answer in English."""
    out = tmp_path / "demo.parquet"
    data = yaml.safe_load((REPO / "configs" / "demo_translation.yaml").read_text())
    data["store"] = {"root": str(tmp_path / "store")}
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "toaflow.cli", "sample", "--config", str(config),
         "--prompts", str(REPO / "data" / "prompts" / "mixed_instructions.jsonl"), "--strategy", "toa",
         "--budget", "3", "--limit", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 3 and all(r["error"] is None for r in rows)
    common_words = {"the", "a", "and", "to", "of", "is", "in", "you", "it", "for"}
    for row in rows:
        words = row["text"].lower().split()
        assert len(words) >= 5 and sum(w.strip(".,!?:;\"'") in common_words for w in words) >= 2, row["text"]


def test_a_straggler_shard_does_not_hold_up_the_others(tmp_path, prefect_harness, monkeypatch):
    """Sliding window: with 2 shards in flight and shard 1 waiting for all 5 others to be published, the others
    keep flowing through the second place of the window, and the straggler finishes last."""
    from bench.loadserver import LoadServer
    from flows.synthesize import synthesize
    from tests.faults.helpers import write_config

    prompts = tmp_path / "prompts.jsonl"
    lines = [f"[slow] straggler prompt {i}" if i < 2 else f"quick prompt {i}" for i in range(12)]
    prompts.write_text("".join(json.dumps({"instruction": line}) + "\n" for line in lines))
    store_root = tmp_path / "store"
    monkeypatch.setenv("TOAFLOW_TEST_OTHERS", f"{store_root / 'runs' / 'window' / 'samples'}:5")
    with LoadServer(response_tokens=4) as server:
        config = write_config(tmp_path / "window.yaml", prompts=prompts, store={"root": str(store_root)}, budget=2,
                              shard_size=2, prompt_concurrency=2, agents=[{"name": "a", "url": server.base_url}],
                              reward__callable="tests.faults.helpers:straggler_reward",
                              synthesis__max_shards_in_flight=2, synthesis__progress_interval_s=0.2)
        result = synthesize(config=str(config), run_id="window")
    store = open_store(str(store_root))
    plan = store.read_json("runs/window/shards.json")
    texts = {row["prompt_id"]: row["messages"][-1]["content"]
             for row in pq.read_table(io.BytesIO(store.read_bytes(store.list("runs/window/prompts/")[0]))).to_pylist()}
    assert all("[slow]" in texts[pid] for pid in plan[0]) and len(plan) == 6  # the straggler is shard 1/6
    finished_at = {i: store.read_json(f"runs/window/progress/shard-{i:05d}.json")["updated_at"] for i in range(6)}
    assert max(finished_at, key=finished_at.get) == 0, finished_at
    assert result["counts"]["sft_train"] + result["counts"]["sft_test"] == 12


def test_synthesis_progress_counts_prompts_and_generations_and_names_shards(tmp_path, prefect_harness,
                                                                            tiny_llama_dir, tiny_reward_dir):
    """The run's progress artifact ends at 100 % of its prompts and states generations, their rate and the ETA;
    each shard's task run is named "shard i/n"."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from flows.synthesize import synthesize

    config = tiny_config_file(tmp_path, synthesis={
        **yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["synthesis"],
        "prompts": {"source": str(REPO / "data" / "prompts" / "mixed_instructions.jsonl")},
        "max_shards_in_flight": 2, "progress_interval_s": 0.2})
    synthesize(config=str(config), run_id="progress-run", limit=8)
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["synthesis-progress"])))  # one key, all runs
        mine = [a for a in progress if a.description.startswith("synthesis run progress-run:")]
        # Under SQLite lock contention in Prefect's test server ("database is locked", PrefectHQ/prefect#18934) the
        # client may retry a create that had gone through, leaving a second copy at 0 %: the run's own artifact is
        # the one it kept updating.
        assert mine
        artifact = max(mine, key=lambda a: float(a.data))
        assert artifact.type == "progress" and float(artifact.data) == 100.0
        assert artifact.description.startswith("synthesis run progress-run: 8/8 prompts, 96 generations (0 failed)")
        assert "generations/s" in artifact.description and "shards 2/2 done" in artifact.description
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[artifact.flow_run_id])))
    assert {"shard 1/2", "shard 2/2"} <= {run.name for run in task_runs}
    records = [open_store(str(tmp_path / "store")).read_json(f"runs/progress-run/progress/shard-0000{i}.json")
               for i in range(2)]
    assert [(r["prompts_done"], r["generations"], r["finished"]) for r in records] == [(4, 48, True), (4, 48, True)]
