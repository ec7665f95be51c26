"""The policy in the loop, two real nights on CPU (tiny random models, the real synthesize/train/evaluate flows on
Prefect's test harness): night 1's promoted model joins night 2's agents behind a managed `transformers serve`,
writes both sides of night 2's on-policy DPO pairs, is where night 2's training starts (iterative), and is what
night 2's gate compares with.
"""
from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
import yaml

from infra.registry import latest_run_id
from infra.store import open_store
from tests.fixtures.models import tiny_config_file


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_nights_with_the_policy_in_the_loop(tmp_path, prefect_harness, tiny_llama_dir, tiny_reward_dir):
    from flows.pipeline import pipeline

    config = tiny_config_file(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["models"] = data["models"][:2]
    data["search"].update(strategy="ensemble", budget=6)  # 2 answers per agent and prompt (3 each on night 1)
    data["synthesis"]["prompts"]["limit"] = 2  # per night: two prompts no earlier night synthesized
    data["synthesis"]["ranking"].update(dpo_rejected_rank=2, rejected_min_spread=0.0, test_fraction=0.0)
    data["synthesis"]["policy_agent"] = {"enabled": True, "serve": "transformers", "pairs": "on_policy",
                                         "temperature": 1.0, "startup_timeout_s": 180}
    data["training"]["common"]["start_from"] = "latest"
    data["training"]["sft"]["max_steps"] = data["training"]["dpo"]["max_steps"] = 2
    data["evaluation"]["benchmarks"][0]["limit"] = 4
    # Random tiny models: nothing may block on quality here (the gate's rules have their own tests); the point is
    # what night 2 is compared with.
    data["evaluation"]["gate"] = {"metrics": ["mini.rm_win_rate"], "max_regression": 1000.0, "max_failure_rate": 1.0}
    config.write_text(yaml.safe_dump(data))
    store = open_store(data["store"]["root"])

    first = pipeline(config=str(config), run_id="loop-1")
    assert first["promotion"]["promoted"] and latest_run_id(store) == "loop-1"
    assert store.read_json("runs/loop-1/policy.json")["run_id"] is None  # nothing was `latest` yet
    assert store.read_json("runs/loop-1/models/sft/training_metrics.json")["started_from"] == "builtin:tiny-llama"

    second = pipeline(config=str(config), run_id="loop-2")
    pinned = store.read_json("runs/loop-2/policy.json")
    assert pinned["run_id"] == "loop-1" and pinned["model"] == "runs/loop-1/models/dpo"
    assert second["policy"] == "loop-1"

    # Night 2's synthesis had the night-1 model among its agents, served by a managed `transformers serve`.
    manifest = store.read_json("runs/loop-2/manifest.json")
    assert [m["name"] for m in manifest["config"]["models"]] == ["tiny-a", "tiny-b", "policy"]
    assert [s["kind"] for s in manifest["config"]["servers"]["servers"]] == ["transformers"]
    assert manifest["policy"]["run_id"] == "loop-1" and manifest["policy"]["agent"] == "policy"
    lineage = {entry["stage"]: entry for entry in manifest["lineage"]}
    assert lineage["policy"]["inputs"] == [store.uri("runs/loop-1/models/dpo")]
    assert store.list("runs/loop-2/servers/")  # the managed server's log, copied to the run folder
    samples = pq.read_table(io.BytesIO(store.read_bytes(store.list("runs/loop-2/samples/")[0])))
    assert "policy" in samples["model"].to_pylist()

    # Its DPO pairs are on-policy: both sides written by night 1's model, and the data says which version.
    pairs = pq.read_table(io.BytesIO(store.read_bytes("runs/loop-2/datasets/dpo/train.parquet"))).to_pylist()
    assert pairs and all(p["chosen_model"] == p["rejected_model"] == "policy" for p in pairs)
    assert {p["chosen_model_version"] for p in pairs} == {"runs/loop-1/models/dpo"}
    counts = manifest["stages"]["rank"]["counts"]
    assert counts["dpo_pairs_policy_both"] == len(pairs) > 0
    card = store.read_text("runs/loop-2/datasets/README.md")
    assert "the model promoted to `latest` by run `loop-1` (`runs/loop-1/models/dpo`" in card

    # Training started from night 1's model (iterative); DPO's reference is that SFT policy.
    sft = store.read_json("runs/loop-2/models/sft/training_metrics.json")
    assert sft["started_from"] == "runs/loop-1/models/dpo"
    assert "Started from:** `runs/loop-1/models/dpo`" in store.read_text("runs/loop-2/models/sft/README.md")
    dpo = store.read_json("runs/loop-2/models/dpo/training_metrics.json")
    assert dpo["started_from"] == "runs/loop-2/models/sft" and dpo["reference"].startswith("the SFT policy")

    # The gate compared night 2 with night 1.
    record = second["promotion"]
    assert record["compared_with"] == "loop-1"
    assert record["current_scores"]["mini.rm_win_rate"] == first["promotion"]["candidate_scores"]["mini.rm_win_rate"]
